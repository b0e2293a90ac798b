"""Markdown report from a benchmark result CSV (see :mod:`anomaly_ae.bench.runner`)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from . import detectors as det

FPR_TARGET = 0.01
FPR_BAND = (0.005, 0.02)


def _natural_key(name: str):
    m = re.match(r"(\d+)_(.*)", name)
    return (int(m.group(1)), m.group(2)) if m else (10**9, name)


def _family(name: str) -> str:
    try:
        return det.family(name)
    except KeyError:
        return "?"


def load_results(csv_path: str | Path) -> pd.DataFrame:
    df = pd.read_csv(csv_path, dtype={"dataset": str, "detector": str, "error": str},
                     keep_default_na=False, na_values={"auroc": [""], "auprc": [""]})
    for c in ("auroc", "auprc", "fit_s", "score_s", "fpr_at_threshold"):
        if c in df:
            df[c] = pd.to_numeric(df[c].replace("", np.nan), errors="coerce")
    if "error" not in df:
        df["error"] = ""
    df["error"] = df["error"].fillna("").astype(str)
    df["seed"] = df["seed"].astype(int)
    df["ok"] = (df["error"] == "") & df["auroc"].notna()
    return df


def _md_table(header: list[str], rows: list[list[str]], align: list[str] | None = None) -> str:
    align = align or ["---"] * len(header)
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _f(x, nd=3) -> str:
    return "" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{nd}f}"


def summarize(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, list[str]]:
    """(summary per detector, seed-averaged AUROC dataset x detector, ranks, common datasets)."""
    ok = df[df["ok"]]
    auroc = ok.pivot_table(index="dataset", columns="detector", values="auroc", aggfunc="mean")
    auprc = ok.pivot_table(index="dataset", columns="detector", values="auprc", aggfunc="mean")
    ranks = auroc.rank(axis=1, ascending=False, method="average")
    best = auroc.max(axis=1)
    common = [d for d in auroc.index if auroc.loc[d].notna().all()] if len(auroc.columns) else []
    dets = list(dict.fromkeys(list(det.ALL_DETECTORS) + sorted(df["detector"].unique())))
    dets = [d for d in dets if d in set(df["detector"])]
    rows = []
    for d in dets:
        sub = df[df["detector"] == d]
        a = auroc[d].dropna() if d in auroc else pd.Series(dtype=float)
        p = auprc[d].dropna() if d in auprc else pd.Series(dtype=float)
        r = ranks[d].dropna() if d in ranks else pd.Series(dtype=float)
        wins = int(((auroc[d] == best) & auroc[d].notna()).sum()) if d in auroc else 0
        secs = float(np.nansum(sub["fit_s"].to_numpy(float)) + np.nansum(sub["score_s"].to_numpy(float)))
        rows.append({
            "detector": d, "family": _family(d),
            "mean_auroc": a.mean() if len(a) else np.nan,
            "mean_auroc_common": auroc.loc[common, d].mean() if common and d in auroc else np.nan,
            "mean_auprc": p.mean() if len(p) else np.nan,
            "mean_rank": r.mean() if len(r) else np.nan,
            "wins": wins, "datasets": len(a),
            "seeds": ",".join(str(s) for s in sorted(sub["seed"].unique())),
            "rows": len(sub), "errors": int((~sub["ok"]).sum()), "seconds": secs,
        })
    summary = pd.DataFrame(rows)
    if len(summary):
        summary = summary.sort_values(["mean_rank", "mean_auroc"], ascending=[True, False],
                                      na_position="last").reset_index(drop=True)
    return summary, auroc, ranks, common


def anchor_comparison(df: pd.DataFrame, anchor_csv: str | Path) -> pd.DataFrame:
    """Per PyOD detector: matching (dataset, seed) rows vs the anchor CSV, AUROC/AUPRC |diff|."""
    anc = load_results(anchor_csv)
    keys = ["dataset", "seed", "detector"]
    m = df.merge(anc[keys + ["auroc", "auprc", "ok", "fit_s", "score_s"]], on=keys,
                 suffixes=("", "_anchor"))
    rows = []
    for d, g in m.groupby("detector", sort=False):
        both = g[g["ok"] & g["ok_anchor"]]
        diff = (both["auroc"] - both["auroc_anchor"]).abs()
        worst = both.loc[diff.idxmax()] if len(both) else None
        t_ours = float(np.nansum(g["fit_s"]) + np.nansum(g["score_s"]))
        t_anc = float(np.nansum(g["fit_s_anchor"]) + np.nansum(g["score_s_anchor"]))
        rows.append({
            "detector": d, "matched": len(g), "both_ok": len(both),
            "mean_abs_auroc": diff.mean() if len(both) else np.nan,
            "max_abs_auroc": diff.max() if len(both) else np.nan,
            "worst": (f"{worst['dataset']} s{worst['seed']}"
                      if worst is not None and diff.max() >= 5e-7 else ""),
            "mean_abs_auprc": (both["auprc"] - both["auprc_anchor"]).abs().mean() if len(both) else np.nan,
            "exact": int((diff < 5e-7).sum()),
            "error_both": int((~g["ok"] & ~g["ok_anchor"]).sum()),
            "error_only_ours": int((~g["ok"] & g["ok_anchor"]).sum()),
            "error_only_anchor": int((g["ok"] & ~g["ok_anchor"]).sum()),
            "time_ratio": t_ours / t_anc if t_anc > 0 else np.nan,
        })
    out = pd.DataFrame(rows)
    order = {n: i for i, n in enumerate(det.ALL_DETECTORS)}
    if len(out):
        out = out.sort_values("detector", key=lambda s: s.map(lambda n: order.get(n, 999)))
    return out


def render_report(csv_path: str | Path, anchor_csv: str | Path | None = None) -> str:
    df = load_results(csv_path)
    lines = ["# ADBench one-class benchmark: anomaly_ae vs PyOD", ""]
    if df.empty:
        return "\n".join(lines + [f"No rows in `{csv_path}` yet.", ""])
    summary, auroc, ranks, common = summarize(df)
    n_ds = df["dataset"].nunique()
    lines += [
        f"Source: `{Path(csv_path).name}`: {len(df)} rows, {n_ds} datasets, seeds "
        f"{', '.join(str(s) for s in sorted(df['seed'].unique()))}; "
        f"{int((~df['ok']).sum())} error row(s). Protocol: ADBench \"Classical\" one-class split "
        "(train on ≤60% of the normals, capped at 10,000; test = next ≤20,000 normals + ≤5,000 "
        "anomalies), PROTOCOL.md. PyOD detectors use their defaults on standardised data; "
        "anomaly_ae detectors get raw data and scale it themselves.",
        "",
        "## Summary", "",
        "Mean AUROC/AUPRC: seeds averaged per dataset first, then the mean over the datasets the "
        "detector covers (error rows excluded). Mean rank: rank (1 = best) among the detectors "
        "present on each dataset, by seed-averaged AUROC. Wins: datasets where the detector has "
        f"the best seed-averaged AUROC (ties count for all). Common: mean AUROC over the "
        f"{len(common)} datasets every detector below covers. Seconds: total fit + score time.",
        "",
    ]
    rows = [[f"`{r.detector}`", r.family, _f(r.mean_auroc), _f(r.mean_auroc_common), _f(r.mean_auprc),
             _f(r.mean_rank, 2), r.wins, r.datasets, r.seeds, r.errors, f"{r.seconds:.0f}"]
            for r in summary.itertuples()]
    lines += [_md_table(["detector", "family", "mean AUROC", f"AUROC common ({len(common)})",
                         "mean AUPRC", "mean rank", "wins", "datasets", "seeds", "errors",
                         "fit+score s"], rows,
                        ["---", "---"] + ["---:"] * 9), ""]

    # per-dataset AUROC table
    dets = list(summary["detector"])
    datasets = sorted(df["dataset"].unique(), key=_natural_key)
    lines += ["## AUROC per dataset", "",
              "Seed-averaged AUROC; best per dataset in bold; `err` = every seed failed, "
              "`*` = some seeds failed (average over the others), blank = not run.", ""]
    rows = []
    for ds in datasets:
        row = [ds]
        best = auroc.loc[ds].max() if ds in auroc.index else np.nan
        for d in dets:
            sub = df[(df["dataset"] == ds) & (df["detector"] == d)]
            if sub.empty:
                row.append("")
                continue
            if not sub["ok"].any():
                row.append("err")
                continue
            v = auroc.loc[ds, d]
            cell = f"{v:.3f}" + ("*" if (~sub["ok"]).any() else "")
            row.append(f"**{cell}**" if v == best else cell)
        rows.append(row)
    lines += [_md_table(["dataset"] + [f"`{d}`" for d in dets], rows,
                        ["---"] + ["---:"] * len(dets)), ""]

    # calibration
    lines += ["## Calibration of the anomaly_ae threshold", "",
              f"Share of test normals that `predict` flags at the threshold calibrated for "
              f"{FPR_TARGET:.0%} FPR (seed-averaged). In band = datasets with "
              f"{FPR_BAND[0]:.1%} ≤ FPR ≤ {FPR_BAND[1]:.0%}. Datasets with few test normals give "
              "coarse figures (45_wine has 48: one false alarm = 2.1%).", ""]
    cal = df[df["detector"].map(det.is_anomaly_ae) & df["fpr_at_threshold"].notna()]
    if cal.empty:
        lines += ["No anomaly_ae rows with a threshold yet.", ""]
    else:
        fpr = cal.pivot_table(index="dataset", columns="detector", values="fpr_at_threshold",
                              aggfunc="mean")
        cdets = [d for d in dets if d in fpr.columns]
        srows = []
        for d in cdets:
            v = fpr[d].dropna()
            inb = int(((v >= FPR_BAND[0]) & (v <= FPR_BAND[1])).sum())
            srows.append([f"`{d}`", f"{inb} / {len(v)}", f"{v.median():.2%}", f"{v.mean():.2%}",
                          f"{v.min():.2%}", f"{v.max():.2%}"])
        lines += [_md_table(["detector", "datasets in band", "median FPR", "mean FPR", "min", "max"],
                            srows, ["---"] + ["---:"] * 5), ""]
        rows = [[ds] + [("" if pd.isna(fpr.loc[ds, d]) else f"{fpr.loc[ds, d]:.2%}") for d in cdets]
                for ds in sorted(fpr.index, key=_natural_key)]
        lines += [_md_table(["dataset"] + [f"`{d}`" for d in cdets], rows,
                            ["---"] + ["---:"] * len(cdets)), ""]

    # anchor
    if anchor_csv and Path(anchor_csv).exists():
        comp = anchor_comparison(df, anchor_csv)
        lines += ["## PyOD reruns vs the anchor figures", "",
                  f"Rows matched on (dataset, seed, detector) with `{Path(anchor_csv).name}`. "
                  "abs Δ = absolute difference where both succeeded; exact = AUROC difference < 5e-7. "
                  "Errors: rows failing in both / only in ours / only in the anchor. Time ratio = our total fit+score "
                  "seconds / the anchor's on the matched rows (different machine).", ""]
        if comp.empty:
            lines += ["No rows in common with the anchor yet.", ""]
        else:
            rows = [[f"`{r.detector}`", r.matched, r.both_ok, r.exact, _f(r.mean_abs_auroc, 4),
                     _f(r.max_abs_auroc, 4), r.worst, _f(r.mean_abs_auprc, 4),
                     f"{r.error_both} / {r.error_only_ours} / {r.error_only_anchor}",
                     _f(r.time_ratio, 2)] for r in comp.itertuples()]
            lines += [_md_table(["detector", "matched", "both ok", "exact", "mean abs Δ AUROC",
                                 "max abs Δ AUROC", "worst", "mean abs Δ AUPRC",
                                 "errors (both/ours/anchor)", "time ratio"],
                                rows, ["---"] + ["---:"] * 5 + ["---"] + ["---:"] * 3), ""]

    # errors
    err = df[~df["ok"]]
    lines += ["## Errors", ""]
    if err.empty:
        lines += ["None.", ""]
    else:
        g = (err.assign(msg=err["error"].str.slice(0, 160))
             .groupby(["detector", "dataset", "msg"], sort=False)["seed"]
             .apply(lambda s: ",".join(str(x) for x in sorted(s))).reset_index())
        rows = [[f"`{r.detector}`", r.dataset, r.seed, r.msg.replace("|", "\\|")]
                for r in g.itertuples()]
        lines += [_md_table(["detector", "dataset", "seeds", "error"], rows), ""]
    return "\n".join(lines)


def write_report(csv: str | Path, md_path: str | Path, anchor_csv: str | Path | None = None) -> Path:
    """Write the markdown report for ``csv`` to ``md_path`` (returns ``md_path``)."""
    md_path = Path(md_path)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(render_report(csv, anchor_csv))
    return md_path
