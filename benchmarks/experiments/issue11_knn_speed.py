"""Issue 11, the kNN cost side: how fast is exact mean-5-NN in-process, and what does a smaller
reference set cost in AUROC?

    nice -n 15 .venv/bin/python benchmarks/experiments/issue11_knn_speed.py [--part speed|protos|both]

speed:  1,000 query rows against 9,600 reference rows (standardised real data, protocol split
        seed 0: 9,600 of the training rows as reference, the first 1,000 test rows as queries),
        one thread everywhere. torch.cdist+topk (float32 / float64), NumPy brute force
        (|a|^2+|b|^2-2ab), faiss IndexFlatL2 (exact), hnswlib HNSW (approximate: M=16,
        ef_construction=200, ef=64; recall@5 vs exact reported). Batch of 1,000 and 1-row calls.
protos: AUROC of mean-5-NN against (a) all training rows, (b) k-means centres (1,000 / 2,000;
        sklearn KMeans, n_init=1, max_iter=100, seeded), (c) a random subsample of the same size.
Results: benchmarks/results/experiments/issue11_knn_speed.csv / issue11_protos.csv.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from anomaly_ae.bench.protocol import load, split

sys.path.insert(0, "/tmp/hnsw_target")  # hnswlib built locally (not a project dependency)

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "adbench"  # ../shared beside the checkout
RES = Path(__file__).resolve().parents[1] / "results" / "experiments"


def scaled(name: str, seed: int = 0):
    X, y = load(DATA / f"{name}.npz")
    xtr, xte, yte = split(X, y, seed)
    mean, std = xtr.mean(0), xtr.std(0)
    std = np.where(std > 0, std, 1.0)
    return ((xtr - mean) / std).astype(np.float32), ((xte - mean) / std).astype(np.float32), yte


def best_of(fn, repeat: int = 5) -> float:
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def torch_knn(q, r, k=5, dtype=torch.float32):
    qt, rt = torch.from_numpy(q).to(dtype), torch.from_numpy(r).to(dtype)
    d = torch.cdist(qt, rt)
    return d.topk(k, largest=False).values.mean(-1).numpy()


def numpy_knn(q, r, k=5):
    d2 = (q * q).sum(1)[:, None] + (r * r).sum(1)[None] - 2.0 * q @ r.T
    part = np.partition(np.maximum(d2, 0), k, axis=1)[:, :k]
    return np.sqrt(part).mean(1)


def speed() -> None:
    import faiss
    faiss.omp_set_num_threads(1)
    try:
        import hnswlib
    except ImportError:
        hnswlib = None
    out = RES / "issue11_knn_speed.csv"
    rows = []
    for name in ("10_cover", "8_celeba", "5_campaign"):
        xtr, xte, _ = scaled(name)
        ref, q = np.ascontiguousarray(xtr[:9600]), np.ascontiguousarray(xte[:1000])
        d = ref.shape[1]
        exact = torch_knn(q, ref, dtype=torch.float64)
        res = {}
        res["torch_cdist_f32"] = (0.0, best_of(lambda: torch_knn(q, ref)),
                                  best_of(lambda: [torch_knn(q[i:i + 1], ref) for i in range(100)], 3) / 100)
        res["torch_cdist_f64"] = (0.0, best_of(lambda: torch_knn(q, ref, dtype=torch.float64)),
                                  best_of(lambda: [torch_knn(q[i:i + 1], ref, dtype=torch.float64)
                                                   for i in range(100)], 3) / 100)
        res["numpy_bruteforce"] = (0.0, best_of(lambda: numpy_knn(q, ref)),
                                   best_of(lambda: [numpy_knn(q[i:i + 1], ref) for i in range(100)], 3) / 100)
        t0 = time.perf_counter()
        index = faiss.IndexFlatL2(d)
        index.add(ref)
        build = time.perf_counter() - t0

        def faiss_knn(qq):
            D, _ = index.search(qq, 5)
            return np.sqrt(np.maximum(D, 0)).mean(1)
        res["faiss_IndexFlatL2"] = (build, best_of(lambda: faiss_knn(q)),
                                    best_of(lambda: [faiss_knn(q[i:i + 1]) for i in range(100)], 3) / 100)
        recall = {}
        if hnswlib is not None:
            t0 = time.perf_counter()
            h = hnswlib.Index(space="l2", dim=d)
            h.init_index(max_elements=len(ref), ef_construction=200, M=16, random_seed=0)
            h.set_num_threads(1)
            h.add_items(ref, num_threads=1)
            h.set_ef(64)
            hbuild = time.perf_counter() - t0

            def hnsw_knn(qq):
                lab, D = h.knn_query(qq, k=5, num_threads=1)
                return np.sqrt(np.maximum(D, 0)).mean(1), lab
            res["hnswlib_M16_ef64"] = (hbuild, best_of(lambda: hnsw_knn(q)),
                                       best_of(lambda: [hnsw_knn(q[i:i + 1]) for i in range(100)], 3) / 100)
            _, lab = hnsw_knn(q)
            _, true_lab = index.search(q, 5)
            recall["hnswlib_M16_ef64"] = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(lab, true_lab)])
            approx = hnsw_knn(q)[0]
            recall["hnswlib_M16_ef64_maxrelerr"] = float(np.max(np.abs(approx - exact) / np.maximum(exact, 1e-12)))
        for m, (b, batch, single) in res.items():
            row = {"dataset": name, "d": d, "n_ref": len(ref), "n_query": len(q), "method": m,
                   "build_s": round(b, 4), "batch1000_s": round(batch, 4),
                   "per_row_ms_single": round(single * 1000, 3),
                   "recall_at_5": round(recall.get(m, 1.0), 4),
                   "max_rel_err": round(recall.get(m + "_maxrelerr", 0.0), 6) if m in recall else ""}
            rows.append(row)
            print(row, flush=True)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def protos(datasets: list[str], seed: int) -> None:
    from sklearn.cluster import KMeans
    from sklearn.metrics import roc_auc_score
    out = RES / "issue11_protos.csv"
    new = not out.exists()
    with open(out, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["dataset", "seed", "reference", "n_ref", "auroc", "build_s"],
                           lineterminator="\n")
        if new:
            w.writeheader()
        for name in datasets:
            xtr, xte, yte = scaled(name, seed)
            full = torch_knn(xte, xtr, dtype=torch.float64)
            rec = [("full", len(xtr), roc_auc_score(yte, full), 0.0)]
            rng = np.random.default_rng(seed)
            for m in (1000, 2000):
                if m >= len(xtr):
                    continue
                t0 = time.perf_counter()
                km = KMeans(n_clusters=m, n_init=1, max_iter=100, random_state=seed).fit(xtr)
                kb = time.perf_counter() - t0
                c = km.cluster_centers_.astype(np.float32)
                rec.append((f"kmeans{m}", m, roc_auc_score(yte, torch_knn(xte, c, dtype=torch.float64)), kb))
                sub = xtr[np.sort(rng.permutation(len(xtr))[:m])]
                rec.append((f"random{m}", m, roc_auc_score(yte, torch_knn(xte, sub, dtype=torch.float64)), 0.0))
            for r, n, a, b in rec:
                row = {"dataset": name, "seed": seed, "reference": r, "n_ref": n, "auroc": round(a, 6),
                       "build_s": round(b, 2)}
                w.writerow(row)
                f.flush()
                print(row, flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--part", default="both")
    p.add_argument("--datasets", default="22_magic.gamma,30_satellite,10_cover,1_ALOI,5_campaign,8_celeba")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if a.part in ("speed", "both"):
        speed()
    if a.part in ("protos", "both"):
        protos(a.datasets.split(","), a.seed)


if __name__ == "__main__":
    main()
