"""Markdown report of a time-series benchmark CSV written by run.py.

    python benchmarks/timeseries/report.py --suite msl      # -> benchmarks/results/timeseries_msl.md

Means over seeds per series first, then over series. The published figures from TIMESERIES.md
are quoted beside, marked as reference: they were not measured by this run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

RESULTS = Path(__file__).resolve().parents[1] / "results"

MSL_COLUMNS = {  # TIMESERIES.md's order, then what our threshold's F1 is made of, then time
    "VUS-PR": "VUS-PR", "AUC-PR": "AUC-PR", "VUS-ROC": "VUS-ROC", "AUC-ROC": "AUC-ROC",
    "R-based-F1": "R-F1", "thr_f1": "F1 (own thr.)", "Standard-F1": "Std-F1", "PA-F1": "PA-F1",
    "thr_precision": "P (own thr.)", "thr_recall": "R (own thr.)", "thr_far": "FAR (own thr.)",
    "seconds": "s/series",
}

# TIMESERIES.md, "Reference figures": TSB-AD reference implementations, seed 2024, 14 eva series.
MSL_REFERENCE = """\
| method | series | VUS-PR | AUC-PR | VUS-ROC | AUC-ROC | R-F1 | Std-F1 | PA-F1 | s/series |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|
| KMeansAD | 14 | 0.450 | 0.423 | 0.768 | 0.715 | 0.535 | 0.462 | 0.761 | 1.1 |
| IForest | 14 | 0.448 | 0.403 | 0.879 | 0.848 | 0.376 | 0.446 | 0.838 | 10.6 |
| PCA | 14 | 0.375 | 0.350 | 0.736 | 0.684 | 0.439 | 0.397 | 0.597 | 39.7 |
| OmniAnomaly (stochastic RNN VAE) | 14 | 0.315 | 0.234 | 0.774 | 0.749 | 0.398 | 0.351 | 0.569 | 18.0 |
| USAD (adversarial AE) | 14 | 0.306 | 0.227 | 0.764 | 0.737 | 0.414 | 0.342 | 0.563 | 2.0 |
| AutoEncoder (dense, windows) | 14 | 0.213 | 0.208 | 0.713 | 0.636 | 0.358 | 0.300 | 0.640 | 0.6 |
| CNN (forecaster) | 14 | 0.147 | 0.119 | 0.758 | 0.685 | 0.202 | 0.280 | 0.836 | 3.0 |
| LSTMAD (forecaster) | 5 | 0.119 | 0.097 | 0.727 | 0.669 | 0.168 | 0.233 | 0.869 | 10.4 |
| uniform random | 14 | 0.078 | 0.054 | 0.637 | 0.496 | 0.121 | 0.105 | 0.749 | 0.0 |

Windowed PCA (32-row causal windows, 8 components), seed-free: VUS-PR 0.467 on the same 14 series.
"""

SKAB_REFERENCE = """\
SKAB's published leaderboard (outlier detection; F1 / FAR % / MAR %): Conv-AE 0.78 / 13.55 / 28.02;
MSET 0.78 / 39.73 / 14.13; T²+Q (PCA) 0.76 / 26.62 / 24.92; LSTM-AE 0.74 / 29.96 / 25.92; T² 0.66;
LSTM-VAE 0.56 / 9.13 / 55.03; Vanilla LSTM 0.54; Vanilla AE 0.39 / 2.59 / 75.15; MSCRED 0.36;
Isolation Forest 0.29 / 2.56 / 82.89.
"""

NAB_REFERENCE = """\
NAB's scoreboard (NAB score, standard profile, a different metric from the ones above):
Numenta HTM 70.5, Random Cut Forest 51.7, Windowed Gaussian 39.6, random 11.0.
"""


def fmt(v) -> str:
    return "" if pd.isna(v) else f"{v:.3f}" if isinstance(v, float) else str(v)


def table(df: pd.DataFrame) -> str:
    head = "| " + " | ".join(df.columns) + " |\n|" + "|".join(["---"] + ["---:"] * (df.shape[1] - 1)) + "|\n"
    return head + "".join("| " + " | ".join(fmt(v) for v in row) + " |\n" for row in df.itertuples(index=False))


def per_series(df: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    """Mean over seeds for each (method, series); `seeds` counts them."""
    df = df.assign(seconds=df["fit_s"] + df["score_s"])
    g = df.groupby(["method", "series", "group"], sort=False)
    return g[cols + ["seconds"]].mean().join(g["seed"].nunique().rename("seeds")).reset_index()


def summary(ps: pd.DataFrame, cols: dict) -> pd.DataFrame:
    g = ps.groupby("method", sort=False)
    out = g[list(cols)].mean()
    out.insert(0, "seeds", g["seeds"].max())
    out.insert(0, "series", g["series"].nunique())
    out = out.sort_values("VUS-PR", ascending=False).rename(columns=cols).reset_index()
    return out.dropna(axis=1, how="all")


def report_msl(df: pd.DataFrame) -> str:
    ps = per_series(df, [c for c in MSL_COLUMNS if c != "seconds"])
    parts = ["# Time-series benchmark: NASA MSL (TSB-AD-M)\n",
             "Fit on rows [0, train_rows), every row scored; TSB-AD 1.5's `get_metrics`, "
             "`slidingWindow = find_length_rank(X[:, :1], rank=1)`. Mean over seeds per series, "
             "then over series. \"own thr.\": the method's threshold from its training-row scores "
             "(no labels); FAR = false alarms / normal rows. `*_unsup`: TSB-AD's own protocol (fitted on "
             "the whole series, no threshold), only to tie this run to the reference figures; "
             "benchmarks/timeseries/README.md discusses the gaps.\n",
             "## This run: the 14 `eva` series\n", table(summary(ps[ps.group == "eva"], MSL_COLUMNS)),
             "\n## Reference, not this run (TIMESERIES.md)\n", MSL_REFERENCE]
    if (ps.group == "tuning").any():
        parts += ["\n## This run: the 2 `tuning` series (for choosing settings; not in the means above)\n",
                  table(summary(ps[ps.group == "tuning"], MSL_COLUMNS))]
    wide = ps.pivot_table(index="series", columns="method", values="VUS-PR")
    parts += ["\n## This run: VUS-PR per series\n", table(wide.reset_index())]
    return "\n".join(parts)


def pooled(df: pd.DataFrame) -> pd.Series:
    """SKAB's core/metrics.py, binary: counts summed over all files, then F1, FAR %, MAR %."""
    tp, fp, tn, fn = (df[c].sum() for c in ("tp", "fp", "tn", "fn"))
    return pd.Series({"F1": tp / (tp + (fn + fp) / 2), "FAR %": 100 * fp / (fp + tn),
                      "MAR %": 100 * fn / (fn + tp)})


