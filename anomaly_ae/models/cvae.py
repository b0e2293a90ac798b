"""Conditional VAE for mixed tabular rows or images: q(z|x,c), p(x|z,c), with the loss beside it.

The training loop passes one tensor, so a batch is ``[flattened x | c]`` and the module splits it.
Outputs are typed by position: numeric features (``numeric_idx``) get a Gaussian likelihood whose
per-feature scale the decoder predicts per row (the spread differs between contexts), each
categorical one-hot group (``categorical_groups``) a softmax cross-entropy, and images a Bernoulli
likelihood on pixels scaled to [0, 1]. With ``cond_dim=0`` it is a plain VAE.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from anomaly_ae.models.layers import ConvDecoder, ConvEncoder, mlp
from anomaly_ae.models.vae import gaussian_kl, gaussian_log_prob


class ConditionalVAE(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], cond_dim: int, latent_dim: int, hidden_dims: list[int],
                 numeric_idx: list[int] | None = None, categorical_groups: list[list[int]] | None = None,
                 beta: float = 1.0) -> None:
        super().__init__()
        self.input_shape, self.cond_dim, self.latent_dim, self.beta = tuple(input_shape), cond_dim, latent_dim, beta
        self.image = len(self.input_shape) == 3
        self.n_inputs = math.prod(self.input_shape)
        if self.image:
            c, h, w = self.input_shape
            # The condition enters the encoder as extra constant channels, the decoder beside z.
            self.encoder = ConvEncoder(c + cond_dim, h, w, 2 * latent_dim)
            self.decoder = ConvDecoder(self.encoder, latent_dim + cond_dim, c)
        else:
            self.encoder = mlp([self.n_inputs + cond_dim, *hidden_dims, 2 * latent_dim])
        numeric_idx = list(range(self.n_inputs)) if numeric_idx is None and not self.image else (numeric_idx or [])
        self.numeric_idx = [int(i) for i in numeric_idx]
        self.categorical_groups = [[int(i) for i in g] for g in (categorical_groups or [])]
        if not self.image:
            # Beside each row's means, a log-scale per numeric feature: the spread may differ by context.
            self.decoder = mlp([latent_dim + cond_dim, *reversed(hidden_dims), self.n_inputs + len(self.numeric_idx)])

    def split(self, xc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, c = xc[:, :self.n_inputs], xc[:, self.n_inputs:]
        return x.reshape(len(x), *self.input_shape), c

    def encode(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.image:
            planes = c[:, :, None, None].expand(-1, -1, *self.input_shape[1:])
            h = self.encoder(torch.cat([x, planes], 1))
        else:
            h = self.encoder(torch.cat([x, c], 1))
        mu, logvar = h.chunk(2, dim=-1)
        return mu, logvar.clamp(-12.0, 8.0)

    def decode(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Raw decoder output: numeric means, categorical logits (then the numeric log-scales), or pixel logits."""
        return self.decoder(torch.cat([z, c], 1))

    def log_scale(self, raw: torch.Tensor) -> torch.Tensor:
        return raw[:, self.n_inputs:].clamp(-5.0, 3.0)

    def mean_output(self, raw: torch.Tensor) -> torch.Tensor:
        """Expected row in model space: means, per-group softmax probabilities, pixel probabilities."""
        if self.image:
            return torch.sigmoid(raw)
        out = raw[:, :self.n_inputs].clone()
        for g in self.categorical_groups:
            out[:, g] = torch.softmax(raw[:, g], -1)
        return out

    def sample_output(self, raw: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A draw from p(x|z,c): Gaussian noise at the learned scale, one category per group."""
        if self.image:
            return torch.sigmoid(raw)  # the mean image: Bernoulli pixel noise only adds speckle
        out = raw[:, :self.n_inputs].clone()
        if self.numeric_idx:
            noise = torch.randn(len(raw), len(self.numeric_idx), generator=generator).to(raw.device)
            out[:, self.numeric_idx] = raw[:, self.numeric_idx] + noise * self.log_scale(raw).exp()
        for g in self.categorical_groups:
            pick = torch.multinomial(torch.softmax(raw[:, g], -1).cpu(), 1, generator=generator).to(raw.device)
            out[:, g] = F.one_hot(pick[:, 0], len(g)).to(out.dtype)
        return out

    def reconstruction_nll(self, x: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood of x under p(x|z,c), per row."""
        if self.image:
            return F.binary_cross_entropy_with_logits(raw, x.clamp(0, 1), reduction="none").flatten(1).sum(-1)
        nll = torch.zeros(len(x), device=x.device)
        if self.numeric_idx:
            idx = self.numeric_idx
            nll = nll - gaussian_log_prob(x[:, idx], raw[:, idx], self.log_scale(raw)).sum(-1)
        for g in self.categorical_groups:
            nll = nll + F.cross_entropy(raw[:, g], x[:, g].argmax(-1), reduction="none")
        return nll

    def loss(self, xc: torch.Tensor) -> torch.Tensor:
        x, c = self.split(xc)
        mu, logvar = self.encode(x, c)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        nll = self.reconstruction_nll(x, self.decode(z, c))
        return (nll + self.beta * gaussian_kl(mu, logvar)).mean() / self.n_inputs
