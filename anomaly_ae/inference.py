"""The one scoring path: validate → transform → model score → calibrate → explain / notes.

Every adapter calls `InferencePath.score`: `Detector.decision_function`, `predict`,
`p_values`, `explain` and `score_frame`; the MLflow pyfunc and Spark (through `score_frame`);
the scoring service (with JSON columns). Input is a DataFrame or array (checked by
`Schema.check`, which reads text columns the way CSV files need) or a mapping of column name →
values parsed from JSON (checked by `Schema.check_columns`, strict about JSON types). From there
on every step is shared, so a change to explanations or notes is made once.

No torch here: the model step is whatever `scorer.score(x) -> (scores, contributions)` does
(a `scoring.ModelScorer`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence

import numpy as np
import pandas as pd

from anomaly_ae.calibration import Calibration
from anomaly_ae.data.preprocess import UNKNOWN, Preprocessor
from anomaly_ae.data.schema import Schema
from anomaly_ae.exceptions import ScoringError

Columns = Mapping[str, Sequence[Any]]


class RowScorer(Protocol):
    def score(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass
class ScoreResult:
    """Everything one scoring call produced, as arrays in input order."""

    scores: np.ndarray
    p_values: np.ndarray
    is_anomaly: np.ndarray  # bool
    severity: np.ndarray  # object array of SEVERITY_LEVELS
    shares: np.ndarray | None = None  # (N, input columns) shares of each row's misfit, when explained
    top_features: list[list[str]] | None = None
    top_contributions: list[list[float]] | None = None
    notes: list[list[str]] | None = None  # None when no row has a note
    index: pd.Index | None = None  # the input's row labels (None for JSON columns: positions)
    checked: Any = None  # validated input (DataFrame, image array or dict of column arrays)
    model_input: np.ndarray | None = None
    missing: dict[str, int] = field(default_factory=dict)  # column -> rows with a missing value
    unseen: dict[str, int] = field(default_factory=dict)  # column -> rows with an unseen category

    def frame(self, top_k: int = 3) -> pd.DataFrame:
        """score, p_value, is_anomaly, severity, feature_i / contribution_i (top_k > 0) and notes."""
        index = self.index if self.index is not None else pd.RangeIndex(len(self.scores))
        out: dict[str, Any] = {"score": self.scores, "p_value": self.p_values,
                               "is_anomaly": self.is_anomaly, "severity": self.severity}
        if top_k > 0 and self.top_features is not None:
            names, shares = np.asarray(self.top_features, dtype=object), np.asarray(self.top_contributions)
            for i in range(names.shape[1]):
                out[f"feature_{i + 1}"] = names[:, i]
                out[f"contribution_{i + 1}"] = shares[:, i]
        out["notes"] = ["; ".join(n) for n in self.notes] if self.notes is not None else [""] * len(self.scores)
        return pd.DataFrame(out, index=index)


class InferencePath:
    """A fitted model's scoring, from raw input to an actionable result."""

    def __init__(self, schema: Schema, preprocessor: Preprocessor, scorer: RowScorer,
                 calibration: Calibration) -> None:
        self.schema = schema
        self.preprocessor = preprocessor
        self.scorer = scorer
        self.calibration = calibration
        self.feature_names = _feature_names(schema)
        self._names = np.asarray(self.feature_names, dtype=object)
        # (model inputs x input columns): a categorical column's share sums over its one-hot group
        if schema.image is None:
            self._groups: np.ndarray | None = np.zeros((preprocessor.n_outputs, len(schema.names)))
            for j, name in enumerate(schema.names):
                self._groups[preprocessor.groups[name], j] = 1.0
        else:
            self._groups = None  # a pixel is its own feature
        self._known = {name: frozenset(b for b in buckets if b != UNKNOWN)
                       for name, buckets in preprocessor.categorical.items()}

    # ------------------------------------------------------------------ the path
    def score(self, data: pd.DataFrame | np.ndarray | Columns, *, top_k: int = 0,
              shares: bool = False) -> ScoreResult:
        """Validate and score `data`; `top_k > 0` adds each row's top contributing features,
        `shares=True` every column's share (for `Detector.explain`)."""
        if isinstance(data, Mapping):
            checked, report = self.schema.check_columns(data)
            index = None
        else:  # a DataFrame or an array; anything else is refused by the check, saying what it takes
            checked, report = self.schema.check(data)
            index = checked.index if isinstance(checked, pd.DataFrame) else pd.RangeIndex(len(checked))
        x = model_input(self.preprocessor, self.schema, checked)
        scores, contributions = self.scorer.score(x)
        bad = ~np.isfinite(scores)
        if bad.any():
            rows = np.flatnonzero(bad)[:5].tolist()
            raise ScoringError(f"the model produced non-finite scores for rows {rows}; their values are far "
                               "outside anything seen in training; check them for unit or sensor errors")
        cal = self.calibration
        result = ScoreResult(scores=scores, p_values=cal.p_values(scores), is_anomaly=scores > cal.threshold,
                             severity=cal.severity(scores), index=index, checked=checked, model_input=x,
                             missing=report.missing_values, unseen=report.unseen_categories)
        if top_k > 0 or shares:
            share_matrix = self.shares(contributions)
            if shares:
                result.shares = share_matrix
            if top_k > 0:
                k = max(1, min(int(top_k), share_matrix.shape[1]))
                order = np.argsort(-share_matrix, axis=1, kind="stable")[:, :k]
                result.top_features = self._names[order].tolist()
                result.top_contributions = np.take_along_axis(share_matrix, order, axis=1).tolist()
        if report.missing_values or report.unseen_categories:
            result.notes = self.notes(checked, report.missing_values, report.unseen_categories)
        return result

    def shares(self, contributions: np.ndarray) -> np.ndarray:
        """Each input column's share of a row's misfit (rows sum to 1, or 0 for a perfect fit)."""
        contributions = np.maximum(contributions.reshape(len(contributions), -1), 0.0)
        if self._groups is not None:
            contributions = contributions @ self._groups
        total = contributions.sum(1, keepdims=True)
        return np.divide(contributions, total, out=np.zeros_like(contributions), where=total > 0)

    def notes(self, checked: Any, missing: Mapping[str, int], unseen: Mapping[str, int]) -> list[list[str]]:
        """Per-row remarks that are not errors: categories never seen in training, imputed values."""
        n = len(checked) if isinstance(checked, pd.DataFrame) else len(next(iter(checked.values())))
        notes: list[list[str]] = [[] for _ in range(n)]
        for name in unseen:
            known = self._known[name]
            for i, v in enumerate(np.asarray(checked[name], dtype=object).tolist()):
                if v is not None and v not in known:
                    notes[i].append(f"unseen category {v!r} in '{name}'")
        for name in missing:
            if name in self.preprocessor.numeric:
                for i in np.flatnonzero(np.isnan(np.asarray(checked[name], dtype=np.float64))).tolist():
                    notes[i].append(f"missing '{name}' imputed")
        return notes


def model_input(preprocessor: Preprocessor, schema: Schema, checked: Any) -> np.ndarray:
    """Checked input as the model's input array: (N, features), or (N, C, H, W) for images."""
    x = preprocessor.transform(checked)
    if schema.image is not None:
        image = schema.image
        return x.reshape(len(x), image.channels, image.height, image.width)
    return x


def _feature_names(schema: Schema) -> list[str]:
    if schema.image is not None:
        s = schema.image
        return [f"pixel[{c},{h},{w}]" for c in range(s.channels) for h in range(s.height) for w in range(s.width)]
    return schema.names
