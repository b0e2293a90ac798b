"""Distance to the nearest training samples: density evidence that reconstruction error misses.

An autoencoder flags what lies off the normal manifold; a rare point *on* it (a sparse region of
normal behaviour) reconstructs well but is far from its neighbours. The reference rows are kept as
a buffer, so they travel in the safetensors file like any weight.
"""

from __future__ import annotations

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
