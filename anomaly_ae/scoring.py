"""Batched, gradient-free scoring: the one place where numpy arrays become tensors and back.

`ModelScorer` holds a fitted detector's modules (an ensemble of networks, optionally the
nearest-neighbour term) and turns preprocessed rows into one score per row (higher = more
anomalous) and a per-feature contribution matrix that explanations are built from. Which score a
module computes is the module's business (`ScoredModule.score_terms`).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from anomaly_ae.exceptions import InvalidParameterError
from anomaly_ae.models.base import ScoredModule
from anomaly_ae.models.multiscale import MultiscaleNeighbors
from anomaly_ae.models.neighbors import NearestNeighbors
from anomaly_ae.models.stacked import StackedAutoencoders


# The score of a detector that is the neighbour term alone (model "knn").
NEIGHBOR_SCORE = "distance"


def check_score_type(model: ScoredModule, score: str) -> None:
    if score not in model.score_types:
        raise InvalidParameterError(f"score {score!r} is not available for {type(model).__name__}; "
                         f"choose one of {sorted(model.score_types)}")


def latent_noise(model: ScoredModule, score: str, n_samples: int, seed: int, device: torch.device
                 ) -> torch.Tensor | None:
    """The fixed draws a sampled score uses: reproducible from the seed, shared by every row."""
    if score not in model.sampled_scores:
        return None
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n_samples, model.latent_dim, generator=generator).to(device)


@torch.inference_mode()  # like no_grad, minus version counters: ~30% less per-call overhead on small batches
def score_array(model: ScoredModule, x: np.ndarray, score: str, device: torch.device, eps: torch.Tensor | None,
                batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(score (N,), per-feature contributions (N, F)) of one module, in batches."""
    if model.training:  # eval() walks every submodule: a sizeable share of a 1-row call
        model.eval()
    return _in_batches(lambda batch: model.score_terms(batch, score, eps), x, device, batch_size)


