"""From raw scores to decisions: a threshold at a target false-positive rate, p-values, severity.

Everything is split-conformal against scores of held-out normal samples the model never trained
on: if new normal data is exchangeable with them, P(p_value <= a) <= a and the false-positive rate
at the threshold is at most the target.
"""

from __future__ import annotations

import math
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
        k = min(n, math.ceil((n + 1) * (1 - Fraction(repr(float(target_fpr))))))
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
    last `within` steps above the threshold (k-of-n, which debounces single-step noise), then no
    new alert for `cooldown` steps (one page per incident, not one per step; cf. Merlion's
    AggregateAlarms). Applied to one series at a time, steps in time order."""

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
        flags = np.asarray(flags)
        if np.count_nonzero(flags) < self.min_steps:  # no window can hold min_steps flags (the usual case)
            return np.zeros(len(flags), dtype=bool)
        state = self.start()
        return np.array([state.step(bool(f)) for f in flags.tolist()], dtype=bool)

    def start(self) -> "AlertState":
        """The rule's state for one series, fed one flag per step (a stream processor's form of `apply`)."""
        return AlertState(self)

    def to_dict(self) -> dict[str, int]:
        return {"min_steps": self.min_steps, "within": self.within, "cooldown": self.cooldown}


class AlertState:
    """The alert rule over one series, one step at a time: the last `within` flags and the cooldown."""

    def __init__(self, rule: AlertRule) -> None:
        self.rule = rule
        self.recent: deque[bool] = deque(maxlen=rule.within)
        self.steps = 0  # steps seen
        self.quiet_until = -1  # no new alert up to this step

    def step(self, flagged: bool) -> bool:
        """Take this step's flag; True when an alert fires at it."""
        self.recent.append(flagged)
        index, self.steps = self.steps, self.steps + 1
        if sum(self.recent) >= self.rule.min_steps and index > self.quiet_until:
            self.quiet_until = index + self.rule.cooldown
            return True
        return False
