"""Building blocks shared by the model families: dense stacks and a small conv encoder/decoder."""

from __future__ import annotations

import math

import torch
from torch import nn


def mlp(sizes: list[int], final_activation: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or final_activation:
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


def default_latent_dim(n_features: int) -> int:
    """Undercomplete by construction: about sqrt(d)+1, at least 1 and always below d."""
    return max(1, min(n_features - 1, 32, round(math.sqrt(n_features)) + 1))


def default_hidden_dims(n_features: int, latent_dim: int) -> list[int]:
    """Two hidden layers that shrink from the input towards the code, capped for very wide inputs."""
    first = min(256, max(2 * latent_dim, 2 * n_features, 16))
    second = max(latent_dim + 1, first // 2)
    return [first, second]


class ConvEncoder(nn.Module):
    """(N, C, H, W) -> (N, out_dim). Halves the resolution up to twice, as far as H and W allow."""

    def __init__(self, channels: int, height: int, width: int, out_dim: int, base: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, base, 3, padding=1), nn.GELU()]
        c, h, w = base, height, width
        self.n_down = 0
        while self.n_down < 2 and h % 2 == 0 and w % 2 == 0 and h >= 4 and w >= 4:
            layers += [nn.Conv2d(c, c * 2, 3, stride=2, padding=1), nn.GELU()]
            c, h, w = c * 2, h // 2, w // 2
            self.n_down += 1
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.feature_shape = (c, h, w)
        self.head = nn.Linear(c * h * w, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class ConvDecoder(nn.Module):
    """(N, in_dim) -> (N, C, H, W), the mirror image of a ConvEncoder."""

    def __init__(self, encoder: ConvEncoder, in_dim: int, channels: int) -> None:
        super().__init__()
        c, h, w = encoder.feature_shape
        self.shape = (c, h, w)
        self.head = nn.Linear(in_dim, c * h * w)
        layers: list[nn.Module] = []
        for _ in range(encoder.n_down):
            layers += [nn.GELU(), nn.Upsample(scale_factor=2), nn.Conv2d(c, c // 2, 3, padding=1)]
            c //= 2
        layers += [nn.GELU(), nn.Conv2d(c, channels, 3, padding=1)]
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(self.head(z).view(-1, *self.shape))
