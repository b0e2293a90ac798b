"""Autoencoders over windows of a metric stream: (N, window, metrics) in, the same shape out.

Both score a window by its mean squared reconstruction error, with per-(step, metric) errors as
contributions, so explanations name the metric (and the step) that the model could not explain.
The dense families (ae, vae, aae, pca) see the same windows flattened; these two see time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anomaly_ae.models.base import ScoredModule


class TemporalConvAE(ScoredModule):
    """Dilated 1-D convolutions over time, squeezed through a narrow channel code at a quarter of the
    time resolution, and transposed convolutions back: it learns the local shapes of normal windows
    (how a metric moves, which metrics move together), not only their levels."""

    def __init__(self, input_shape: tuple[int, ...], latent_dim: int, hidden_dims: list[int]) -> None:
        super().__init__()
        window, metrics = input_shape
        hidden = hidden_dims[0] if hidden_dims else 32
        self.window = window
        self.encoder = nn.Sequential(
            nn.Conv1d(metrics, hidden, 3, padding=1), nn.GELU(),
            nn.Conv1d(hidden, hidden, 3, padding=2, dilation=2, stride=2), nn.GELU(),
            nn.Conv1d(hidden, latent_dim, 3, padding=4, dilation=4, stride=2))
        self.decoder = nn.Sequential(
            nn.ConvTranspose1d(latent_dim, hidden, 4, stride=2, padding=1), nn.GELU(),
            nn.ConvTranspose1d(hidden, hidden, 4, stride=2, padding=1), nn.GELU(),
            nn.Conv1d(hidden, metrics, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.decoder(self.encoder(x.transpose(1, 2)))
        if out.shape[-1] != self.window:  # windows not divisible by 4
            out = F.interpolate(out, size=self.window, mode="linear", align_corners=False)
        return out.transpose(1, 2)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(self(x), x)

    @torch.no_grad()
    def feature_errors(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"errors": (self(x) - x).pow(2).flatten(1)}


class RecurrentAE(ScoredModule):
    """A GRU reads the window into one code; a second GRU, given the code at every step, writes the
    window back. The code must summarise the whole window's dynamics (LSTM-AE, Malhotra et al. 2016,
    with GRU cells: as accurate here and faster on CPU).

    Each recurrent step reads `steps_per_cell` consecutive time steps side by side (a window not
    divisible by it is padded with zeros, the training mean, at its oldest end): the recurrence is
    sequential, so its length sets the cost of training, and 64 one-step cells cost about 3x what
    16 four-step cells do."""

    def __init__(self, input_shape: tuple[int, ...], latent_dim: int, hidden_dims: list[int],
                 steps_per_cell: int = 1) -> None:
        super().__init__()
        window, metrics = input_shape
        hidden = hidden_dims[0] if hidden_dims else 64
        self.window = window
        self.steps_per_cell = steps_per_cell
        self.pad = -window % steps_per_cell
        self.cells = (window + self.pad) // steps_per_cell
        self.encoder = nn.GRU(metrics * steps_per_cell, hidden, batch_first=True)
        self.to_code = nn.Linear(hidden, latent_dim)
        self.decoder = nn.GRU(latent_dim, hidden, batch_first=True)
        self.to_metrics = nn.Linear(hidden, metrics * steps_per_cell)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, window, metrics = x.shape
        cells = F.pad(x, (0, 0, self.pad, 0)).reshape(n, self.cells, metrics * self.steps_per_cell)
        _, last = self.encoder(cells)
        code = self.to_code(last[-1])
        out, _ = self.decoder(code.unsqueeze(1).expand(-1, self.cells, -1).contiguous())
        return self.to_metrics(out).reshape(n, self.cells * self.steps_per_cell, metrics)[:, self.pad:]

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(self(x), x)

    @torch.no_grad()
    def feature_errors(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"errors": (self(x) - x).pow(2).flatten(1)}
