"""Issue 11, an exploration: would lower bounds speed up the row models' exact neighbour search?

A series stream's few new windows are searched with lower bounds from the reference's main
directions (`NearestNeighbors._bounded_distances`). This script asks whether the same idea pays for
a batch of 1,000 rows against 9,600 reference rows: with V the top p principal directions of the
reference, |q - r|^2 >= |V'q - V'r|^2 + (|q - VV'q| - |r - VV'r|)^2. It times the current exact
search (`NearestNeighbors.nearest`) and the (1,000 x 9,600) bound matrix alone, and counts, per
query, the reference rows whose bound lies below the query's 5th-nearest squared distance (the rows
an exact pruned search would still have to measure). Data: the 30 features of `serve_bench.py`, and
ADBench sets (`../shared/data/adbench`, normal rows as the reference, 1,000 random rows as queries),
standardised on the reference. One thread.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/experiments/issue11_batch_bounds.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
from inprocess_speed import median_ms  # noqa: E402
from serve_bench import make_data  # noqa: E402

from anomaly_ae.models.neighbors import NearestNeighbors  # noqa: E402

ADBENCH = REPO.parent / "shared" / "data" / "adbench"
OUT = REPO / "benchmarks" / "results" / "experiments" / "issue11_batch_bounds.md"
DATASETS = ["serve_bench", "10_cover", "22_magic.gamma", "1_ALOI", "8_celeba", "5_campaign"]


def load(name: str) -> tuple[np.ndarray, np.ndarray]:
    if name == "serve_bench":
        reference, queries = make_data(9600, 0).to_numpy(), make_data(1000, 1).to_numpy()
    else:
        data = np.load(ADBENCH / f"{name}.npz")
        x, y = data["X"].astype(np.float64), data["y"]
        rng = np.random.default_rng(0)
        normal = rng.permutation(np.flatnonzero(y == 0))
        reference, queries = x[normal[:9600]], x[rng.choice(len(x), 1000, replace=False)]
    mean, scale = reference.mean(0), reference.std(0)
    scale[scale == 0] = 1.0
    return ((reference - mean) / scale).astype(np.float32), ((queries - mean) / scale).astype(np.float32)


def main() -> None:
    torch.set_num_threads(1)
    lines = ["# Lower bounds for a batch's exact neighbour search (issue 11)", "",
             "`benchmarks/experiments/issue11_batch_bounds.py`: 1,000 query rows, up to 9,600 reference rows, "
             "one thread, median of 7 calls. `exact` is the shipped search (`NearestNeighbors.nearest`: mean "
             "distance to the 5 nearest); `bounds` builds the (1,000 x n) lower-bound matrix with p main "
             "directions and nothing else; `rows to measure` counts, per query, the reference rows whose bound "
             "lies below its 5th-nearest squared distance.", "",
             "| data | n | D | p | exact ms | bounds ms | rows to measure: mean | p90 | max |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in DATASETS:
        if name != "serve_bench" and not (ADBENCH / f"{name}.npz").exists():
            continue
        reference, queries = load(name)
        n, d = reference.shape
        neighbours = NearestNeighbors((d,), n, 5)
        neighbours.set_reference(torch.from_numpy(reference))
        exact_ms = median_ms(lambda: neighbours.nearest(queries), 7)
        sample = reference[np.linspace(0, n - 1, min(n, 1024)).astype(int)].astype(np.float64)
        _, vectors = np.linalg.eigh(sample.T @ sample)
        for p in (4, 8, 16):
            if p >= d:
                continue
            basis = np.ascontiguousarray(vectors[:, ::-1][:, :p], dtype=np.float32)
            ref_p, query_p = reference @ basis, queries @ basis
            ref_res = np.sqrt(np.maximum(np.square(reference, dtype=np.float64).sum(1)
                                         - np.square(ref_p, dtype=np.float64).sum(1), 0)).astype(np.float32)
            query_res = np.sqrt(np.maximum(np.square(queries, dtype=np.float64).sum(1)
                                           - np.square(query_p, dtype=np.float64).sum(1), 0)).astype(np.float32)
            ref_p_t, ref_p_sq, query_p_sq = np.ascontiguousarray(ref_p.T), np.square(ref_p).sum(1), np.square(query_p).sum(1)

            def bounds() -> np.ndarray:
                b = query_p @ ref_p_t
                b *= -2.0
                b += ref_p_sq
                b += query_p_sq[:, None]
                b += np.square(query_res[:, None] - ref_res[None, :])
                return b

            bound = bounds()
            first = torch.from_numpy(bound).topk(16, largest=False, sorted=False).indices.numpy()
            exact = np.square(queries[:, None, :] - reference[first]).sum(-1)
            tau = np.sort(exact, 1)[:, 4]
            left = (bound <= tau[:, None] * (1 + 1e-4)).sum(1)
            lines.append(f"| {name} | {n} | {d} | {p} | {exact_ms:.1f} | {median_ms(bounds, 7):.1f} | "
                         f"{left.mean():.0f} | {np.percentile(left, 90):.0f} | {left.max()} |")
            print(lines[-1], flush=True)
    lines += ["", "Reading: where the data has few main directions (serve_bench, cover, magic.gamma at p = 8) the "
              "bounds leave a few rows per query, but building the bound matrix (several passes over 1,000 x n "
              "values) costs as much as the whole exact search or more, whose product and group minima are such "
              "passes too; on celeba and campaign, where it can cost less, the bounds leave hundreds to thousands "
              "of rows per query. So a batch keeps the exact "
              "search; the bounds pay only for a stream's few windows, whose exact search reads the whole "
              "reference for very little work."]
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
