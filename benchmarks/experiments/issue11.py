"""Issue 11: can a diffusion-scheduled denoising autoencoder (DDAE) beat mean-5-NN?

    nice -n 15 .venv/bin/python benchmarks/experiments/issue11.py --seeds 0 \
        [--datasets a,b] [--methods knn5,ddae,ddae_k] [--out benchmarks/results/experiments/issue11.csv]

One process per seed computes, side by side on the protocol's split
(`anomaly_ae.bench.protocol.split`):

* knn5     mean Euclidean distance to the 5 nearest training rows; features standardised with the
           training mean/std (a constant column is only centred); exact brute force (torch.cdist).
* ddae     DDAE (Sattarov et al., KDD 2025), written here from the paper's recipe:
           x_t = sqrt(abar_t) x + sqrt(1 - abar_t) eps, T = 50, linear beta 1e-4..0.02; an MLP with
           NO bottleneck (2 hidden layers of width clip(2d, 256, 1024), LeakyReLU) that sees x_t and
           a sinusoidal embedding of t (8 dims) and predicts clean x; MSE over uniform random t.
           Trained on 80% of the training normals (at most 8,000 rows), early stopping on the other
           20% (patience 10, at most 100 epochs, batch clip(n/20, 16, 256), Adam 1e-3).
           Score = mean over the T noise levels of ||x - x_hat_t||_2 with one fixed noise vector per
           level, drawn once from a seeded generator and shared by every row: deterministic and
           row-independent. Inputs are clipped to +-1e4 standard deviations, so any finite row
           gets a finite score.
* ddae_sq  same forward passes, mean squared error instead of the L2 norm (a variant, not chosen).
* ddae_k   per-feature noise scale (K-DSM idea): feature j's noise is multiplied by
           c_j = clip(sqrt(kurt_j / 3), 0.5, 3), kurt_j = (Pearson) kurtosis of feature j on the
           training rows. Heavy-tailed features get wider noise; scores as ddae.
* ddae+knn5, ddae_k+knn5  sum of the two terms, each standardised on the held-out 20% normals:
           (s - median) / (q90 - median), like the package's hybrid. The kNN term is the knn5 score
           (reference = all training rows); its held-out scale uses leave-one-out distances of the
           held-out rows (their own row dropped from the neighbours).

Every row of the CSV is one (dataset, seed, method); rows are appended as they are computed and
an existing (dataset, seed, method) is skipped, so an interrupted run resumes. Per-row test and
held-out scores are also saved to $ISSUE11_SCORES (default /tmp/issue11_scores, outside the repo)
for issue11_combos.py; a dataset whose rows exist but whose scores file is missing is recomputed
without writing rows again.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from anomaly_ae.bench.protocol import dataset_name, load, split

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "adbench"  # ../shared beside the checkout
OUT = Path(__file__).resolve().parents[1] / "results" / "experiments" / "issue11.csv"
COLUMNS = ["dataset", "seed", "method", "auroc", "auprc", "fit_s", "score_s", "n_train", "n_test",
           "d", "epochs", "note"]
CLIP = 1e4
T = 50
SCORES_DIR = os.environ.get("ISSUE11_SCORES", "/tmp/issue11_scores")
ALL_METHODS = ("knn5", "ddae", "ddae_sq", "ddae+knn5", "ddae_k", "ddae_k+knn5")


# ----------------------------------------------------------------------------- preprocessing

def fit_scale(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(0)
    std = x.std(0)
    std = np.where((std > 0) & np.isfinite(std), std, 1.0)
    return mean, std


def apply_scale(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return np.clip((x - mean) / std, -CLIP, CLIP).astype(np.float32)


# ----------------------------------------------------------------------------- kNN

@torch.no_grad()
def knn_mean(query: torch.Tensor, ref: torch.Tensor, k: int = 5, drop_self: bool = False,
             chunk: int = 2048) -> np.ndarray:
    """Mean distance to the k nearest rows of ref (exact); drop_self skips the nearest one."""
    kk = min(k + int(drop_self), len(ref))
    out = []
    for s in range(0, len(query), chunk):
        d = torch.cdist(query[s:s + chunk].double(), ref.double())
        v = d.topk(kk, largest=False).values
        if drop_self:
            v = v[:, 1:]
        out.append(v.mean(-1))
    return torch.cat(out).numpy()


# ----------------------------------------------------------------------------- DDAE

def sinusoidal(t: torch.Tensor, dim: int = 8, max_period: float = 10_000.0) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], -1)


class Denoiser(nn.Module):
    def __init__(self, d: int, width: int, temb: int = 8) -> None:
        super().__init__()
        self.temb = temb
        self.net = nn.Sequential(nn.Linear(d + temb, width), nn.LeakyReLU(),
                                 nn.Linear(width, width), nn.LeakyReLU(),
                                 nn.Linear(width, d))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, sinusoidal(t, self.temb)], 1))


def hidden_width(d: int) -> int:
    return int(np.clip(2 * d, 256, 1024))


class DDAE:
    def __init__(self, seed: int, noise_scale: np.ndarray | None = None, max_epochs: int = 100,
                 patience: int = 10, lr: float = 1e-3, max_train: int = 8000) -> None:
        self.seed, self.noise_scale, self.max_epochs = seed, noise_scale, max_epochs
        self.patience, self.lr, self.max_train = patience, lr, max_train
        beta = torch.linspace(1e-4, 0.02, T)
        abar = torch.cumprod(1 - beta, 0)
        self.a, self.s = abar.sqrt(), (1 - abar).sqrt()

    def _noise(self, eps: torch.Tensor) -> torch.Tensor:
        return eps if self.c is None else eps * self.c

    def fit(self, x_train: np.ndarray, x_val: np.ndarray) -> "DDAE":
        torch.manual_seed(self.seed)
        g = torch.Generator().manual_seed(self.seed)
        d = x_train.shape[1]
        self.c = None if self.noise_scale is None else torch.as_tensor(self.noise_scale, dtype=torch.float32)
        xt = torch.from_numpy(x_train)
        if len(xt) > self.max_train:
            xt = xt[torch.randperm(len(xt), generator=g)[: self.max_train]]
        xv = torch.from_numpy(x_val)
        # fixed validation draws (loss comparable across epochs)
        tv = torch.randint(0, T, (len(xv),), generator=g)
        ev = self._noise(torch.randn(xv.shape, generator=g))
        xv_t = self.a[tv, None] * xv + self.s[tv, None] * ev
        self.model = Denoiser(d, hidden_width(d))
        opt = torch.optim.Adam(self.model.parameters(), lr=self.lr)
        bs = int(np.clip(len(xt) // 20, 16, 256))
        best, best_state, stale, self.epochs = float("inf"), None, 0, 0
        for epoch in range(1, self.max_epochs + 1):
            self.model.train()
            order = torch.randperm(len(xt), generator=g)
            for st in range(0, len(xt), bs):
                xb = xt[order[st:st + bs]]
                tb = torch.randint(0, T, (len(xb),), generator=g)
                eb = self._noise(torch.randn(xb.shape, generator=g))
                x_noisy = self.a[tb, None] * xb + self.s[tb, None] * eb
                loss = ((self.model(x_noisy, tb) - xb) ** 2).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            self.model.eval()
            with torch.no_grad():
                vl = float(((self.model(xv_t, tv) - xv) ** 2).mean())
            if best_state is None or vl < best - 1e-4 * abs(best):
                best, stale, self.epochs = vl, 0, epoch
                best_state = {k: v.clone() for k, v in self.model.state_dict().items()}
            else:
                stale += 1
                if stale >= self.patience:
                    break
        self.model.load_state_dict(best_state)
        self.model.eval()
        # one fixed noise vector per level, shared by every row
        ge = torch.Generator().manual_seed(10_000 + self.seed)
        self.eps = self._noise(torch.randn(T, d, generator=ge))
        return self

    @torch.no_grad()
    def score(self, x: np.ndarray, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
        """(mean L2 error, mean squared error) over the T levels."""
        xs = torch.from_numpy(x)
        l2 = torch.zeros(len(xs), dtype=torch.float64)
        sq = torch.zeros(len(xs), dtype=torch.float64)
        for st in range(0, len(xs), chunk):
            xb = xs[st:st + chunk]
            for t in range(T):
                tt = torch.full((len(xb),), t, dtype=torch.long)
                x_noisy = self.a[t] * xb + self.s[t] * self.eps[t]
                err = ((self.model(x_noisy, tt) - xb).double() ** 2).sum(1)
                l2[st:st + chunk] += err.sqrt()
                sq[st:st + chunk] += err / xb.shape[1]
        return (l2 / T).numpy(), (sq / T).numpy()


def kurtosis_scale(x: np.ndarray) -> np.ndarray:
    xc = x - x.mean(0)
    m2 = (xc ** 2).mean(0)
    m4 = (xc ** 4).mean(0)
    kurt = np.where(m2 > 0, m4 / np.maximum(m2, 1e-300) ** 2, 3.0)
    return np.clip(np.sqrt(kurt / 3.0), 0.5, 3.0).astype(np.float32)


# ----------------------------------------------------------------------------- helpers

def loc_spread(v: np.ndarray) -> tuple[float, float]:
    med = float(np.median(v))
    return med, max(float(np.quantile(v, 0.9)) - med, 1e-12)


def z(v: np.ndarray, ls: tuple[float, float]) -> np.ndarray:
    return (v - ls[0]) / ls[1]


def done_keys(path: Path) -> set[tuple[str, int, str]]:
    if not path.exists():
        return set()
    with open(path, newline="") as f:
        return {(r["dataset"], int(r["seed"]), r["method"]) for r in csv.DictReader(f)}


def append(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        if new:
            w.writeheader()
        w.writerow({k: row.get(k, "") for k in COLUMNS})


def metrics(y: np.ndarray, s: np.ndarray) -> tuple[float, float]:
    from sklearn.metrics import average_precision_score, roc_auc_score
    if not np.all(np.isfinite(s)):
        raise ValueError("non-finite scores")
    return float(roc_auc_score(y, s)), float(average_precision_score(y, s))


# ----------------------------------------------------------------------------- one run

def run_one(path: Path, seed: int, methods: list[str], out: Path, done: set) -> None:
    name = dataset_name(path)
    todo = [m for m in methods if (name, seed, m) not in done]
    have_scores = not SCORES_DIR or os.path.exists(os.path.join(SCORES_DIR, f"{name}_s{seed}.npz"))
    if not todo and have_scores:
        return
    if not todo:  # rows exist but the per-row scores were not kept: recompute them, emit nothing
        todo = ["(scores only)"]
    X, y = load(path)
    X_train, X_test, y_test = split(X, y, seed)
    base = {"dataset": name, "seed": seed, "n_train": len(X_train), "n_test": len(X_test), "d": X.shape[1]}

    def emit(method: str, score: np.ndarray, fit_s: float, score_s: float, epochs="", note="") -> None:
        if method not in todo:
            return
        auroc, auprc = metrics(y_test, score)
        append(out, {**base, "method": method, "auroc": round(auroc, 6), "auprc": round(auprc, 6),
                     "fit_s": round(fit_s, 3), "score_s": round(score_s, 3), "epochs": epochs, "note": note})
        print(f"{name:20s} seed {seed} {method:12s} AUROC {auroc:.4f} AUPRC {auprc:.4f} "
              f"fit {fit_s:7.1f}s score {score_s:6.1f}s {note}", flush=True)

    saved = {"y_test": y_test}
    t0 = time.perf_counter()
    mean, std = fit_scale(X_train)
    xtr, xte = apply_scale(X_train, mean, std), apply_scale(X_test, mean, std)
    scale_s = time.perf_counter() - t0
    ref = torch.from_numpy(xtr)
    t0 = time.perf_counter()
    knn_test = knn_mean(torch.from_numpy(xte), ref)
    knn_s = time.perf_counter() - t0
    emit("knn5", knn_test, scale_s, knn_s)
    saved["knn5"] = knn_test

    # held-out 20% of the training normals (same rule as the package's Detector)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(xtr))
    n_val = max(2, int(round(len(xtr) * 0.2)))
    val_idx, tr_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
    need_knn_val = any(m.endswith("+knn5") for m in todo) or todo == ["(scores only)"]
    if need_knn_val:
        t0 = time.perf_counter()
        knn_val = knn_mean(torch.from_numpy(xtr[val_idx]), ref, drop_self=True)
        knn_val_s = time.perf_counter() - t0
        knn_ls = loc_spread(knn_val)
        saved["knn5_val"] = knn_val

    for variant in ("ddae", "ddae_k"):
        wanted = [m for m in todo if m == variant or m.startswith(variant + "+") or
                  (variant == "ddae" and m == "ddae_sq") or m == "(scores only)"]
        if not wanted:
            continue
        t0 = time.perf_counter()
        c = kurtosis_scale(xtr[tr_idx]) if variant == "ddae_k" else None
        model = DDAE(seed, noise_scale=c).fit(xtr[tr_idx], xtr[val_idx])
        val_l2, _ = model.score(xtr[val_idx])
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        l2, sq = model.score(xte)
        score_s = time.perf_counter() - t0
        saved[variant], saved[variant + "_val"] = l2, val_l2
        note = f"width={hidden_width(xtr.shape[1])} n_fit={min(len(tr_idx), model.max_train)}"
        emit(variant, l2, fit_s, score_s, model.epochs, note)
        if variant == "ddae":
            emit("ddae_sq", sq, fit_s, score_s, model.epochs, note)
        if need_knn_val:
            combo = z(l2, loc_spread(val_l2)) + z(knn_test, knn_ls)
            emit(f"{variant}+knn5", combo, fit_s + scale_s + knn_val_s, score_s + knn_s, model.epochs, note)
    if SCORES_DIR:  # per-row scores, for combinations evaluated afterwards (kept out of the repo)
        os.makedirs(SCORES_DIR, exist_ok=True)
        np.savez_compressed(os.path.join(SCORES_DIR, f"{name}_s{seed}.npz"), **saved)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", default="0")
    p.add_argument("--datasets", default="")
    p.add_argument("--methods", default="knn5,ddae,ddae_sq,ddae+knn5")
    p.add_argument("--out", default=str(OUT))
    a = p.parse_args()
    torch.set_num_threads(1)
    methods = [m for m in a.methods.split(",") if m]
    for m in methods:
        if m not in ALL_METHODS:
            sys.exit(f"unknown method {m}")
    paths = sorted(DATA.glob("*.npz"))
    if a.datasets:
        want = set(a.datasets.split(","))
        paths = [q for q in paths if dataset_name(q) in want]
    # small datasets first, so a partial run covers as many datasets as possible
    def size(q: Path) -> int:
        with np.load(q) as f:
            n, d = f["X"].shape
        return min(n, 35000) * d
    paths.sort(key=size)
    out = Path(a.out)
    for seed in [int(s) for s in a.seeds.split(",")]:
        done = done_keys(out)
        for q in paths:
            try:
                run_one(q, seed, methods, out, done)
            except Exception as e:  # noqa: BLE001
                print(f"{dataset_name(q)} seed {seed}: ERROR {type(e).__name__}: {e}", flush=True)


if __name__ == "__main__":
    main()
