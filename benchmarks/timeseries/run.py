"""Time-series benchmark runner (protocol: ../shared/bench/TIMESERIES.md).

For every series x method x seed: fit on the training rows, score the whole series in one call
(so a causal method sees the real rows before the first evaluated one), evaluate the rows from
`score_from` on, and append one CSV row. Rows already in the CSV for (suite, series, method, seed)
are skipped, so an interrupted run resumes.

    python benchmarks/timeseries/run.py --suite msl --methods random window_pca --seeds 0 1 2

Needs TSB-AD's evaluation code: run it with .venv-bench (make bench-ts-env).
"""

from __future__ import annotations

import os

# One BLAS / OpenMP / torch thread unless the caller says otherwise: the machine has 2 cores
# and other jobs; set OMP_NUM_THREADS etc. in the environment to change it.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import contextlib
import csv
import io
import math
import sys
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.spatial.distance import cdist
from TSB_AD.evaluation.basic_metrics import basic_metricor, generate_curve
from TSB_AD.evaluation.metrics import get_metrics
from TSB_AD.HP_list import Optimal_Multi_algo_HP_dict as TSB_HP
from TSB_AD.model_wrapper import run_Unsupervise_AD
from TSB_AD.models.feature import Window
from TSB_AD.models.IForest import IForest
from TSB_AD.models.KMeansAD import KMeansAD
from TSB_AD.models.PCA import PCA
from TSB_AD.utils.slidingWindows import find_length_rank
from TSB_AD.utils.utility import invert_order, zscore

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data import DATA_DIR, LOADERS, Series  # noqa: E402

# TSB-AD's metric code warns on every degenerate threshold of its sweeps.
warnings.filterwarnings("ignore", category=RuntimeWarning)
warnings.filterwarnings("ignore", module="sklearn")

TRAIN_TAIL, QUANTILE = 0.2, 0.99   # window_pca's threshold rule, also given to reference methods


def tail_threshold(train_scores: np.ndarray) -> float:
    """The 99th percentile of the scores over the last 20% of the training rows (labels unseen)."""
    tail = train_scores[-max(1, int(TRAIN_TAIL * len(train_scores))):]
    return float(np.quantile(tail, QUANTILE))


# ---------------------------------------------------------------- methods
# A method: fit(train) -> self; score(X) -> (scores, flags or None), X being the whole series.
# `seed_free` methods give the same result for every seed and run for the first seed only.


class RandomScores:
    seed_free = False

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def fit(self, train):
        self.threshold = QUANTILE   # the tail rule on uniform scores: flags about 1% of rows
        return self

    def score(self, X):
        s = self.rng.random(len(X))
        return s, s > self.threshold


class WindowPCA:
    """TIMESERIES.md's plain windowed PCA: the bar a learned model has to clear."""

    seed_free = True

    def __init__(self, seed: int, window: int = 32, components: int = 8):
        self.window, self.components = window, components

    def _windows(self, X):
        Z = (X - self.mean) / self.std
        Z = np.vstack([np.repeat(Z[:1], self.window - 1, axis=0), Z])  # pad: repeat the first row
        return sliding_window_view(Z, self.window, axis=0).reshape(len(X), -1)

    def _residual(self, W):
        R = W - self.center
        R -= (R @ self.basis.T) @ self.basis
        return np.einsum("ij,ij->i", R, R)

    def fit(self, train):
        self.mean, std = train.mean(0), train.std(0)
        self.std = np.where(std > 0, std, 1.0)   # a constant metric: any later change counts in raw units
        W = self._windows(train)
        self.center = W.mean(0)
        self.basis = np.linalg.svd(W - self.center, full_matrices=False)[2][: self.components]
        self.threshold = tail_threshold(self._residual(W))
        return self

    def score(self, X):
        s = self._residual(self._windows(X))
        return s, s > self.threshold


