"""What every scoring model offers the scoring code, so scoring never asks which class it has."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class ScoredModule(nn.Module):
    """A model that turns a batch into one anomaly score per row and per-feature contributions.

    Subclasses define `feature_errors(x) -> {"errors": (N, F) squared errors, ...}`.

    `score_types` lists the scores it offers, its default first. Scores in `sampled_scores` take
    fixed latent draws `eps` (K, latent_dim), the same for every row, so a row's score depends on
    the row alone. `closed_form` models are fitted by `fit_closed_form` instead of the training loop.
    """

    score_types: tuple[str, ...] = ("recon",)
    sampled_scores: frozenset[str] = frozenset()
    closed_form = False
    adversarial = False  # True: the training loop adds a second optimiser (see training.py)

    def score_terms(self, x: torch.Tensor, score: str, eps: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(score (N,), per-feature contributions (N, F)); the default is mean squared reconstruction error."""
        errors = self.feature_errors(x)["errors"]
        return errors.mean(-1), errors

    def prepare(self, x_train: torch.Tensor) -> None:
        """Set any data-dependent state before training (e.g. per-feature noise scales; most models have none)."""

    def calibrate_score(self, x_val: torch.Tensor) -> None:
        """Fit any score-scaling state on held-out normal rows after training (most models have none)."""

    def fit_closed_form(self, x: torch.Tensor, **options: Any) -> None:
        raise TypeError(f"{type(self).__name__} is trained by gradient descent, not in closed form")
