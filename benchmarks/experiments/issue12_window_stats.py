"""Issue 12, an exploration: window statistics against flattened windows for kNN series scores.

The default `SeriesDetector` (mean distance to the 5 nearest training windows, each window
flattened) finds fewer of the synthetic demo's incidents than the row-by-row default, and the
kinds built to be visible only over time (stuck value, variance change, decoupling) score near
AUROC 0.5. This script asks whether summarising each causal window by statistics helps, and
whether that holds on real data, before anything goes into the package.

Feature groups of a causal window of W = 32 steps (metrics scaled on the training rows; 0/1 columns
left as they are, as the package does): `flat` the window flattened (today's knn), `last` the
newest row alone, `ms` per-metric window mean and half-window slope, `lsd` per-metric log standard
deviation of first differences, `corr` pairwise correlation of first differences. A variant scores
each group by mean-5-NN distance (training windows' first 80% as reference) and sums the groups'
scores after standardising each by the median and IQR of its scores on the last 20% of the
training windows (normal data only; no labels, no per-series choice).

Metric: AUC-PR of the evaluated rows (sklearn `average_precision_score`), mean over series; the
synthetic telemetry also AUROC per anomaly kind. Data: MSL eva (14), SKAB (34), NAB (the series
with a labelled row after the history), read from ../shared, never copied.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/experiments/issue12_window_stats.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks" / "timeseries"))
from data import load_msl, load_nab, load_skab  # noqa: E402

from anomaly_ae.data.synthetic_series import SERIES_METRIC_COLUMNS, make_series_telemetry, split_history  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "experiments" / "issue12_window_stats.md"
W = 32
VARIANTS = {"knn over flattened windows (today's default)": ["flat"], "knn over the newest row": ["last"],
            "sum: last + lsd": ["last", "lsd"], "sum: last + lsd + corr": ["last", "lsd", "corr"],
            "sum: last + ms + lsd + corr": ["last", "ms", "lsd", "corr"], "sum: flat + lsd + corr": ["flat", "lsd", "corr"]}


def scale(train: np.ndarray, x: np.ndarray) -> np.ndarray:
    mu, sd = train.mean(0), train.std(0)
    flags = np.all(np.isin(train, [0, 1]), axis=0)
    sd = np.where(flags | (sd < 1e-9), 1.0, sd)
    return (x - np.where(flags, 0.0, mu)) / sd


def groups(x: np.ndarray, use: list[str]) -> dict[str, np.ndarray]:
    win = np.lib.stride_tricks.sliding_window_view(np.vstack([np.repeat(x[:1], W - 1, 0), x]), W, axis=0)
    dif = np.diff(win, axis=2)
    out = {"last": x, "flat": win.reshape(len(x), -1), "lsd": np.log(dif.std(2) + 1e-3),
           "ms": np.hstack([win.mean(2), win[:, :, W // 2:].mean(2) - win[:, :, :W // 2].mean(2)])}
    if "corr" in use:
        dz = dif - dif.mean(2, keepdims=True)
        dz /= dz.std(2, keepdims=True) + 1e-6
        iu = np.triu_indices(x.shape[1], 1)
        out["corr"] = (np.einsum("nik,njk->nij", dz, dz) / (W - 1))[:, iu[0], iu[1]]
    return {k: out[k] for k in use}


def knn(ref: np.ndarray, query: np.ndarray, k: int = 5) -> np.ndarray:
    mu, sd = ref.mean(0), ref.std(0) + 1e-6
    a = torch.tensor((ref - mu) / sd, dtype=torch.float32)
    b = torch.tensor((query - mu) / sd, dtype=torch.float32)
    return torch.cat([torch.cdist(b[i:i + 1000], a).topk(min(k, len(a)), largest=False).values.mean(1)
                      for i in range(0, len(b), 1000)]).numpy()


def score(train: np.ndarray, x: np.ndarray, use: list[str]) -> np.ndarray:
    g_train, g_x = groups(train, use), groups(x, use)
    if len(use) == 1:
        return knn(g_train[use[0]], g_x[use[0]])
    cut, total = int(len(train) * 0.8), 0.0
    for name in use:
        held = knn(g_train[name][:cut], g_train[name][cut:])
        iqr = np.quantile(held, 0.75) - np.quantile(held, 0.25) + 1e-9
        total = total + (knn(g_train[name][:cut], g_x[name]) - np.median(held)) / iqr
    return total


def real_suite(name: str, series: list) -> list[str]:
    rows, seconds = {v: [] for v in VARIANTS}, {v: 0.0 for v in VARIANTS}
    for s in series:
        y = s.y[s.score_from:]
        if not y.any():
            continue
        x = scale(s.train, s.X)
        for variant, use in VARIANTS.items():
            if "corr" in use and x.shape[1] < 2:
                use = [u for u in use if u != "corr"]
            started = time.perf_counter()
            rows[variant].append(average_precision_score(y, score(x[:s.n_train], x, use)[s.score_from:]))
            seconds[variant] += time.perf_counter() - started
    n = len(rows[next(iter(VARIANTS))])
    lines = [f"### {name} ({n} series)", "", "| variant | mean AUC-PR | seconds |", "|---|---:|---:|"]
    lines += [f"| {v} | {np.mean(r):.3f} | {seconds[v]:.0f} |" for v, r in rows.items()]
    print("\n".join(lines), flush=True)
    return lines + [""]


def synthetic_suite(seeds: tuple[int, ...] = (1, 2, 3)) -> list[str]:
    metrics = list(SERIES_METRIC_COLUMNS)
    kinds: list[str] = []
    table: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    for seed in seeds:
        history, rest = split_history(make_series_telemetry(288 * 21, n_hosts=3, seed=seed))
        labels = rest.anomaly_kind.to_numpy()
        kinds = sorted(set(labels) - {"none"})
        normal = labels == "none"
        for variant, use in VARIANTS.items():
            scores = []
            for host in rest.host.unique():  # one model per host here: windows never cross hosts
                train = history.loc[history.host == host, metrics].to_numpy(float)
                test = rest.loc[rest.host == host, metrics].to_numpy(float)
                both = scale(train, np.vstack([train, test]))
                scores.append(score(both[:len(train)], both, use)[len(train):])
            s = np.concatenate(scores)
            result = {"all": roc_auc_score(~normal, s)}
            for kind in kinds:
                mask = normal | (labels == kind)
                result[kind] = roc_auc_score(labels[mask] == kind, s[mask])
            table[variant].append(result)
    columns = ["all", *kinds]
    lines = [f"### synthetic telemetry (`make_series_telemetry(288 * 21, 3 hosts)`, seeds {seeds}): AUROC", "",
             "| variant | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for variant, results in table.items():
        lines.append(f"| {variant} | " + " | ".join(f"{np.mean([r[c] for r in results]):.3f}" for c in columns) + " |")
    print("\n".join(lines), flush=True)
    return lines + [""]


def main() -> None:
    torch.set_num_threads(1)
    body = synthetic_suite()
    body += real_suite("NASA MSL eva", [s for s in load_msl() if s.group == "eva"])
    body += real_suite("SKAB", load_skab())
    body += real_suite("NAB (univariate: no corr)", load_nab())
    OUT.write_text("# Issue 12: window statistics vs flattened windows (exploration)\n\n"
                   "Generated by `benchmarks/experiments/issue12_window_stats.py`; see its docstring for the "
                   "variants.\n\n" + "\n".join(body))


if __name__ == "__main__":
    main()
