"""How good are synthetic rows? Measured against held-out real rows, in the model's feature space.

- Classifier two-sample test (C2ST): out-of-fold ROC AUC of a gradient-boosted classifier telling
  real from synthetic. 0.5: indistinguishable; 1.0: every synthetic row is recognisable.
- Per-feature distances: Kolmogorov-Smirnov statistic and Wasserstein-1 distance (in units of the
  real column's standard deviation) for numeric columns, total variation distance for categorical.
- Precision / recall for distributions (Kynkäänniemi et al. 2019): the share of synthetic rows
  inside the real data's k-NN manifold, and the share of real rows inside the synthetic one.
  Density and coverage (Naeem et al. 2020) are the outlier-robust versions. A mode-collapsed
  generator keeps precision and loses recall and coverage.
- Per-condition coverage: the same measures inside each context value, so a rare mode the
  generator ignores shows up even when the overall numbers look fine; and, for conditional
  generators, whether a classifier trained on real rows recognises the requested context.

The k-NN measures depend on the sample size (more rows, smaller neighbourhoods, lower recall for
an under-dispersed generator): compare reports made on similar numbers of rows. Up to MAX_ROWS
per side are used.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.neighbors import NearestNeighbors
from threadpoolctl import threadpool_limits

# Floors a usable generator clears on held-out data and a broken one (untrained, collapsed,
# ignoring its condition) does not; tests/test_generators.py checks both sides on telemetry.
QUALITY_FLOORS: dict[str, tuple[str, float]] = {
    "c2st_auc": ("<=", 0.90),
    "ks_mean": ("<=", 0.20),
    "precision": (">=", 0.50),
    "recall": (">=", 0.50),
    "coverage": (">=", 0.50),
    "min_condition_coverage": (">=", 0.30),
    "condition_accuracy": (">=", 0.70),
    # rows nearer a training row than 95% of held-out real rows are: ~0.05 when sampled like new
    # data, 1.0 for a "generator" that replays its training rows (which clears every floor above)
    "copied_share": ("<=", 0.50),
}
MAX_ROWS = 2000  # per side; the k-NN and classifier costs stay a few seconds on one core
# A context with fewer held-out real rows is still reported, but k-NN measures on a handful of
# rows are noise, so it does not count towards min_condition_coverage.
MIN_CONTEXT_ROWS = 10


def c2st_auc(real: np.ndarray, synthetic: np.ndarray, seed: int = 0, folds: int = 3) -> float:
    """Out-of-fold AUC of a classifier separating real (0) from synthetic (1) rows."""
    x = np.concatenate([real, synthetic]).astype(np.float64)
    y = np.r_[np.zeros(len(real)), np.ones(len(synthetic))]
    folds = max(2, min(folds, len(real), len(synthetic)))
    clf = HistGradientBoostingClassifier(max_iter=100, learning_rate=0.1, random_state=seed)
    with threadpool_limits(1):
        proba = cross_val_predict(clf, x, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
                                  method="predict_proba")[:, 1]
    return float(roc_auc_score(y, proba))


def precision_recall(real: np.ndarray, synthetic: np.ndarray, k: int = 5) -> dict[str, float]:
    """k-NN precision, recall, density and coverage of the synthetic rows against the real ones."""
    k = max(1, min(k, len(real) - 1, len(synthetic) - 1))
    real_radius = _knn_radius(real, k)
    synth_radius = _knn_radius(synthetic, k)
    d_sr = _distances(synthetic, real)                 # (n_synth, n_real)
    inside_real = d_sr <= real_radius[None, :]        # synthetic i inside real j's ball
    precision = float(inside_real.any(1).mean())
    density = float(inside_real.sum(1).mean() / k)
    coverage = float((d_sr.min(0) <= real_radius).mean())
    recall = float((d_sr.T <= synth_radius[None, :]).any(1).mean())
    return {"precision": precision, "recall": recall, "density": density, "coverage": coverage}


def feature_distances(real: pd.DataFrame, synthetic: pd.DataFrame, categorical: set[str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for name in real.columns:
        if name in categorical:
            p = real[name].astype(str).value_counts(normalize=True)
            q = synthetic[name].astype(str).value_counts(normalize=True)
            out[name] = {"tvd": float(0.5 * p.subtract(q, fill_value=0).abs().sum())}
            continue
        a = real[name].to_numpy(dtype=np.float64)
        b = synthetic[name].to_numpy(dtype=np.float64)
        a, b = a[np.isfinite(a)], b[np.isfinite(b)]
        scale = float(a.std()) or 1.0
        out[name] = {"ks": float(stats.ks_2samp(a, b).statistic),
                     "wasserstein": float(stats.wasserstein_distance(a, b) / scale)}
    return out


def condition_accuracy(real: np.ndarray, real_labels: np.ndarray, synthetic: np.ndarray,
                       synth_labels: np.ndarray, seed: int = 0) -> float:
    """Accuracy, on synthetic rows, of a classifier trained on real rows to predict their context."""
    if len(np.unique(real_labels)) < 2:
        return float("nan")
    clf = HistGradientBoostingClassifier(max_iter=100, random_state=seed)
    with threadpool_limits(1):
        clf.fit(real, real_labels)
        return float((clf.predict(synthetic) == synth_labels).mean())


def copied_share(train: np.ndarray, real: np.ndarray, synthetic: np.ndarray, quantile: float = 0.05) -> float:
    """Share of synthetic rows nearer their nearest training row than the `quantile` of the held-out real
    rows' distances to theirs (distance to closest record): memorised rows are near-copies of training
    rows, new data is not. All training rows count: a subsample would miss the copied ones."""
    nn = NearestNeighbors(n_neighbors=1).fit(train.reshape(len(train), -1))
    d_real = nn.kneighbors(real.reshape(len(real), -1))[0][:, 0]
    d_synth = nn.kneighbors(synthetic.reshape(len(synthetic), -1))[0][:, 0]
    return float((d_synth < np.quantile(d_real, quantile)).mean())


def quality_report(real: np.ndarray, synthetic: np.ndarray, *, real_frame: pd.DataFrame | None = None,
                   synth_frame: pd.DataFrame | None = None, categorical: set[str] = frozenset(),
                   real_groups: np.ndarray | None = None, synth_groups: np.ndarray | None = None,
                   conditional: bool = False, features_without_context: tuple[np.ndarray, np.ndarray] | None = None,
                   seed: int = 0, k: int = 5, train: np.ndarray | None = None) -> dict[str, Any]:
    """All measures for one synthetic sample. `real`/`synthetic` are model-space matrices (rows
    flattened); the frames, where given, are the same rows as columns for per-feature distances;
    the groups are one context label per row for the per-condition breakdown. The condition
    accuracy classifier sees `features_without_context` (real, synthetic) where given, so it cannot
    read the context off its own one-hot columns. With the `train` rows (model space), the report adds
    `copied_share` (see `copied_share`)."""
    rng = np.random.default_rng(seed)
    real_idx = _subsample(len(real), rng)
    synth_idx = _subsample(len(synthetic), rng)
    r, s = real.reshape(len(real), -1)[real_idx], synthetic.reshape(len(synthetic), -1)[synth_idx]
    report: dict[str, Any] = {"n_real": int(len(r)), "n_synthetic": int(len(s)), "c2st_auc": c2st_auc(r, s, seed)}
    report.update(precision_recall(r, s, k))
    if train is not None:
        report["copied_share"] = copied_share(train, r, s)
    if real_frame is not None and synth_frame is not None:
        per_feature = feature_distances(real_frame.iloc[real_idx], synth_frame.iloc[synth_idx], set(categorical))
    else:  # images: per-pixel distances, summarised
        per_feature = {f"f{j}": {"ks": float(stats.ks_2samp(r[:, j], s[:, j]).statistic),
                                 "wasserstein": float(stats.wasserstein_distance(r[:, j], s[:, j])
                                                      / (float(r[:, j].std()) or 1.0))}
                       for j in range(r.shape[1])}
    report["per_feature"] = per_feature
    ks = [v["ks"] for v in per_feature.values() if "ks" in v]
    ws = [v["wasserstein"] for v in per_feature.values() if "wasserstein" in v]
    tvd = [v["tvd"] for v in per_feature.values() if "tvd" in v]
    report.update(ks_mean=_mean(ks), ks_max=_max(ks), wasserstein_mean=_mean(ws), tvd_max=_max(tvd))
    if real_groups is not None and synth_groups is not None:
        rg, sg = np.asarray(real_groups)[real_idx], np.asarray(synth_groups)[synth_idx]
        per_condition = {}
        for value in sorted(set(rg) | set(sg), key=str):
            ri, si = rg == value, sg == value
            entry: dict[str, float | int] = {"n_real": int(ri.sum()), "n_synthetic": int(si.sum()),
                                             "share_real": float(ri.mean()), "share_synthetic": float(si.mean())}
            if ri.sum() >= 2 and si.sum() >= 2:
                entry.update(precision_recall(r[ri], s[si], k))
            elif ri.sum() >= 2:  # the generator never produced this context
                entry.update(precision=float("nan"), recall=0.0, density=0.0, coverage=0.0)
            per_condition[str(value)] = entry
        report["per_condition"] = per_condition
        covered = [e["coverage"] for e in per_condition.values() if e["n_real"] >= MIN_CONTEXT_ROWS]
        report["min_condition_coverage"] = _min(covered)
        if conditional:
            if features_without_context is not None:
                fr, fs = features_without_context
                fr, fs = fr.reshape(len(fr), -1)[real_idx], fs.reshape(len(fs), -1)[synth_idx]
            else:
                fr, fs = r, s
            report["condition_accuracy"] = condition_accuracy(fr, rg.astype(str), fs, sg.astype(str), seed)
    return report


def check_floors(report: dict[str, Any], floors: dict[str, tuple[str, float]] = QUALITY_FLOORS) -> list[str]:
    """The floors a report misses, as readable strings (empty: it passes every floor it has a value for)."""
    failures = []
    for key, (op, bound) in floors.items():
        value = report.get(key)
        if value is None or value != value:
            continue
        ok = value <= bound if op == "<=" else value >= bound
        if not ok:
            failures.append(f"{key} = {value:.3f} (needs {op} {bound})")
    return failures


def floor_verdict(report: dict[str, Any], floors: dict[str, tuple[str, float]] = QUALITY_FLOORS) -> str:
    """One line for people: the floors missed, or that it passes; and the floors the report holds no
    value for (a context with fewer than MIN_CONTEXT_ROWS held-out rows, a single context), which
    were not checked, so that "passes" never stands for a measure nobody took."""
    failures = check_floors(report, floors)
    unmeasured = [key for key in floors if key in report and (report[key] is None or report[key] != report[key])]
    verdict = f"below floor: {'; '.join(failures)}" if failures else \
        ("passes every quality floor" if not unmeasured else "passes the quality floors it was measured on")
    if unmeasured:
        verdict += (f" (not measured: {', '.join(unmeasured)}: too few held-out rows per context, or one context; "
                    f"a context needs {MIN_CONTEXT_ROWS} held-out rows)")
    return verdict


def summary(report: dict[str, Any]) -> dict[str, float]:
    """The headline numbers of a report (no per-feature or per-condition detail)."""
    keys = ("c2st_auc", "precision", "recall", "density", "coverage", "ks_mean", "ks_max", "wasserstein_mean",
            "tvd_max", "min_condition_coverage", "condition_accuracy", "copied_share", "n_real", "n_synthetic")
    return {k: report[k] for k in keys if k in report}


def _knn_radius(x: np.ndarray, k: int) -> np.ndarray:
    nn = NearestNeighbors(n_neighbors=k + 1).fit(x)
    return nn.kneighbors(x)[0][:, -1]


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(sq, 0.0))


def _subsample(n: int, rng: np.random.Generator) -> np.ndarray:
    return np.arange(n) if n <= MAX_ROWS else np.sort(rng.choice(n, MAX_ROWS, replace=False))


def _mean(v: list[float]) -> float:
    return float(np.mean(v)) if v else float("nan")


def _max(v: list[float]) -> float:
    return float(np.max(v)) if v else float("nan")


def _min(v: list[float]) -> float:
    return float(np.min(v)) if v else float("nan")
