"""Nearest-neighbour distance over a window's last steps at several lengths, one score.

A spike or a level shift stands out in a short window and is diluted in a long one; a broken
pattern or a slow change of shape shows only in a long one. No one window length fits every
metric (benchmarks/results/experiments/issue12_multiscale.md: 16, 32 or 64 steps each won on
some NASA MSL series), so each window is compared with the training windows over its last
`steps[i]` steps for every i, each distance divided by its 99th percentile on held-out normal
history (`fit_scales`), and the quotients averaged. Only the whole windows are stored (and
saved); the shorter terms are cut from them when first used.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import nn

from anomaly_ae.models.neighbors import NearestNeighbors

# Each term is divided by this quantile of its held-out normal distances: a distance at the quantile
# counts 1 whatever its length's unit, as the members of the fusion experiment were divided by their
# 1%-FPR thresholds.
SCALE_QUANTILE = 0.99
# ...but by at least this RMS gap per value (inputs are standardised: a share of one standard deviation)
# times sqrt(values): held-out windows that repeat training ones almost exactly (a noiseless periodic
# metric) put the quantile near 0, and a term divided by it turned rounding-sized gaps into alarms
# (seen on NAB's art_daily_no_noise in a run before the floor; with it, that series still has 22% of its
# normal rows flagged, against 0% by knn alone: the threshold's few calibration rows, benchmarks/timeseries/
# README.md, "The default").
MIN_SCALE_PER_VALUE = 0.01


class MultiscaleNeighbors(nn.Module):
    """Mean distance to the k nearest training windows over each of `steps` last steps (the longest
    is the whole window), each divided by its `scales` entry, averaged over the lengths."""

    def __init__(self, input_shape: tuple[int, ...], n_reference: int, k: int, steps: Sequence[int]) -> None:
        super().__init__()
        self.steps = sorted({int(s) for s in steps})
        n_inputs = math.prod(input_shape)
        if not self.steps or self.steps[0] < 1 or n_inputs % self.steps[-1]:
            raise ValueError(f"steps {list(steps)} do not divide windows of {n_inputs} values")
        self.n_features = n_inputs // self.steps[-1]
        self.k = k
        self.whole = NearestNeighbors(tuple(input_shape), n_reference, k)
        # float32: Apple's "mps" device holds no float64 tensor (the division is done in float64)
        self.register_buffer("scales", torch.ones(len(self.steps)))
        self._cut: tuple[tuple[int, int, str], list[NearestNeighbors]] | None = None

    @property
    def reference(self) -> torch.Tensor:
        """The whole training windows (n, window x features): what is saved."""
        return self.whole.reference

    @torch.no_grad()
    def set_reference(self, x: torch.Tensor) -> None:
        self.whole.set_reference(x)

    def terms(self) -> list[NearestNeighbors]:
        """One neighbour term per length, shortest first: the shorter ones hold the last steps of the
        whole windows, cut on first use and again whenever the reference changes (or moves)."""
        reference = self.whole.reference
        key = (reference.data_ptr(), reference._version, str(reference.device))
        cut = self._cut
        if cut is None or cut[0] != key:
            terms = []
            for steps in self.steps[:-1]:
                term = NearestNeighbors((steps * self.n_features,), len(reference), self.k).to(reference.device)
                term.set_reference(reference[:, reference.shape[1] - steps * self.n_features:])
                terms.append(term)
            cut = (key, [*terms, self.whole])
            self._cut = cut  # one assignment: concurrent requests see the old or the new list, whole
        return cut[1]

    @torch.no_grad()
    def fit_scales(self, held_out: Sequence[np.ndarray]) -> None:
        """Each length's scale: the SCALE_QUANTILE of its distances on held-out normal windows (N, window x
        features), one array per length, shortest first (a short length can take more of the held-out
        history: `SeriesDetector`), at least MIN_SCALE_PER_VALUE x sqrt(the term's values)."""
        scales = []
        for term, steps, windows in zip(self.terms(), self.steps, held_out, strict=True):
            flat = np.asarray(windows, dtype=np.float32).reshape(len(windows), -1)
            distances, _ = term.numpy_distances(flat[:, flat.shape[1] - steps * self.n_features:])
            value = float(np.quantile(distances, SCALE_QUANTILE)) if len(distances) else 0.0
            scales.append(max(value, MIN_SCALE_PER_VALUE * np.sqrt(steps * self.n_features)))
        self.scales.copy_(torch.tensor(scales))

    def numpy_distances(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`NearestNeighbors.numpy_distances` of flattened windows (N, D) float32: the combined score (N,)
        and each value's share of it (N, D)."""
        return self._combine([term.numpy_distances(queries[:, queries.shape[1] - steps * self.n_features:])
                              for term, steps in zip(self.terms(), self.steps)])

    def window_distances(self, x: np.ndarray, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """`NearestNeighbors.window_distances` on the CPU (else None): each term over the windows' last
        steps, flattened for a term that has no faster way (lengths of a few steps)."""
        if self.whole.reference.device.type != "cpu":
            return None
        parts = []
        for term, steps in zip(self.terms(), self.steps):
            cut = windows[:, windows.shape[1] - steps:]
            part = term.window_distances(x, cut)
            if part is None:
                part = term.nearest(np.ascontiguousarray(x[cut].reshape(len(cut), -1), dtype=np.float32))
            parts.append(part)
        return self._combine(parts)

    def _combine(self, parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        """The mean of the scaled distances, and per value of the whole window the share it explains:
        each term's squared gaps to its nearest window, as shares of that term, weighted by the term's
        scaled distance (a term's values are the last of the window's)."""
        scales = self.scales.cpu().numpy().astype(np.float64)
        n = len(parts[0][0])
        score = np.zeros(n)
        shares = np.zeros((n, self.steps[-1] * self.n_features))
        for (distances, gaps), scale in zip(parts, scales):
            scaled = distances / scale
            score += scaled
            gaps = np.maximum(gaps, 0.0, dtype=np.float64)
            total = gaps.sum(1, keepdims=True)
            shares[:, shares.shape[1] - gaps.shape[1]:] += scaled[:, None] * np.divide(
                gaps, total, out=np.zeros_like(gaps), where=total > 0)
        return score / len(parts), shares / len(parts)

