"""Adversarial autoencoder: a discriminator on the code replaces the VAE's KL term.

The encoder is trained to reconstruct and to make its codes indistinguishable from N(0, I)
samples; the score adds the code's negative log prior density to the reconstruction error, so a
sample that reconstructs well from an unlikely code is still flagged. The two terms live on
unrelated scales, so each is divided by its median on held-out normal data (`calibrate_score`)
before they are added.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anomaly_ae.models.autoencoder import make_encoder_decoder
from anomaly_ae.models.base import ScoredModule
from anomaly_ae.models.layers import mlp


class AdversarialAutoencoder(ScoredModule):
    adversarial = True
    score_types = ("recon+latent", "recon")

    def __init__(self, input_shape: tuple[int, ...], latent_dim: int, hidden_dims: list[int],
                 adversarial_weight: float = 0.1, latent_weight: float = 0.1) -> None:
        super().__init__()
        self.adversarial_weight, self.latent_weight = adversarial_weight, latent_weight
        self.encoder, self.decoder = make_encoder_decoder(input_shape, hidden_dims, latent_dim)
        width = max(16, 4 * latent_dim)
        self.discriminator = mlp([latent_dim, width, width, 1])
        self.register_buffer("term_scales", torch.ones(2))

    def autoencoder_parameters(self) -> list[nn.Parameter]:
        return [*self.encoder.parameters(), *self.decoder.parameters()]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        code = self.encoder(x)
        return self.decoder(code), code

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Autoencoder objective: reconstruct, and fool the discriminator into calling codes prior draws."""
        recon, code = self(x)
        logits = self.discriminator(code)
        fool = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        return F.mse_loss(recon, x) + self.adversarial_weight * fool

    def discriminator_loss(self, x: torch.Tensor) -> torch.Tensor:
        code = self.encoder(x).detach()
        prior = torch.randn_like(code)
        real, fake = self.discriminator(prior), self.discriminator(code)
        return (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))

    @torch.no_grad()
    def feature_errors(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        recon, code = self(x)
        # 0.5|z|^2 is the code's negative log prior density up to a constant.
        return {"errors": (recon - x).pow(2).flatten(1), "latent": 0.5 * code.pow(2).sum(-1)}

    @torch.no_grad()
    def score_terms(self, x: torch.Tensor, score: str, eps: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """"recon+latent": reconstruction + latent_weight * prior term, each over its held-out median."""
        if score == "recon":
            return super().score_terms(x, score)
        parts = self.feature_errors(x)
        recon = parts["errors"].mean(-1) / self.term_scales[0]
        return recon + self.latent_weight * parts["latent"] / self.term_scales[1], parts["errors"]

    @torch.no_grad()
    def calibrate_score(self, x_val: torch.Tensor) -> None:
        self.eval()
        parts = self.feature_errors(x_val)
        medians = torch.stack([parts["errors"].mean(-1).median(), parts["latent"].median()])
        self.term_scales.copy_(medians.clamp_min(1e-12))
