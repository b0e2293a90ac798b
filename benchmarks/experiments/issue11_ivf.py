"""Issue 11: can an inverted-file index (faiss IndexIVFFlat) make the default's neighbour term cheap enough
for "1,000 rows within 3x of `ae`", and what does it cost in AUROC?

    pip install --no-deps --target /tmp/faiss_target faiss-cpu==1.15.1   # not a project dependency
    PYTHONPATH=/tmp/faiss_target nice -n 5 .venv/bin/python benchmarks/experiments/issue11_ivf.py

Per dataset (protocol split, seed 0, standardised on the training rows, float32): the exact search the
package ships (`NearestNeighbors.nearest`, against every training row) and IndexIVFFlat with
nlist = round(sqrt(n_train)) cells (k-means on the training rows) probing 4 and 8 cells, one thread each.
Time: median of 7 calls on the first 1,000 test rows. Recall@5 and AUROC of mean-5-NN over every test row.
Result: benchmarks/results/experiments/issue11_ivf.md.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import faiss
import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from anomaly_ae.bench.protocol import load, split, standardize
from anomaly_ae.models.neighbors import NearestNeighbors

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "adbench"  # ../shared beside the checkout
OUT = Path(__file__).resolve().parents[1] / "results" / "experiments" / "issue11_ivf.md"
PROBES = (4, 8)


def median_ms(call, repeats: int = 7) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1000)


def main() -> None:
    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    rows, ratios = [], {p: [] for p in PROBES}
    for path in sorted(DATA.glob("*.npz")):
        X, y = load(path)
        x_train, x_test, y_test = split(X, y, 0)
        x_train, x_test = (a.astype(np.float32) for a in standardize(x_train, x_test))
        queries = x_test[:1000]
        exact = NearestNeighbors((x_train.shape[1],), len(x_train), 5)
        exact.set_reference(torch.from_numpy(x_train))
        exact_ms = median_ms(lambda: exact.nearest(queries))
        exact_scores = exact.nearest(x_test)[0]
        flat = faiss.IndexFlatL2(x_train.shape[1])
        flat.add(x_train)
        true_ids = flat.search(x_test, 5)[1]
        nlist = max(1, round(len(x_train) ** 0.5))
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(x_train.shape[1]), x_train.shape[1], nlist)
        ivf.cp.seed = 0
        ivf.train(x_train)
        ivf.add(x_train)
        exact_auroc = roc_auc_score(y_test, exact_scores)
        row = [path.stem, x_train.shape[1], len(x_train), f"{exact_ms:.2f}", f"{exact_auroc:.4f}"]
        for probes in PROBES:
            ivf.nprobe = probes
            ms = median_ms(lambda: ivf.search(queries, 5))
            distances, ids = ivf.search(x_test, 5)
            scores = np.sqrt(np.maximum(distances, 0)).mean(1)
            recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(ids, true_ids)])
            auroc = roc_auc_score(y_test, scores)
            ratios[probes].append(ms / exact_ms)
            row += [f"{ms:.2f}", f"{recall:.3f}", f"{auroc - float(row[4]):+.4f}"]
        rows.append(row)
        print(" | ".join(map(str, row)), flush=True)
    head = ["dataset", "d", "n_train", "exact ms", "exact AUROC"]
    for probes in PROBES:
        head += [f"nprobe {probes} ms", "recall@5", "AUROC change"]
    lines = [
        "# Issue 11: an inverted-file index (faiss IndexIVFFlat) for the neighbour term",
        "",
        f"`benchmarks/experiments/issue11_ivf.py` at {commit}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        "seed 0 split, 1,000 query rows, one thread, median of 7 calls; nlist = round(sqrt(n_train)).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *("| " + " | ".join(map(str, r)) + " |" for r in rows),
        "",
        *(f"- nprobe {p}: median time {np.median(ratios[p]):.2f}x the exact search "
          f"(range {min(ratios[p]):.2f}-{max(ratios[p]):.2f}x)" for p in PROBES),
    ]
    OUT.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