def report_skab(df: pd.DataFrame) -> str:
    rows = []
    for method, d in df.groupby("method", sort=False):
        flagged = d.dropna(subset=["tp"])   # methods without a threshold have no counts
        thr = flagged.groupby("seed").apply(pooled, include_groups=False).mean() if len(flagged) else {}
        ps = per_series(d, ["AUC-PR", "VUS-PR"])
        rows.append({"method": method, "files": d.series.nunique(), "seeds": d.seed.nunique(),
                     **dict(thr), "AUC-PR": ps["AUC-PR"].mean(), "VUS-PR": ps["VUS-PR"].mean(),
                     "s/file": ps["seconds"].mean()})
    out = pd.DataFrame(rows).sort_values("VUS-PR", ascending=False)
    files = df.drop_duplicates("series")
    pos, neg = files["n_anomalous"].sum(), (files["n_eval"] - files["n_anomalous"]).sum()
    flag_all = (f"Flagging every test row scores F1 {pos / (pos + neg / 2):.2f} / FAR 100 % / MAR 0 % "
                f"on these {len(files)} files ({100 * pos / (pos + neg):.0f}% of the test rows are "
                "anomalous), so read F1 beside FAR.\n")
    return "\n".join([
        "# Time-series benchmark: SKAB\n",
        "First 400 rows of each of the 34 labelled files train, the rest is test. F1, FAR and MAR of "
        "each method's own threshold (from its training-row scores) pooled over all test rows of all "
        "files (SKAB's core/metrics.py), mean over seeds; AUC-PR and VUS-PR (TSB-AD's code) per "
        "file, mean over seeds then files.\n",
        "## This run\n", table(out), "", flag_all,
        "\n## Reference, not this run (TIMESERIES.md)\n", SKAB_REFERENCE])


def report_nab(df: pd.DataFrame) -> str:
    ps = per_series(df, ["VUS-PR", "AUC-PR", "thr_far"])
    parts = ["# Time-series benchmark: NAB\n",
             "The first 15% of each series is the normal history (fit), the rest is scored; a row is "
             "positive inside a labelled window. Mean over seeds per series, then over the series of "
             "each category that have a labelled row after the history (artificialNoAnomaly and "
             "ec2_cpu_utilization_c6585a have none: only their false-alarm rate is shown).\n"]
    for metric in ("VUS-PR", "AUC-PR", "thr_far"):
        wide = ps.pivot_table(index="method", columns="group", values=metric, aggfunc="mean")
        wide = wide.dropna(axis=1, how="all")
        wide["overall"] = ps.groupby("method")[metric].mean()
        wide.insert(0, "series", ps.dropna(subset=[metric]).groupby("method")["series"].nunique())
        name = "false-alarm rate of the own threshold" if metric == "thr_far" else metric
        parts += [f"## This run: {name}\n",
                  table(wide.sort_values("overall", ascending=metric == "thr_far").reset_index()), ""]
    parts += ["## Reference, not this run (TIMESERIES.md)\n", NAB_REFERENCE]
    return "\n".join(parts)


REPORTS = {"msl": report_msl, "skab": report_skab, "nab": report_nab}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", choices=sorted(REPORTS), required=True)
    ap.add_argument("--csv", type=Path, help="default benchmarks/results/timeseries_<suite>.csv")
    ap.add_argument("--out", type=Path, help="default: the CSV's path with .md")
    args = ap.parse_args(argv)
    src = args.csv or RESULTS / f"timeseries_{args.suite}.csv"
    df = pd.read_csv(src)
    df = df[df.suite == args.suite].replace([np.inf, -np.inf], np.nan)
    out = args.out or src.with_suffix(".md")
    out.write_text(REPORTS[args.suite](df))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