@torch.inference_mode()
def stacked_score_array(stack: StackedAutoencoders, x: np.ndarray, device: torch.device, batch_size: int = 4096
                        ) -> tuple[np.ndarray, np.ndarray]:
    """`score_array` averaged over the stacked members: (mean score (N,), mean contributions (N, F))."""
    def terms(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        errors = stack.feature_errors(batch)  # (members, N, F)
        return errors.mean(-1).double().mean(0), errors.double().mean(0)

    return _in_batches(terms, x, device, batch_size)


def _in_batches(terms: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], x: np.ndarray,
                device: torch.device, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    totals, contributions = [], []
    for start in range(0, max(len(x), 1), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(x[start:start + batch_size])).to(device)
        total, contrib = terms(batch)
        totals.append(total.cpu().double().numpy())
        contributions.append(contrib.cpu().double().numpy())
    if len(totals) == 1:  # the common case (and the service's): no copy
        return totals[0], contributions[0]
    return np.concatenate(totals), np.concatenate(contributions)


# Up to this many rows a stack of dense members is scored in numpy (`feature_errors_numpy`): 30 against
# 51 us for 1 row of the default, 47 against 61 for 4, and slower than torch from about 16.
NUMPY_MAX_ROWS = 4


def location_spread(values: np.ndarray) -> list[float]:
    """Median and the 90th-percentile distance above it: a robust scale for one score term. Where 90% of the
    values equal the median (discrete data whose rows have k exact duplicates in the reference: distance 0),
    the mean distance from the median instead: a spread of ~0 made every other row's term ~1e12, and every
    flagged row critical; and 1 where all of them are equal. (None of the 28 ADBench dev sets is such a case.)"""
    median = float(np.median(values))
    spread = float(np.quantile(values, 0.9)) - median
    if spread <= 0:
        spread = float(np.mean(np.abs(values - median)))
    # every held-out value the same (all rows duplicated in the reference): the inputs' own unit, as the
    # terms are errors and distances between standardised rows
    return [median, spread if spread > 1e-12 else 1.0]


class ModelScorer:
    """Scores preprocessed rows with a fitted detector's modules.

    The members' scores are averaged. With a neighbour term, both terms are standardised by their
    `term_scales` (median and spread on held-out normals) and added, and each row's feature shares
    blend the terms' own shares by how far each term lies above normal. Without members the score
    is the neighbour distance itself.
    """

    def __init__(self, members: Sequence[ScoredModule], score_type: str, *, device: torch.device,
                 n_samples: int, seed: int, neighbors: NearestNeighbors | MultiscaleNeighbors | None = None,
                 term_scales: dict[str, list[float]] | None = None) -> None:
        self.members = list(members)
        self.score_type = score_type
        self.device = device
        self.neighbors = neighbors
        self.term_scales = term_scales or {}
        self._eps = [latent_noise(m, score_type, n_samples, seed, device) for m in self.members]
        # listed once: walking the modules for them cost 0.13 ms of a 1-row request
        self._parameters = [p for member in self.members for p in member.parameters()]

    def member_scores(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        stack = self._stack()
        if stack is not None and len(x) <= NUMPY_MAX_ROWS and self.device.type == "cpu":
            errors = stack.feature_errors_numpy(np.asarray(x, dtype=np.float32))  # (members, N, F)
            return errors.mean(-1).astype(np.float64).mean(0), errors.astype(np.float64).mean(0)
        if stack is not None:
            return stacked_score_array(stack, x, self.device)
        totals, contributions = 0.0, 0.0
        for member, eps in zip(self.members, self._eps):
            total, contrib = score_array(member, x, self.score_type, self.device, eps)
            totals, contributions = totals + total, contributions + contrib
        return totals / len(self.members), contributions / len(self.members)

    def _stack(self) -> StackedAutoencoders | None:
        """The members as one stack when they are dense autoencoders of one shape (the default's three),
        built on first use and again whenever their weights change (in place, or moved: a tensor's
        version or address)."""
        key = tuple((p.data_ptr(), p._version) for p in self._parameters)
        if getattr(self, "_stack_key", None) != key:
            self._stacked = StackedAutoencoders.of(self.members) if self.score_type == "recon" else None
            self._stack_key = key
        return self._stacked

    def neighbor_distances(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert self.neighbors is not None
        distance, gaps = self.neighbors.numpy_distances(np.asarray(x, dtype=np.float32).reshape(len(x), -1))
        return distance, gaps.astype(np.float64)

    def add_neighbors(self, neighbors: NearestNeighbors | MultiscaleNeighbors, x_val: np.ndarray) -> None:
        """Add the neighbour term, scaling both terms on held-out normal rows `x_val` (a
        `MultiscaleNeighbors`' own scales are SeriesDetector's to fit)."""
        self.neighbors = neighbors
        if not self.members:
            return
        model_val, _ = self.member_scores(x_val)
        knn_val, _ = self.neighbor_distances(x_val)
        self.term_scales = {"model": location_spread(model_val), "neighbors": location_spread(knn_val)}

    def score_windows(self, x: np.ndarray, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """`score` of flattened windows given as preprocessed rows x (N, F) and row indices (b, window),
        when there is a faster way than flattening them (the neighbour term alone over sliding
        reference windows, on the CPU); None otherwise."""
        if self.members or self.neighbors is None:
            return None
        return self.neighbors.window_distances(x, windows)

    def score(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(scores (N,), per-feature contributions (N, F)) for preprocessed rows."""
        if not self.members:
            return self.neighbor_distances(x)
        model_scores, model_contrib = self.member_scores(x)
        if self.neighbors is None:
            return model_scores, model_contrib
        distance, gaps = self.neighbor_distances(x)
        z_model = _standardize(model_scores, self.term_scales["model"])
        z_knn = _standardize(distance, self.term_scales["neighbors"])
        w_model, w_knn = np.maximum(z_model, 0.0)[:, None], np.maximum(z_knn, 0.0)[:, None]
        both_zero = (w_model + w_knn) == 0
        w_model, w_knn = np.where(both_zero, 1.0, w_model), np.where(both_zero, 1.0, w_knn)
        contributions = w_model * _row_normalize(model_contrib) + w_knn * _row_normalize(gaps)
        return z_model + z_knn, contributions


def _standardize(values: np.ndarray, location_spread: list[float]) -> np.ndarray:
    return (values - location_spread[0]) / location_spread[1]


def _row_normalize(values: np.ndarray) -> np.ndarray:
    values = np.maximum(values, 0.0)
    total = values.sum(1, keepdims=True)
    return np.divide(values, total, out=np.zeros_like(values), where=total > 0)
