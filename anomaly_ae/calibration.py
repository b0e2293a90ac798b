"""From raw scores to decisions: a threshold at a target false-positive rate, p-values, severity.

Everything is split-conformal against scores of held-out normal samples the model never trained
on: if new normal data is exchangeable with them, P(p_value <= a) <= a and the false-positive rate
at the threshold is at most the target.
"""

from __future__ import annotations

import math
import warnings
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from anomaly_ae.exceptions import InvalidParameterError

SEVERITY_LEVELS = ("normal", "low", "medium", "high", "critical")


@dataclass
class Calibration:
    threshold: float
    target_fpr: float
    reference_scores: np.ndarray  # sorted validation-normal scores

    @classmethod
    def fit(cls, normal_scores: np.ndarray, target_fpr: float) -> "Calibration":
        if not 0.0 < target_fpr < 1.0:
            raise ValueError(f"target_fpr must be in (0, 1), got {target_fpr}")
        ref = np.sort(np.asarray(normal_scores, dtype=np.float64))
        n = len(ref)
        if n == 0:
            raise ValueError("calibration needs at least one held-out normal score")
        # The conformal quantile: the ceil((n+1)(1-a))-th smallest score. With too few held-out
        # rows for the target it is the largest one, and the achieved rate is reported.
        # In exact arithmetic (the target as the decimal it was written as): in binary floating
        # point an integer product can round up and skip to the next order statistic.
        rank = math.ceil((n + 1) * (1 - Fraction(repr(float(target_fpr)))))
        k = min(n, rank)
        if rank > n:
            warnings.warn(f"only {n} held-out normal samples calibrate the threshold, fewer than the "
                          f"{math.ceil(1 / target_fpr) - 1} that a false-positive rate of {target_fpr:g} needs: the "
                          "threshold is the largest of their scores, and new normal data may pass it more often; "
                          "fit (or recalibrate) on more normal data or raise target_fpr", UserWarning, stacklevel=3)
        return cls(threshold=float(ref[k - 1]), target_fpr=float(target_fpr), reference_scores=ref)

    @property
    def validation_fpr(self) -> float:
        return float(np.mean(self.reference_scores > self.threshold))

    @property
    def min_p_value(self) -> float:
        return 1.0 / (len(self.reference_scores) + 1)

    def p_values(self, scores: np.ndarray) -> np.ndarray:
        """(1 + #reference scores >= s) / (n + 1): the share of normals at least this anomalous."""
        ref = self.reference_scores
        at_least = len(ref) - np.searchsorted(ref, np.asarray(scores, dtype=np.float64), side="left")
        return (1.0 + at_least) / (len(ref) + 1.0)

    def predict(self, scores: np.ndarray) -> np.ndarray:
        return (np.asarray(scores) > self.threshold).astype(np.int64)

    def severity(self, scores: np.ndarray) -> np.ndarray:
        """normal below the threshold; above it, by how many threshold-to-median gaps it lies beyond
        the typical normal score: <2 low, <4 medium, <8 high, else critical."""
        scores = np.asarray(scores, dtype=np.float64)
        median = self._median()
        gap = max(self.threshold - median, 1e-12)
        ratio = (scores - median) / gap
        level = np.searchsorted(np.array([2.0, 4.0, 8.0]), ratio, side="right") + 1
        level = np.where(scores > self.threshold, level, 0)
        return np.asarray(SEVERITY_LEVELS, dtype=object)[level]

    def _median(self) -> float:
        ref = self.reference_scores  # sorted (as p_values assumes too): no partition on every call
        return float((ref[(len(ref) - 1) // 2] + ref[len(ref) // 2]) / 2)

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "target_fpr": self.target_fpr,
                "validation_fpr": self.validation_fpr, "reference_scores": self.reference_scores.tolist()}

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> "Calibration":
        return cls(threshold=float(payload["threshold"]), target_fpr=float(payload["target_fpr"]),
                   reference_scores=np.asarray(payload["reference_scores"], dtype=np.float64))


@dataclass
class AlertRule:
    """When flagged steps become an alert, as monitoring teams expect: at least `min_steps` of the
    last `within` steps above the threshold (k-of-n, which debounces single-step noise), and not
    within `cooldown` steps of an earlier step where that held: one page per incident, not one per
    step, and a new page only once the condition has been clear for `cooldown` steps (cf. Merlion's
    AggregateAlarms, Alertmanager's firing/resolved). An alert at a step depends on the flags of
    its last `within - 1 + cooldown` steps only, so a stateless scorer given that many steps of
    context fires exactly where a pass over the whole history does. Applied to one series at a
    time, steps in time order."""

    min_steps: int = 3
    within: int = 5
    cooldown: int = 12

    def __post_init__(self) -> None:
        if not 1 <= self.min_steps <= self.within:
            raise InvalidParameterError(f"the alert rule needs 1 <= alert_min_steps <= alert_within, got "
                                        f"{self.min_steps} of {self.within}")
        if self.cooldown < 0:
            raise InvalidParameterError(f"alert_cooldown must be >= 0 steps, got {self.cooldown}")

    def apply(self, flags: np.ndarray) -> np.ndarray:
        """Bool per step: an alert fires at this step."""
        flags = np.asarray(flags, dtype=bool)
        n = len(flags)
        if np.count_nonzero(flags) < self.min_steps:  # no window can hold min_steps flags (the usual case)
            return np.zeros(n, dtype=bool)
        holds = np.convolve(flags.astype(np.int64), np.ones(self.within, dtype=np.int64))[:n] >= self.min_steps
        if self.cooldown == 0:
            return holds
        held = np.convolve(holds.astype(np.int64), np.ones(self.cooldown, dtype=np.int64))[:n]  # in (t - cooldown, t]
        return holds & (np.concatenate([[0], held[:-1]]) == 0)

    @property
    def lookback(self) -> int:
        """Steps before a step whose flags decide whether an alert fires at it."""
        return self.within - 1 + self.cooldown

    def start(self) -> "AlertState":
        """The rule's state for one series, fed one flag per step (a stream processor's form of `apply`)."""
        return AlertState(self)

    def to_dict(self) -> dict[str, int]:
        return {"min_steps": self.min_steps, "within": self.within, "cooldown": self.cooldown}


class AlertState:
    """The alert rule over one series, one step at a time: its last `within` flags, and whether the
    k-of-n condition held at each of its last `cooldown` steps."""

    def __init__(self, rule: AlertRule) -> None:
        self.rule = rule
        self.recent: deque[bool] = deque(maxlen=rule.within)
        self.held: deque[bool] = deque(maxlen=rule.cooldown)

    def step(self, flagged: bool) -> bool:
        """Take this step's flag; True when an alert fires at it."""
        self.recent.append(flagged)
        holds = sum(self.recent) >= self.rule.min_steps
        fires = holds and not any(self.held)
        self.held.append(holds)
        return fires
