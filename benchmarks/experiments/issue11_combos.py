"""Issue 11: score combinations evaluated afterwards from the per-row scores issue11.py kept.

    .venv/bin/python benchmarks/experiments/issue11_combos.py [--scores /tmp/issue11_scores]

Every rule is fixed in advance and uses only held-out NORMAL rows (the 20% of the training
normals the networks never trained on) to put the terms on one scale; no labels, nothing per
dataset. Terms: knn5 (mean 5-NN distance, reference = all training rows; held-out values are
leave-one-out), ddae, ddae_k (see issue11.py).

* zsum(a,b)      (a - med_a)/(q90_a - med_a) + (b - med_b)/(q90_b - med_b)   (the package's hybrid rule)
* zmax(a,b)      max of the two standardised terms
* fisher(a,b)    -sum log p_j, p_j = (1 + #held-out >= s_j)/(n+1) (conformal p-value of each term);
                 ties (rows beyond every held-out value in both terms) broken by zsum / 1e6
* zsum(ddae,ddae_k)  two diffusion AEs, no neighbour term

Writes benchmarks/results/experiments/issue11_combos.csv (columns as issue11.csv; fit/score
seconds left empty: they are those of the terms).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

RES = Path(__file__).resolve().parents[1] / "results" / "experiments"
COLUMNS = ["dataset", "seed", "method", "auroc", "auprc", "fit_s", "score_s", "n_train", "n_test",
           "d", "epochs", "note"]


def ls(v):
    med = float(np.median(v))
    return med, max(float(np.quantile(v, 0.9)) - med, 1e-12)


def z(test, val):
    m, s = ls(val)
    return (test - m) / s


def pval(test, val):
    ref = np.sort(val)
    at_least = len(ref) - np.searchsorted(ref, test, side="left")
    return (1.0 + at_least) / (len(ref) + 1.0)


def rules(f) -> dict[str, np.ndarray]:
    out = {}
    pairs = [("ddae", "knn5"), ("ddae_k", "knn5")]
    for a, b in pairs:
        if a not in f or b not in f:
            continue
        za, zb = z(f[a], f[a + "_val"]), z(f[b], f[b + "_val"])
        out[f"zsum({a},{b})"] = za + zb
        out[f"zmax({a},{b})"] = np.maximum(za, zb)
        fisher = -np.log(pval(f[a], f[a + "_val"])) - np.log(pval(f[b], f[b + "_val"]))
        out[f"fisher({a},{b})"] = fisher + (za + zb) * 1e-6
    if "ddae" in f and "ddae_k" in f:
        out["zsum(ddae,ddae_k)"] = z(f["ddae"], f["ddae_val"]) + z(f["ddae_k"], f["ddae_k_val"])
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--scores", default="/tmp/issue11_scores")
    p.add_argument("--out", default=str(RES / "issue11_combos.csv"))
    a = p.parse_args()
    rows = []
    for path in sorted(Path(a.scores).glob("*_s*.npz")):
        name, seed = path.stem.rsplit("_s", 1)
        with np.load(path) as f:
            f = dict(f)
        y = f["y_test"]
        for m, s in rules(f).items():
            rows.append({"dataset": name, "seed": int(seed), "method": m,
                         "auroc": round(float(roc_auc_score(y, s)), 6),
                         "auprc": round(float(average_precision_score(y, s)), 6),
                         "n_test": len(y)})
    with open(a.out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    print(f"{len(rows)} rows -> {a.out}")


if __name__ == "__main__":
    main()