def _pad(s, window, causal=False):
    """Window scores (one per window start) back to one score per row. TSB-AD's way centres each
    window on its row, which so reads the (window - 1) // 2 rows after it; `causal`: each row gets
    the score of the window ending at it, as a live stream (and our detectors) would."""
    if causal:
        return np.concatenate([np.full(window - 1, s[0]), s])
    return np.concatenate([np.full(math.ceil((window - 1) / 2), s[0]), s,
                           np.full((window - 1) // 2, s[-1])])


class _TsbPCA(PCA):
    """TSB-AD's PCA, fitted on the training rows. Its decision_function forgets the all-zero
    training columns that fit() prunes (shape mismatch on MSL's command flags); score with them
    pruned, as fit() scores the training rows."""

    causal = False

    def _standardised(self, X):
        return self.scaler_.transform(Window(window=self.slidingWindow).convert(X))

    def fit(self, X, y=None):
        super().fit(X)
        self.keep_ = np.any(self._standardised(X) != 0, axis=0)
        return self

    def decision_function(self, X):
        W = self._standardised(X)[:, self.keep_]
        s = np.sum(cdist(W, self.selected_components_) / self.selected_w_components_, axis=1)
        return _pad(s, self.slidingWindow, self.causal)


class _TsbIForest(IForest):
    """TSB-AD's IForest, fitted on the training rows. Its decision_function skips the z-scoring
    that fit() applies to the windows; apply it (univariate: with the training windows' stats)."""

    causal = False

    def fit(self, X, y=None):
        W = Window(window=self.slidingWindow).convert(X)
        self.mu_, self.sd_ = W.mean(0), W.std(0)
        return super().fit(X)

    def decision_function(self, X):
        W = Window(window=self.slidingWindow).convert(X)
        W = zscore(W, axis=1, ddof=1) if X.shape[1] > 1 else np.nan_to_num((W - self.mu_) / self.sd_)
        return _pad(invert_order(self.detector_.decision_function(W)), self.slidingWindow, self.causal)


class TsbReference:
    """TSB-AD 1.5's reference models with its published best hyper-parameters
    (Optimal_Multi_algo_HP_dict; window sizes as run_PCA / run_IForest default them), fitted on
    the training rows only (semi-supervised), not on the whole series as TSB-AD's own scripts do.

    Like TSB-AD, a row's score reads rows after it: PCA and IForest centre each 100-step window on
    its row (49 rows ahead), KMeansAD averages the scores of every window holding the row (up to 39
    rows ahead). `causal=True` scores each row by the window ending at it instead (the same fitted
    model and window scores), which is what a detector of a live stream can do."""

    def __init__(self, name: str, seed: int, causal: bool = False):
        self.name, self.seed, self.causal = name, seed, causal
        self.seed_free = name == "PCA"   # full SVD, random_state fixed inside TSB-AD

    def _model(self):
        hp = TSB_HP[self.name]
        if self.name == "PCA":
            m = _TsbPCA(slidingWindow=100, **hp)
        elif self.name == "IForest":
            m = _TsbIForest(slidingWindow=100, random_state=self.seed, **hp)
        else:
            m = KMeansAD(k=hp["n_clusters"], window_size=hp["window_size"], stride=1)
            m.model.random_state = self.seed
        m.causal = self.causal
        return m

    def fit(self, train):
        self.model = self._model()
        with contextlib.redirect_stdout(io.StringIO()):   # KMeansAD prints on every call
            self.model.fit(train)
            self.threshold = tail_threshold(self._scores(train))
        return self

    def _scores(self, X):
        if self.name != "KMeansAD":
            return self.model.decision_function(X)
        if not self.causal:
            return self.model.predict(X)
        # KMeansAD.predict's window scores, before it spreads them over the rows they hold
        windows = self.model._preprocess_data(X)
        centres = self.model.model.cluster_centers_[self.model.model.predict(windows)]
        return _pad(np.linalg.norm(windows - centres, axis=1), self.model.window_size, causal=True)

    def score(self, X):
        with contextlib.redirect_stdout(io.StringIO()):
            s = self._scores(X)
        return s, s > self.threshold


def _tsb_deep_models() -> dict:
    """TSB-AD 1.5's deep semi-supervised models, built as its `run_<name>` wrappers build them, with
    Optimal_Multi_algo_HP_dict's settings (arguments the dict leaves out take the wrapper's default).
    Imported on first use: they need torch, tqdm, torchinfo and numba (`make bench-ts-env`)."""
    # TSB-AD 1.5 predates numpy 2 (its early stopping reads np.Inf) and scikit-learn 1.6 (its
    # AutoEncoder's check_is_fitted has no estimator tags): two shims, the models are unchanged.
    if not hasattr(np, "Inf"):
        np.Inf = np.inf
    import TSB_AD.models.AE as tsb_ae
    from TSB_AD.models.CNN import CNN
    from TSB_AD.models.LSTMAD import LSTMAD
    from TSB_AD.models.OmniAnomaly import OmniAnomaly
    from TSB_AD.models.USAD import USAD

    tsb_ae.check_is_fitted = lambda *args, **kwargs: None
    hp = TSB_HP
    return {
        "USAD": lambda f: USAD(win_size=hp["USAD"]["win_size"], feats=f, lr=hp["USAD"]["lr"]),
        "OmniAnomaly": lambda f: OmniAnomaly(win_size=hp["OmniAnomaly"]["win_size"], feats=f,
                                             lr=hp["OmniAnomaly"]["lr"]),
        "AutoEncoder": lambda f: tsb_ae.AutoEncoder(slidingWindow=100, batch_size=128, epochs=50,
                                                    hidden_neurons=hp["AutoEncoder"]["hidden_neurons"]),
        "CNN": lambda f: CNN(window_size=hp["CNN"]["window_size"], num_channel=hp["CNN"]["num_channel"],
                             feats=f, lr=0.0008, batch_size=128),
        "LSTMAD": lambda f: LSTMAD(window_size=hp["LSTMAD"]["window_size"], pred_len=1,
                                   lr=hp["LSTMAD"]["lr"], feats=f, batch_size=128),
    }


class TsbDeep:
    """A TSB-AD deep reference (USAD, OmniAnomaly, AutoEncoder, CNN, LSTMAD) under TSB-AD's own
    semi-supervised protocol (`run_Semisupervise_AD`: fit on the training rows, score every row);
    seeded through torch's and numpy's global generators; threshold by window_pca's rule."""

    def __init__(self, name: str, seed: int):
        self.name, self.seed = name, seed

    def fit(self, train):
        import torch

        torch.manual_seed(self.seed)
        np.random.seed(self.seed)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            # the models print their device when built, and progress bars on every epoch
            self.model = _tsb_deep_models()[self.name](train.shape[1])
            self.model.fit(train)
            self.threshold = tail_threshold(self._scores(train))
        return self

    def _scores(self, X):
        # TSB-AD's AutoEncoder cannot store the scores of a last batch of one row under numpy 2 (a
        # shape error); in eval mode a row's score depends on that row alone, so a batch one row
        # larger gives the same scores.
        odd = self.name == "AutoEncoder" and len(X) % self.model.batch_size == 1
        self.model.batch_size += odd
        try:
            return np.asarray(self.model.decision_function(X), dtype=np.float64).ravel()
        finally:
            self.model.batch_size -= odd

    def score(self, X):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            s = self._scores(X)
        return s, s > self.threshold


class TsbUnsupervised:
    """TSB-AD's own protocol for these models: run_Unsupervise_AD on the whole series (test rows
    included), no threshold. Only to compare with the reference figures; fit() does nothing."""

    def __init__(self, name: str, seed: int):
        self.name, self.seed = name, seed
        self.seed_free = name in ("PCA", "IForest")   # TSB-AD fixes their random_state

    def fit(self, train):
        return self

    def score(self, X):
        np.random.seed(self.seed)   # KMeansAD's KMeans draws from numpy's global state
        with contextlib.redirect_stdout(io.StringIO()):
            return np.asarray(run_Unsupervise_AD(self.name, X, **TSB_HP[self.name])), None


class Ours:
    """`ours:<model>[@<window>][+<covariate>...]`: the project's SeriesDetector with its shipped
    threshold. Imported when first fitted, so the runner works in a checkout without it.

    With covariates (`+time_of_day`, `+day_of_week`) the detector gets a DataFrame: a "ts" column
    holding the series' timestamps (as the file gives them) and the metric columns, and
    `time_col="ts", covariates=[...]`; it then also places the rows on its step grid (gaps filled
    or the window restarted, as SeriesDetector documents; readings on one step, one timestamp twice
    included, each scored, the last standing for the step) and refuses timestamps out of time order.
    A series without timestamps is refused here."""

    seed_free = False
    TIME_COL = "ts"

    def __init__(self, spec: str, seed: int):
        head, *covariates = spec.split("+")
        model, _, window = head.partition("@")
        # no "@": SeriesDetector's own default window; "@auto": its rule (the training rows' dominant period)
        self.model, self.seed, self.covariates = model, seed, covariates
        self.window = None if not window else window if window == "auto" else int(window)
        self.needs_times = bool(covariates)

    def _input(self, X, times):
        if not self.covariates:
            return X
        if times is None:
            raise ValueError(f"covariates {self.covariates} are read from the timestamps; this series has none")
        import pandas as pd

        df = pd.DataFrame(X, columns=[f"x{i}" for i in range(X.shape[1])])
        df.insert(0, self.TIME_COL, times)
        return df

    def fit(self, train, times=None):
        from anomaly_ae import SeriesDetector

        kwargs = {} if self.window is None else {"window": self.window}
        if self.covariates:
            kwargs.update(time_col=self.TIME_COL, covariates=self.covariates)
        self.det = SeriesDetector(model=self.model, random_state=self.seed, **kwargs).fit(self._input(train, times))
        return self

    def score(self, X, times=None):
        data = self._input(X, times)
        flags = np.asarray(self.det.predict(data))
        assert set(np.unique(flags)) <= {0, 1}, "predict must return 0/1 per row"
        self._scored = data
        return np.asarray(self.det.decision_function(data), dtype=np.float64), flags.astype(bool)

    def grid_note(self) -> str:
        """How the time grid treated the scored rows (printed, not in the CSV; untimed)."""
        if not self.covariates:
            return ""
        notes = [" ".join(n) for n in self.det.framing_.split(self._scored)[1].notes]
        filled = sum("filled with the last value" in n for n in notes)
        restarts = sum("the window restarts here" in n for n in notes)
        return f"  grid: {filled} rows after a filled gap, {restarts} window restarts" if filled or restarts else ""


METHODS = {
    "random": RandomScores,
    "window_pca": WindowPCA,
    "tsbad_pca": lambda seed: TsbReference("PCA", seed),
    "tsbad_kmeansad": lambda seed: TsbReference("KMeansAD", seed),
    "tsbad_iforest": lambda seed: TsbReference("IForest", seed),
    "tsbad_pca_causal": lambda seed: TsbReference("PCA", seed, causal=True),
    "tsbad_kmeansad_causal": lambda seed: TsbReference("KMeansAD", seed, causal=True),
    "tsbad_iforest_causal": lambda seed: TsbReference("IForest", seed, causal=True),
    "tsbad_pca_unsup": lambda seed: TsbUnsupervised("PCA", seed),
    "tsbad_kmeansad_unsup": lambda seed: TsbUnsupervised("KMeansAD", seed),
    "tsbad_iforest_unsup": lambda seed: TsbUnsupervised("IForest", seed),
    "tsbad_usad": lambda seed: TsbDeep("USAD", seed),
    "tsbad_omnianomaly": lambda seed: TsbDeep("OmniAnomaly", seed),
    "tsbad_autoencoder": lambda seed: TsbDeep("AutoEncoder", seed),
    "tsbad_cnn": lambda seed: TsbDeep("CNN", seed),
    "tsbad_lstmad": lambda seed: TsbDeep("LSTMAD", seed),
}
DEFAULT_METHODS = ["random", "window_pca", "tsbad_pca", "tsbad_kmeansad", "tsbad_iforest"]


def make_method(name: str, seed: int):
    if name.startswith("ours:"):
        return Ours(name.removeprefix("ours:"), seed)
    return METHODS[name](seed)


# ---------------------------------------------------------------- metrics

SCORE_METRICS = ["VUS-PR", "AUC-PR", "VUS-ROC", "AUC-ROC", "R-based-F1", "Standard-F1", "PA-F1",
                 "Event-based-F1", "Affiliation-F"]
FIELDS = (["suite", "series", "group", "method", "seed", "n_train", "n_eval", "n_anomalous",
           "sliding_window", "fit_s", "score_s"] + SCORE_METRICS
          + ["thr_f1", "thr_precision", "thr_recall", "thr_far", "tp", "fp", "tn", "fn"])


def score_metrics(score, labels, sliding_window, full: bool) -> dict:
    """TSB-AD's metrics. `full`: get_metrics itself. Otherwise only the same code's ranking
    metrics, Standard-F1 and PA-F1: its R-based-F1 and Affiliation-F take about a minute on a
    long NAB series and NAB's and SKAB's protocols do not ask for them."""
    if full:
        return get_metrics(score, labels, slidingWindow=sliding_window)
    g = basic_metricor()
    *_, vus_roc, vus_pr = generate_curve(labels, score, sliding_window, "opt", 250)
    return {"VUS-PR": vus_pr, "AUC-PR": g.metric_PR(labels, score), "VUS-ROC": vus_roc,
            "AUC-ROC": g.metric_ROC(labels, score),
            "Standard-F1": g.metric_PointF1(labels, score, preds=None),
            "PA-F1": g.metric_PointF1PA(labels, score, preds=None)}


def threshold_metrics(flags, labels) -> dict:
    """Point-wise counts and rates of a method's own flags (SKAB pools the counts over files)."""
    f, y = flags.astype(bool), labels.astype(bool)
    tp, fp = int(np.sum(f & y)), int(np.sum(f & ~y))
    tn, fn = int(np.sum(~f & ~y)), int(np.sum(~f & y))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else float("nan")
    return {"thr_f1": tp / (tp + (fp + fn) / 2) if tp + fp + fn else float("nan"),
            "thr_precision": precision, "thr_recall": recall,
            "thr_far": fp / (fp + tn) if fp + tn else float("nan"),
            "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def evaluate(series: Series, method_name: str, seed: int, full_metrics: bool) -> tuple[dict, str]:
    """(the CSV row, a note to print: for ours:...+covariates how the time grid treated the rows)."""
    method = make_method(method_name, seed)
    needs_times = getattr(method, "needs_times", False)
    if needs_times and series.times is None:
        raise ValueError(f"{method_name} reads covariates from the timestamps; {series.name} has none")
    fit_args = (series.times[: series.n_train],) if needs_times else ()
    score_args = (series.times,) if needs_times else ()
    t0 = time.perf_counter()
    method.fit(series.train, *fit_args)
    t1 = time.perf_counter()
    scores, flags = method.score(series.X, *score_args)
    t2 = time.perf_counter()
    note = method.grid_note() if hasattr(method, "grid_note") else ""
    scores = np.asarray(scores, dtype=np.float64)
    assert scores.shape == (len(series.X),), f"{method_name}: {scores.shape} scores"
    assert np.isfinite(scores).all(), f"{method_name}: non-finite scores"
    s, y = scores[series.score_from:], series.y[series.score_from:]
    Xe = series.X[series.score_from:]
    row = {"suite": series.suite, "series": series.name, "group": series.group,
           "method": method_name, "seed": seed, "n_train": series.n_train, "n_eval": len(y),
           "n_anomalous": int(y.sum()), "fit_s": round(t1 - t0, 3), "score_s": round(t2 - t1, 3)}
    if y.any():   # ranking metrics need both classes (NAB's artificialNoAnomaly has none)
        row["sliding_window"] = find_length_rank(Xe[:, :1], rank=1)
        row.update(score_metrics(s, y, row["sliding_window"], full_metrics))
    if flags is not None:
        row.update(threshold_metrics(np.asarray(flags)[series.score_from:], y))
    row = {k: (round(float(v), 6) if isinstance(v, (float, np.floating)) else v)
           for k, v in row.items()}
    return row, note


# ---------------------------------------------------------------- driver

def done_keys(path: Path) -> set:
    if not path.exists():
        return set()
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != FIELDS:
            sys.exit(f"{path}: its columns differ from this runner's; write to another --out")
        return {(r["suite"], r["series"], r["method"], int(r["seed"])) for r in reader}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", choices=sorted(LOADERS), required=True)
    ap.add_argument("--methods", nargs="+", default=DEFAULT_METHODS,
                    help=f"any of {sorted(METHODS)} or ours:<model>[@<window>][+<covariate>...] "
                    "(covariates: time_of_day, day_of_week; skab and nab only)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--out", type=Path, help="default benchmarks/results/timeseries_<suite>.csv")
    ap.add_argument("--data-dir", type=Path, default=DATA_DIR)
    ap.add_argument("--series", nargs="+", help="only these series (names as in the CSV)")
    ap.add_argument("--group", nargs="+", help="only these groups (msl: eva, tuning; a SKAB "
                    "folder; a NAB category)")
    ap.add_argument("--metrics", choices=["full", "ranking"],
                    help="full: get_metrics (default for msl); ranking: see score_metrics")
    args = ap.parse_args(argv)
    for m in args.methods:
        if m not in METHODS and not m.startswith("ours:"):
            ap.error(f"unknown method {m!r}")
    out = args.out or Path(__file__).resolve().parents[1] / "results" / f"timeseries_{args.suite}.csv"
    full = (args.metrics or ("full" if args.suite == "msl" else "ranking")) == "full"

    done = done_keys(out)
    series = [s for s in LOADERS[args.suite](args.data_dir)
              if (not args.series or s.name in args.series) and (not args.group or s.group in args.group)]
    for m in args.methods:
        if m.startswith("ours:") and "+" in m:
            from anomaly_ae.data.windows import COVARIATES

            unknown = [c for c in m.split("+")[1:] if c not in COVARIATES]
            if unknown:
                ap.error(f"{m}: unknown covariate(s) {unknown}; choose from {list(COVARIATES)}")
            untimed = [s.name for s in series if s.times is None]
            if untimed:
                ap.error(f"{m}: covariates are read from the timestamps, and {len(untimed)} {args.suite} "
                         f"series have none (e.g. {untimed[0]}); run it on skab or nab")
    out.parent.mkdir(parents=True, exist_ok=True)
    new_file = not out.exists()
    failures = 0
    with open(out, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if new_file:
            writer.writeheader()
        for s in series:
            for name in args.methods:
                seeds = args.seeds[:1] if getattr(make_method(name, 0), "seed_free", False) else args.seeds
                for seed in seeds:
                    if (s.suite, s.name, name, seed) in done:
                        continue
                    try:
                        row, note = evaluate(s, name, seed, full)
                    except Exception:
                        failures += 1
                        traceback.print_exc()
                        print(f"FAILED {s.name} {name} seed {seed}", file=sys.stderr, flush=True)
                        continue
                    writer.writerow(row)
                    f.flush()
                    print(f"{s.name:45s} {name:22s} seed {seed}  VUS-PR {row.get('VUS-PR', '-')}"
                          f"  fit {row['fit_s']}s score {row['score_s']}s{note}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
