"""Several dense autoencoders of one shape run as one: their layers stacked, one batched product each.

An ensemble's members are small (a few thousand weights): scoring one row with each in turn costs
mostly per-operation overhead (about 0.3 ms a member on one CPU thread), which running them as one
stack pays once. `StackedAutoencoders.of(members)` builds the stack when every member is a dense
`Autoencoder` (Linear and exact-GELU layers, no corruption at scoring time) of one shape, else None.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import erf
from torch import nn

from anomaly_ae.models.autoencoder import Autoencoder


class StackedAutoencoders:
    """The members' Linear layers as (members, in, out) weights; computes only, holds no parameters."""

    def __init__(self, weights: list[torch.Tensor], biases: list[torch.Tensor], activations: list[bool]) -> None:
        self.weights = weights          # per Linear layer: (members, in, out)
        self.biases = biases            # per Linear layer: (members, 1, out)
        self.activations = activations  # per Linear layer: GELU after it
        self._numpy: list[tuple[np.ndarray, np.ndarray]] | None = None  # the same as numpy arrays, on first use

    @classmethod
    def of(cls, members: Sequence[nn.Module]) -> "StackedAutoencoders | None":
        layouts = [_dense_layers(m) for m in members]
        if len(members) < 2 or any(layout is None for layout in layouts):
            return None
        shapes = {tuple((tuple(linear.weight.shape), act) for linear, act in layout) for layout in layouts}  # type: ignore[union-attr]
        if len(shapes) != 1:
            return None
        first = layouts[0]
        assert first is not None
        weights = [torch.stack([layout[i][0].weight.detach().T for layout in layouts]) for i in range(len(first))]  # type: ignore[index]
        biases = [torch.stack([layout[i][0].bias.detach()[None] for layout in layouts]) for i in range(len(first))]  # type: ignore[index]
        return cls(weights, biases, [act for _, act in first])

    def feature_errors(self, x: torch.Tensor) -> torch.Tensor:
        """(members, N, F) squared reconstruction errors of x (N, F): each member's `feature_errors`."""
        h = x.expand(len(self.weights[0]), *x.shape)
        for weight, bias, activation in zip(self.weights, self.biases, self.activations):
            h = torch.baddbmm(bias, h, weight)
            if activation:
                h = F.gelu(h)
        return (h - x).pow(2)

    def feature_errors_numpy(self, x: np.ndarray) -> np.ndarray:
        """`feature_errors` of float32 rows x (N, F) on the CPU in numpy, the same to float32 rounding:
        for a few rows (a 1-row request) torch's per-operation overhead is most of the cost (0.10 against
        0.04 ms for one row through the default's three members, one thread)."""
        if self._numpy is None:
            self._numpy = [(w.cpu().numpy(), b.cpu().numpy()) for w, b in zip(self.weights, self.biases)]
        h = x
        for (weight, bias), activation in zip(self._numpy, self.activations):
            h = h @ weight + bias  # (N, in) or (members, N, in) @ (members, in, out): (members, N, out)
            if activation:  # exact GELU, as nn.GELU()
                h = 0.5 * h * (1.0 + erf(h * np.float32(1 / np.sqrt(2))))
        return np.square(h - x)


def _dense_layers(member: nn.Module) -> list[tuple[nn.Linear, bool]] | None:
    """A dense autoencoder's Linear layers in order, each with whether an exact GELU follows it."""
    if type(member) is not Autoencoder:
        return None
    modules = [*member.encoder, *member.decoder] if isinstance(member.encoder, nn.Sequential) \
        and isinstance(member.decoder, nn.Sequential) else []
    layers: list[tuple[nn.Linear, bool]] = []
    for module in modules:
        if isinstance(module, nn.Linear) and module.bias is not None:
            layers.append((module, False))
        elif isinstance(module, nn.GELU) and module.approximate == "none" and layers and not layers[-1][1]:
            layers[-1] = (layers[-1][0], True)
        else:
            return None
    return layers or None
