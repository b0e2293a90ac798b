"""Distance to the nearest training samples: density evidence that reconstruction error misses.

An autoencoder flags what lies off the normal manifold; a rare point *on* it (a sparse region of
normal behaviour) reconstructs well but is far from its neighbours. The reference rows are kept as
a buffer, so they travel in the safetensors file like any weight: either (preprocessed) training
rows, or k-means prototypes of them (`kmeans_prototypes`), which keep raw rows out of the file.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class NearestNeighbors(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], n_reference: int, k: int) -> None:
        super().__init__()
        n_features = int(torch.tensor(input_shape).prod())
        self.k = k
        self.register_buffer("reference", torch.zeros(n_reference, n_features))

    @torch.no_grad()
    def set_reference(self, x: torch.Tensor) -> None:
        self.reference.copy_(x.flatten(1))

    @torch.no_grad()
    def distances(self, x: torch.Tensor, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean distance to the k nearest reference rows (N,), and each feature's squared gap to the
        nearest one (N, F), which explains the distance the way reconstruction errors explain theirs."""
        flat = x.flatten(1)
        means, gaps = [], []
        for start in range(0, len(flat), chunk):
            part = flat[start:start + chunk]
            dist = torch.cdist(part, self.reference)
            nearest = dist.topk(min(self.k, dist.shape[1]), largest=False)
            means.append(nearest.values.mean(-1))
            gaps.append((part - self.reference[nearest.indices[:, 0]]).pow(2))
        return torch.cat(means), torch.cat(gaps)


MIN_PROTOTYPE_ROWS = 2  # a prototype is the mean of at least this many training rows


def kmeans_prototypes(x: np.ndarray, n_prototypes: int, seed: int) -> np.ndarray:
    """At most `n_prototypes` k-means centroids of the rows of x (N, F), as float32, instead of rows.

    MiniBatchKMeans (seeded, one thread so the result does not depend on the machine's thread
    count) places the centres; each kept centre is then the exact mean of the rows assigned to it,
    and a centre with fewer than MIN_PROTOTYPE_ROWS rows is dropped, so no prototype is one row
    (it equals a training row only where every row averaged into it is that same row, duplicated).
    """
    from sklearn.cluster import MiniBatchKMeans
    from threadpoolctl import threadpool_limits

    x64 = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    n_clusters = max(1, min(int(n_prototypes), len(x64) // MIN_PROTOTYPE_ROWS))
    with threadpool_limits(1):
        km = MiniBatchKMeans(n_clusters=n_clusters, random_state=seed, n_init=1, batch_size=2048,
                             max_iter=100).fit(x64)
        labels = km.predict(x64)
    counts = np.bincount(labels, minlength=n_clusters)
    sums = np.zeros((n_clusters, x64.shape[1]))
    np.add.at(sums, labels, x64)
    keep = counts >= MIN_PROTOTYPE_ROWS  # never empty: the counts sum to N >= 2 * n_clusters
    return (sums[keep] / counts[keep, None]).astype(np.float32)
