"""Diffusion-scheduled denoising autoencoder (DDAE, Sattarov et al., KDD 2025).

Training noises a row to level t of a diffusion schedule, x_t = sqrt(abar_t) x + sqrt(1 - abar_t) eps
(linear beta 1e-4..0.02 over T = 50 steps), and an MLP without a bottleneck, which sees x_t and an
embedding of t, predicts the clean x; t is drawn uniformly. The score is the reconstruction error
(L2 norm) averaged over every level, each level with ONE fixed noise vector drawn when the model is
built (from the fit's seed) and saved with the weights: a row's score depends on the row alone.
noise_scale="kurtosis" widens each feature's noise by clip(sqrt(kurtosis / 3), 0.5, 3) (K-DSM idea).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from anomaly_ae.models.base import ScoredModule

NOISE_SCALES = ("uniform", "kurtosis")
CLIP = 1e4  # as the preprocessor's: finite squared errors in float32 for any finite input


def sinusoidal(steps: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = steps.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], -1)


class DDAE(ScoredModule):
    score_types = ("recon",)

    def __init__(self, input_shape: tuple[int, ...], hidden_dims: list[int], n_steps: int = 50,
                 beta_start: float = 1e-4, beta_end: float = 0.02, time_dim: int = 8,
                 noise_scale: str = "uniform") -> None:
        super().__init__()
        if noise_scale not in NOISE_SCALES:
            raise ValueError(f"noise_scale must be one of {NOISE_SCALES}, got {noise_scale!r}")
        d = math.prod(input_shape)
        self.n_steps, self.noise_scale = n_steps, noise_scale
        sizes = [d + time_dim, *hidden_dims]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.LeakyReLU()]
        self.net = nn.Sequential(*layers, nn.Linear(sizes[-1], d))  # no bottleneck: widths >= d by default
        abar = torch.cumprod(1.0 - torch.linspace(beta_start, beta_end, n_steps), 0)
        self.register_buffer("signal", abar.sqrt(), persistent=False)
        self.register_buffer("spread", (1.0 - abar).sqrt(), persistent=False)
        self.register_buffer("embedding", sinusoidal(torch.arange(n_steps), time_dim), persistent=False)
        self.register_buffer("feature_scale", torch.ones(d))  # per-feature noise width (1 unless kurtosis)
        self.register_buffer("score_noise", torch.randn(n_steps, d))  # fixed draws: one per level, saved

    def prepare(self, x_train: torch.Tensor) -> None:
        if self.noise_scale == "kurtosis":
            x = x_train.flatten(1).double()
            centred = x - x.mean(0)
            m2, m4 = centred.pow(2).mean(0), centred.pow(4).mean(0)
            kurt = torch.where(m2 > 0, m4 / m2.clamp_min(1e-300).pow(2), torch.full_like(m2, 3.0))
            self.feature_scale.copy_((kurt / 3.0).sqrt().clamp(0.5, 3.0).float())

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x_t, self.embedding[t]], 1))

    def noised(self, x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return self.signal[t, None] * x + self.spread[t, None] * eps * self.feature_scale

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        if self.training:
            t = torch.randint(0, self.n_steps, (len(x),), device=x.device)
            eps = torch.randn_like(x)
        else:  # a noise-free held-out loss: row i at level i mod T with that level's fixed draw
            t = torch.arange(len(x), device=x.device) % self.n_steps
            eps = self.score_noise[t]
        return F.mse_loss(self.denoise(self.noised(x, t, eps), t), x)

    @torch.no_grad()
    def level_errors(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """(N, F) squared errors of the clean row predicted from its fixed draw at level t."""
        steps = torch.full((len(x),), t, dtype=torch.long, device=x.device)
        return (self.denoise(self.noised(x, steps, self.score_noise[steps]), steps) - x).pow(2)

    @torch.no_grad()
    def feature_errors(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = x.flatten(1).clamp(-CLIP, CLIP)
        return {"errors": sum(self.level_errors(x, t) for t in range(self.n_steps)) / self.n_steps}

    @torch.no_grad()
    def score_terms(self, x: torch.Tensor, score: str, eps: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean over levels of ||x - x_hat_t||; feature f contributes e_tf / ||e_t|| at each level,
        so the contributions are >= 0 and sum to the score."""
        x = x.flatten(1).clamp(-CLIP, CLIP)
        total, contributions = torch.zeros(len(x), device=x.device), torch.zeros_like(x)
        for t in range(self.n_steps):
            errors = self.level_errors(x, t)
            norm = errors.sum(-1).sqrt()
            total += norm
            contributions += errors / norm.clamp_min(1e-30)[:, None]
        return total / self.n_steps, contributions / self.n_steps
