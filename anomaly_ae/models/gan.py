"""(Conditional) Wasserstein GAN with gradient penalty (Gulrajani et al. 2017), tabular or image.

The generator maps noise (and a condition) to a row in the preprocessed space: numeric features
are linear outputs, each categorical one-hot group a Gumbel-softmax (soft while training so
gradients flow, a hard one-hot draw at sampling), images are sigmoid pixels in [0, 1]. The critic
scores (row, condition) pairs; WGAN-GP keeps it 1-Lipschitz by penalising its gradient norm on
random interpolates, which is what makes training stable without hand tuning.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from anomaly_ae.models.layers import ConvEncoder, mlp


class GAN(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], cond_dim: int, noise_dim: int, hidden_dims: list[int],
                 categorical_groups: list[list[int]] | None = None, tau: float = 0.2) -> None:
        super().__init__()
        self.input_shape, self.cond_dim, self.noise_dim, self.tau = tuple(input_shape), cond_dim, noise_dim, tau
        self.image = len(self.input_shape) == 3
        self.n_inputs = math.prod(self.input_shape)
        self.categorical_groups = [[int(i) for i in g] for g in (categorical_groups or [])]
        if self.image:
            c, h, w = self.input_shape
            self.base = (hidden_dims[0], h // 2, w // 2) if h % 2 == 0 and w % 2 == 0 else (hidden_dims[0], h, w)
            ch, bh, bw = self.base
            up = [nn.Upsample(scale_factor=2)] if (bh, bw) != (h, w) else []
            self.generator = nn.Sequential(
                nn.Linear(noise_dim + cond_dim, ch * bh * bw), nn.GELU(), nn.Unflatten(1, self.base),
                *up, nn.Conv2d(ch, ch // 2, 3, padding=1), nn.GELU(), nn.Conv2d(ch // 2, c, 3, padding=1))
            # No normalisation layers in the critic: the gradient penalty is per sample.
            self.critic_features = ConvEncoder(c + cond_dim, h, w, hidden_dims[-1])
            self.critic_head = nn.Sequential(nn.GELU(), nn.Linear(hidden_dims[-1], 1))
        else:
            self.generator = mlp([noise_dim + cond_dim, *hidden_dims, self.n_inputs])
            self.critic_features = mlp([self.n_inputs + cond_dim, *reversed(hidden_dims)], final_activation=True)
            self.critic_head = nn.Linear(hidden_dims[0], 1)

    def generator_parameters(self) -> list[nn.Parameter]:
        return list(self.generator.parameters())

    def critic_parameters(self) -> list[nn.Parameter]:
        return [*self.critic_features.parameters(), *self.critic_head.parameters()]

    def generate(self, noise: torch.Tensor, c: torch.Tensor, hard: bool = False,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Rows in model space (images as (N, C, H, W)); hard=True draws one category per group."""
        raw = self.generator(torch.cat([noise, c], 1))
        if self.image:
            return torch.sigmoid(raw)
        parts = raw.clone()
        for g in self.categorical_groups:
            logits = raw[:, g]
            if hard:
                gumbel = -torch.log(-torch.log(torch.rand(logits.shape, generator=generator).to(logits.device)
                                               .clamp(1e-10, 1 - 1e-7)))
                parts[:, g] = F.one_hot((logits + gumbel).argmax(-1), len(g)).to(raw.dtype)
            else:
                parts[:, g] = F.gumbel_softmax(logits, tau=self.tau, hard=False)
        return parts

    def critic(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if self.image:
            planes = c[:, :, None, None].expand(-1, -1, *self.input_shape[1:])
            return self.critic_head(self.critic_features(torch.cat([x, planes], 1)))[:, 0]
        return self.critic_head(self.critic_features(torch.cat([x, c], 1)))[:, 0]

    # ------------------------------------------------------------------ WGAN-GP losses
    def critic_loss(self, real: torch.Tensor, c: torch.Tensor, penalty: float = 10.0
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """E[D(fake)] - E[D(real)] + penalty * E[(|grad D(interpolate)| - 1)^2]; also the W estimate."""
        noise = torch.randn(len(real), self.noise_dim, device=real.device)
        with torch.no_grad():
            fake = self.generate(noise, c)
        wasserstein = self.critic(real, c).mean() - self.critic(fake, c).mean()
        alpha = torch.rand(len(real), *([1] * (real.dim() - 1)), device=real.device)
        mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
        grad, = torch.autograd.grad(self.critic(mixed, c).sum(), mixed, create_graph=True)
        gp = (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()
        return -wasserstein + penalty * gp, wasserstein.detach()

    def generator_loss(self, c: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(len(c), self.noise_dim, device=c.device)
        return -self.critic(self.generate(noise, c), c).mean()
