"""β-VAE with a Gaussian decoder whose per-feature scale is learned, so the ELBO is a real likelihood.

Scores: reconstruction error at the posterior mean, the negative ELBO, and the negative k-sample
importance-weighted bound (IWAE), which is never looser than the ELBO.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from anomaly_ae.models.autoencoder import make_encoder_decoder
from anomaly_ae.models.base import ScoredModule

LOG_2PI = math.log(2 * math.pi)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) in closed form, summed over latent dimensions."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(x; mean, exp(log_scale)^2)."""
    return -0.5 * ((x - mean) / log_scale.exp()).pow(2) - log_scale - 0.5 * LOG_2PI


class VAE(ScoredModule):
    score_types = ("elbo", "recon", "iwae")
    sampled_scores = frozenset({"elbo", "iwae"})

    def __init__(self, input_shape: tuple[int, ...], latent_dim: int, hidden_dims: list[int],
                 beta: float = 1.0) -> None:
        super().__init__()
        self.beta = beta
        self.latent_dim = latent_dim
        self.encoder, self.decoder = make_encoder_decoder(input_shape, hidden_dims, 2 * latent_dim, latent_dim)
        # One learned scale per input feature (pixel), shared across samples.
        self.log_scale = nn.Parameter(torch.zeros(input_shape))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        return mu, logvar.clamp(-12.0, 8.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def log_scale_clamped(self) -> torch.Tensor:
        return self.log_scale.clamp(-5.0, 3.0)

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
        """z = mu + eps * sigma; eps ~ N(0, I) unless given, so gradients flow through mu and sigma."""
        eps = torch.randn_like(mu) if eps is None else eps
        return mu + eps * (0.5 * logvar).exp()

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        mu, logvar = self.encode(x)
        # Sample while training; the posterior mean in eval keeps early stopping noise-free.
        z = self.reparameterize(mu, logvar) if self.training else mu
        nll = -gaussian_log_prob(x, self.decode(z), self.log_scale_clamped()).flatten(1).sum(-1)
        return (nll + self.beta * gaussian_kl(mu, logvar)).mean() / x[0].numel()

    # Scoring takes its noise as `eps` (K, latent_dim), the same draws for every row: a row's score
    # then depends on the row alone, not on its batch or position, and is reproducible from a seed.
    @torch.no_grad()
    def elbo_terms(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-feature expected negative log-likelihood (N, F) and the KL (N,), over the K draws."""
        mu, logvar = self.encode(x)
        nll = torch.zeros_like(x.flatten(1))
        for e in eps:
            z = self.reparameterize(mu, logvar, e.expand_as(mu))
            nll += -gaussian_log_prob(x, self.decode(z), self.log_scale_clamped()).flatten(1)
        return nll / len(eps), gaussian_kl(mu, logvar)

    @torch.no_grad()
    def iwae_bound(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """log p(x) >= log mean_k p(x|z_k) p(z_k) / q(z_k|x), z_k ~ q(z|x); returns the bound (N,)."""
        mu, logvar = self.encode(x)
        std = (0.5 * logvar).exp()
        log_w = []
        for e in eps:
            z = self.reparameterize(mu, logvar, e.expand_as(mu))
            log_px = gaussian_log_prob(x, self.decode(z), self.log_scale_clamped()).flatten(1).sum(-1)
            log_pz = (-0.5 * z.pow(2) - 0.5 * LOG_2PI).sum(-1)
            log_qz = (-0.5 * ((z - mu) / std).pow(2) - std.log() - 0.5 * LOG_2PI).sum(-1)
            log_w.append(log_px + log_pz - log_qz)
        return torch.logsumexp(torch.stack(log_w), 0) - math.log(len(eps))

    @torch.no_grad()
    def feature_errors(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        mu, _ = self.encode(x)
        return {"errors": (self.decode(mu) - x).pow(2).flatten(1)}

    @torch.no_grad()
    def score_terms(self, x: torch.Tensor, score: str, eps: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        if score not in self.sampled_scores:
            return super().score_terms(x, score)
        nll, kl = self.elbo_terms(x, eps)
        total = nll.sum(-1) + kl if score == "elbo" else -self.iwae_bound(x, eps)
        # Without the log-scale constant each feature's term is its squared standardised misfit (>= 0).
        return total, nll - (self.log_scale_clamped() + 0.5 * LOG_2PI).flatten()
