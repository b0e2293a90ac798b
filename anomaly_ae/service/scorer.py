"""The service's hot path: score parsed JSON columns with a loaded Detector, without pandas.

`Detector.score_frame` is built for DataFrames and pays pandas' per-column costs on every call,
which dominate a 1-row request. Here the same steps run on numpy arrays: `Schema.check_columns`
(same rules as `Schema.check`), `Preprocessor.transform` (the same transform), the detector's own
batched scoring and calibration. `smoke_test` scores a small batch built from the training
reference both ways and refuses a model whose scores are not finite or disagree with
`Detector.decision_function`, so this path can never silently drift from the library's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from anomaly_ae.data.preprocess import UNKNOWN
from anomaly_ae.detector import Detector
from anomaly_ae.exceptions import ModelLoadError


class SmokeTestError(ModelLoadError):
    """A model loaded but could not score a smoke batch correctly; it is not served."""


@dataclass
class ScoreResult:
    scores: np.ndarray
    p_values: np.ndarray
    is_anomaly: np.ndarray
    severity: np.ndarray
    top_features: list[list[str]] | None = None
    top_contributions: list[list[float]] | None = None
    notes: list[list[str]] | None = None  # None when no row has a note
    checked: dict[str, np.ndarray] = field(default_factory=dict)
    model_input: np.ndarray | None = None
    missing: dict[str, int] = field(default_factory=dict)
    unseen: dict[str, int] = field(default_factory=dict)


class Scorer:
    """A Detector compiled for JSON columns: validate, transform, score, calibrate, explain."""

    def __init__(self, detector: Detector) -> None:
        schema = detector.schema_
        if schema.image is not None:
            raise ModelLoadError("this model scores images; the scoring service serves tabular models only")
        self.detector = detector
        self.schema = schema
        self.preprocessor = detector.preprocessor_
        self.calibration = detector.calibration_
        self.threshold = float(detector.threshold_)
        self.names = schema.names
        self._names = np.asarray(self.names, dtype=object)
        # (model inputs x columns): a categorical column's share is the sum over its one-hot group
        self._groups = np.zeros((self.preprocessor.n_outputs, len(self.names)))
        for j, name in enumerate(self.names):
            self._groups[self.preprocessor.groups[name], j] = 1.0
        self._known = {name: frozenset(b for b in buckets if b != UNKNOWN)
                       for name, buckets in self.preprocessor.categorical.items()}

    def score(self, columns: dict[str, Any], top_k: int = 0) -> ScoreResult:
        checked, report = self.schema.check_columns(columns)
        x = self.preprocessor.transform(checked)
        scores, contributions = self.detector.score_preprocessed(x)
        cal = self.calibration
        result = ScoreResult(scores=scores, p_values=cal.p_values(scores), is_anomaly=scores > self.threshold,
                             severity=cal.severity(scores), checked=checked, model_input=x,
                             missing=report.missing_values,
                             unseen=report.unseen_categories)
        if top_k > 0:
            result.top_features, result.top_contributions = self._explain(contributions, top_k)
        if report.missing_values or report.unseen_categories:
            result.notes = self._notes(checked, report.missing_values, report.unseen_categories)
        return result

    def _explain(self, contributions: np.ndarray, top_k: int) -> tuple[list[list[str]], list[list[float]]]:
        shares = np.maximum(contributions, 0.0) @ self._groups
        total = shares.sum(1, keepdims=True)
        shares = np.divide(shares, total, out=np.zeros_like(shares), where=total > 0)
        k = max(1, min(int(top_k), shares.shape[1]))
        order = np.argsort(-shares, axis=1, kind="stable")[:, :k]
        return self._names[order].tolist(), np.take_along_axis(shares, order, axis=1).tolist()

    def _notes(self, checked: dict[str, np.ndarray], missing: dict[str, int],
               unseen: dict[str, int]) -> list[list[str]]:
        """Per-row remarks that are not errors, as `Detector.score_frame` makes them."""
        n = len(next(iter(checked.values())))
        notes: list[list[str]] = [[] for _ in range(n)]
        for name in unseen:
            known = self._known[name]
            for i, v in enumerate(checked[name].tolist()):
                if v is not None and v not in known:
                    notes[i].append(f"unseen category {v!r} in '{name}'")
        for name in missing:
            if name in self.preprocessor.numeric:
                for i in np.flatnonzero(np.isnan(checked[name])).tolist():
                    notes[i].append(f"missing '{name}' imputed")
        return notes

    # ------------------------------------------------------------------ smoke test
    def smoke_batch(self) -> dict[str, list[Any]]:
        """A few rows built from the training reference: medians, means, +-2 std, each category."""
        pre = self.preprocessor
        n = 4
        columns: dict[str, list[Any]] = {}
        for col in self.schema.columns:
            if col.kind == "numeric":
                p = pre.numeric[col.name]
                values: list[Any] = [p["median"], p["mean"], p["mean"] + 2 * p["scale"], p["mean"] - 2 * p["scale"]]
                if col.allow_missing:
                    values[3] = None
            else:
                cats = [b for b in pre.categorical[col.name] if not b.startswith("__")] or ["__smoke_unseen__"]
                values = [cats[i % len(cats)] for i in range(n)]
                if col.allow_missing:
                    values[3] = None
            columns[col.name] = values
        return columns

    def smoke_test(self) -> None:
        """Score the smoke batch on this path and through `Detector.decision_function`; refuse on any
        error, non-finite score or disagreement."""
        columns = self.smoke_batch()
        try:
            result = self.score(columns, top_k=3)
            frame = pd.DataFrame({name: pd.Series(values, dtype=object if name in self.preprocessor.categorical
                                                  else np.float64) for name, values in columns.items()})
            expected = self.detector.decision_function(frame)
        except Exception as exc:  # any failure to score refuses the model
            raise SmokeTestError(f"the model failed to score a smoke batch: {type(exc).__name__}: {exc}") from None
        if not np.all(np.isfinite(result.scores)) or not np.all(np.isfinite(result.p_values)):
            raise SmokeTestError("the model produced non-finite scores on a smoke batch built from its own "
                                 "training reference; its weights are broken")
        if not np.allclose(result.scores, expected, rtol=1e-4, atol=1e-6):
            raise SmokeTestError("the service's fast scoring path disagrees with Detector.decision_function on a "
                                 "smoke batch; this anomaly_ae version cannot serve the model")
