"""PCA as a linear autoencoder with closed-form weights: the baseline every deep model must beat."""

from __future__ import annotations

import math

import torch
from anomaly_ae.models.base import ScoredModule


class PCA(ScoredModule):
    """Projects onto the top principal components and back; fitted by SVD, not by gradient descent."""

    closed_form = True

    def __init__(self, input_shape: tuple[int, ...], n_components: int) -> None:
        super().__init__()
        d = math.prod(input_shape)
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("components", torch.zeros(n_components, d))

    @torch.no_grad()
    def fit_closed_form(self, x: torch.Tensor, *, variance_kept: float = 0.9, **_: object) -> None:
        """Keep the fewest components that explain `variance_kept` of the training variance, leaving at
        least one direction out."""
        flat = x.flatten(1).double()
        mean = flat.mean(0)
        centred = flat - mean
        if centred.shape[0] > 2 * centred.shape[1]:
            # many more rows than inputs (flattened windows: 8,000 x 2,432): the eigenvectors of the
            # scatter matrix are the same components, at a fraction of the SVD's cost (20 s -> 2 s)
            eigenvalues, vectors = torch.linalg.eigh(centred.T @ centred)
            variance, vt = eigenvalues.flip(0).clamp_min(0.0), vectors.flip(1).T
        else:
            _, s, vt = torch.linalg.svd(centred, full_matrices=False)
            variance = s**2
        ratio = variance.cumsum(0) / variance.sum().clamp_min(1e-12)
        kept = torch.tensor(variance_kept, dtype=ratio.dtype, device=ratio.device)
        k = int(torch.searchsorted(ratio, kept).item()) + 1
        # fewer components than the data's rank: with all of them kept every row reconstructs exactly and
        # the score is rounding noise (a few uncorrelated inputs need them all for 90% of the variance; a
        # categorical column's one-hot group takes one from the rank, as its indicators sum to 1)
        rank = int((variance > variance.max().clamp_min(1e-300) * 1e-10).sum())
        k = min(k, self.components.shape[0], vt.shape[0], max(rank - 1, 1))
        components = torch.zeros_like(self.components)
        components[:k] = vt[:k].to(components.dtype)
        self.mean.copy_(mean.to(self.mean.dtype))
        self.components.copy_(components)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1) - self.mean
        return ((flat @ self.components.T) @ self.components + self.mean).view_as(x)

    @torch.no_grad()
    def feature_errors(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"errors": (self(x) - x).pow(2).flatten(1)}
