"""Deterministic autoencoders: undercomplete (ae), denoising (dae) and sparse (sae), dense or conv."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anomaly_ae.models.base import ScoredModule
from anomaly_ae.models.layers import ConvDecoder, ConvEncoder, mlp


def make_encoder_decoder(input_shape: tuple[int, ...], hidden_dims: list[int], code_dim: int,
                         decoder_in: int | None = None) -> tuple[nn.Module, nn.Module]:
    """Dense stacks for (F,) input, conv stacks for (C, H, W) input."""
    decoder_in = decoder_in or code_dim
    if len(input_shape) == 1:
        d = input_shape[0]
        return mlp([d, *hidden_dims, code_dim]), mlp([decoder_in, *reversed(hidden_dims), d])
    channels, height, width = input_shape
    encoder = ConvEncoder(channels, height, width, code_dim)
    return encoder, ConvDecoder(encoder, decoder_in, channels)


class Autoencoder(ScoredModule):
    """x -> code -> reconstruction, trained on mean squared error.

    corruption='gaussian' or 'mask' makes it a denoising autoencoder (noise only while training);
    l1 > 0 adds an L1 penalty on the code, making it a sparse autoencoder.
    """

    def __init__(self, input_shape: tuple[int, ...], latent_dim: int, hidden_dims: list[int],
                 corruption: str | None = None, noise: float = 0.2, l1: float = 0.0) -> None:
        super().__init__()
        if corruption not in (None, "gaussian", "mask"):
            raise ValueError(f"corruption must be None, 'gaussian' or 'mask', got {corruption!r}")
        self.corruption, self.noise, self.l1 = corruption, noise, l1
        self.encoder, self.decoder = make_encoder_decoder(input_shape, hidden_dims, latent_dim)

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.corruption is None:
            return x
        if self.corruption == "gaussian":
            return x + self.noise * torch.randn_like(x)
        return x * (torch.rand_like(x) >= self.noise)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        code = self.encoder(self.corrupt(x))
        return self.decoder(code), code

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        recon, code = self(x)
        loss = F.mse_loss(recon, x)
        if self.l1 > 0:
            loss = loss + self.l1 * code.abs().mean()
        return loss

    @torch.no_grad()
    def feature_errors(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-feature squared reconstruction error, the raw material of its score and explanation."""
        recon, _ = self(x)
        return {"errors": (recon - x).pow(2).flatten(1)}
