"""Issue 11, package models: `ddae`, `knn_proto` and `ddae_knn` against `knn` (mean-5-NN), from adbench.csv.

The rows come from the benchmark runner (one resumable run of the same protocol, same splits):

    for d in "ddae --seeds 0,1" "ddae --seeds 2" "knn_proto --seeds 0,1,2" "ddae_knn --seeds 0,1" "ddae_knn --seeds 2"; do
      nice -n 10 env OMP_NUM_THREADS=1 anomaly-ae benchmark --detectors $d --threads 1 --no-progress &
    done   # (run as separate processes; the CSV is locked per append)
    .venv/bin/python benchmarks/experiments/issue11_ddae.py      # -> results/experiments/issue11_ddae.md

Per detector, over the (dataset, seed) pairs it shares with `knn`: mean AUROC / AUPRC (seeds averaged
per dataset first, then over datasets), the same for `knn` on those pairs, wins / ties / losses
against `knn` per dataset (tie: |difference| <= 0.001), fit + score seconds, and the median achieved
FPR at the 1% threshold on datasets with >= 500 training rows. Then one column per seed, and the
per-dataset AUROC.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from issue11_report import paired  # noqa: E402 (this folder is on sys.path when run as a script)

ROOT = Path(__file__).resolve().parents[2]
CSV = ROOT / "benchmarks" / "results" / "adbench.csv"
OUT = ROOT / "benchmarks" / "results" / "experiments" / "issue11_ddae.md"
BASE = "knn"
DETECTORS = ["ddae_knn", "default", "knn", "knn_proto", "ddae", "KNN", "ae"]
LABELS = {"ddae_knn": "`ddae_knn` (DDAE + mean-5-NN, hybrid rule)", "default": "`default` (hybrid: 3 AEs + mean-5-NN)",
          "knn": "`knn` (mean-5-NN, 10,000 rows)", "knn_proto": "`knn_proto` (mean-5-NN, 2,000 k-means prototypes)",
          "ddae": "`ddae` (no neighbour term)", "KNN": "PyOD KNN (5th distance)", "ae": "`ae`"}


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    return out + ["| " + " | ".join(r) + " |" for r in rows]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--csv", default=str(CSV))
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--seeds", default="0,1,2")
    a = p.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    df = pd.read_csv(a.csv)
    df = df[df["seed"].isin(seeds) & df["detector"].isin(DETECTORS)]
    errors = df[df["auroc"].isna()]
    df = df[df["auroc"].notna()]
    base = df[df["detector"] == BASE].set_index(["dataset", "seed"])
    lines = [f"Source: `{Path(a.csv).relative_to(ROOT) if Path(a.csv).is_relative_to(ROOT) else a.csv}`, "
             f"seeds {a.seeds}; errors (rows without AUROC): {len(errors)}.", ""]
    rows, per_dataset = [], {}
    for name in DETECTORS:
        both = paired(df[df["detector"] == name].set_index(["dataset", "seed"]), base)
        if both is None:
            continue
        g, mine, theirs = both
        common = g.index
        diff = mine["auroc"] - theirs["auroc"]
        per_dataset[name] = mine["auroc"]
        big = g[g["n_train"] >= 500]["fpr_at_threshold"].dropna()
        rows.append([LABELS[name], str(len(mine)), str(len(common)), f"{mine['auroc'].mean():.4f}",
                     f"{theirs['auroc'].mean():.4f}", f"{diff.mean():+.4f}", f"{mine['auprc'].mean():.4f}",
                     f"{theirs['auprc'].mean():.4f}",
                     f"{(diff > 0.001).sum()}/{(diff.abs() <= 0.001).sum()}/{(diff < -0.001).sum()}",
                     f"{(g['fit_s'] + g['score_s']).sum():.0f}",
                     f"{big.median():.4f}" if len(big) else ""])
    lines += table(["detector", "datasets", "pairs", "mean AUROC", "knn AUROC (same pairs)", "Δ AUROC vs knn",
                    "mean AUPRC", "knn AUPRC (same pairs)", "W/T/L vs knn", "fit+score s", "median FPR@1% (n≥500)"],
                   rows)
    lines += ["", "Mean AUROC per seed (over the datasets that seed covers for that detector; datasets in brackets):", ""]
    seed_rows = []
    for name in DETECTORS:
        g = df[df["detector"] == name]
        if g.empty:
            continue
        cells = []
        for s in seeds:
            gs = g[g["seed"] == s]
            cells.append(f"{gs['auroc'].mean():.4f} ({len(gs)})" if len(gs) else "")
        seed_rows.append([LABELS[name], *cells])
    lines += table(["detector", *[f"seed {s}" for s in seeds]], seed_rows)
    lines += ["", "AUROC per dataset (seeds averaged):", ""]
    names = [n for n in DETECTORS if n in per_dataset]
    frame = pd.DataFrame(per_dataset)[names]
    lines += table(["dataset", *names], [[ds, *[f"{v:.4f}" if v == v else "" for v in r]]
                                         for ds, r in frame.iterrows()])
    Path(a.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:len(rows) + 4 + len(seed_rows) + 4]))


if __name__ == "__main__":
    main()
