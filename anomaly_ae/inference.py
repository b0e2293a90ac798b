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

from concurrent.futures import Executor, wait
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence

import numpy as np
import pandas as pd

from anomaly_ae.calibration import AlertRule, Calibration
from anomaly_ae.data.preprocess import CLIP, Preprocessor
from anomaly_ae.data.schema import Schema, short_repr
from anomaly_ae.data.windows import SeriesFraming, SeriesLayout
from anomaly_ae.exceptions import ScoringError

Columns = Mapping[str, Sequence[Any]]

# Rows from which a batch's model step is split in two halves when a helper thread is given: the two
# halves scored at once took 2.0 against 2.3 ms for 256 rows of the default (one torch thread each),
# 6.8 against 9.6 ms for 1,000; at 128 rows the hand-over cost what the halves saved
# (benchmarks/results/experiments/issue11_split.md).
SPLIT_MIN_ROWS = 256


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
    alerts: np.ndarray | None = None  # series models: bool per row, the alert rule fires here
    step_shares: np.ndarray | None = None  # series models: (N, window, input columns) shares, when asked
    layout: SeriesLayout | None = None  # series models: each row's place in its series' time grid

    def take(self, positions: np.ndarray) -> "ScoreResult":
        """These rows (positions in this result) of it; the request's missing / unseen counts and the
        layout stay as they are."""
        def rows(values: Any) -> Any:
            return None if values is None else values[positions]

        def items(values: list | None) -> list | None:
            return None if values is None else [values[i] for i in positions.tolist()]

        return ScoreResult(scores=self.scores[positions], p_values=self.p_values[positions],
                           is_anomaly=self.is_anomaly[positions], severity=self.severity[positions],
                           shares=rows(self.shares), top_features=items(self.top_features),
                           top_contributions=items(self.top_contributions), notes=items(self.notes),
                           index=rows(self.index), checked=None if self.checked is None else _take_rows(
                               self.checked, positions),
                           model_input=rows(self.model_input), missing=self.missing, unseen=self.unseen,
                           alerts=rows(self.alerts), step_shares=rows(self.step_shares), layout=self.layout)

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
        if self.alerts is not None:
            out["alert"] = self.alerts
        out["notes"] = ["; ".join(n) for n in self.notes] if self.notes is not None else [""] * len(self.scores)
        return pd.DataFrame(out, index=index)


class InferencePath:
    """A fitted model's scoring, from raw input to an actionable result.

    Series models add `framing` (time order, gaps, the window before each row), whether their module
    takes windows as (window, metrics) or flattened (`sequence`), and an `alert_rule`. Each row is
    then scored by the window that ends at it, and its contributions are summed over the window's
    steps, so explanations name input columns as for rows."""

    def __init__(self, schema: Schema, preprocessor: Preprocessor, scorer: RowScorer,
                 calibration: Calibration, *, framing: SeriesFraming | None = None, sequence: bool = False,
                 alert_rule: AlertRule | None = None) -> None:
        self.schema = schema
        self.preprocessor = preprocessor
        self.scorer = scorer
        self.calibration = calibration
        self.framing = framing
        self.sequence = sequence
        self.alert_rule = alert_rule
        covariates = list(framing.covariates) if framing is not None else []
        # explanations name the input columns, then each calendar covariate (its sin and cos together)
        self.feature_names = _feature_names(schema) + covariates
        self._names = np.asarray(self.feature_names, dtype=object)
        # (model inputs x input columns): a categorical column's share sums over its one-hot group
        if schema.image is None:
            n_inputs = preprocessor.n_outputs
            self._groups: np.ndarray | None = np.zeros((n_inputs + 2 * len(covariates), len(self.feature_names)))
            for j, name in enumerate(schema.names):
                self._groups[preprocessor.groups[name], j] = 1.0
            for i in range(len(covariates)):
                self._groups[n_inputs + 2 * i: n_inputs + 2 * i + 2, len(schema.names) + i] = 1.0
        else:
            self._groups = None  # a pixel is its own feature
        # the schema's categories, as its check counts unseen ones: a row's note never depends on its batch
        # (a category seen in training but outside the encoder's vocabulary is encoded as unknown, not noted)
        self._known = {c.name: frozenset(c.categories) for c in schema.columns if c.kind == "categorical"}

    # ------------------------------------------------------------------ the path
    def score(self, data: pd.DataFrame | np.ndarray | Columns, *, top_k: int = 0,
              shares: bool = False, step_shares: bool = False, rows: np.ndarray | None = None,
              layout: SeriesLayout | None = None, helper: Executor | None = None) -> ScoreResult:
        """Validate and score `data`; `top_k > 0` adds each row's top contributing features,
        `shares=True` every column's share (for `Detector.explain`), `step_shares=True` (series
        models) every (step of the window, column)'s share.

        `rows` (series models): score only these input positions, each by its window over the
        whole input (a stream processor's new rows after their context); the result's arrays
        follow `rows`, and its alerts are left to the caller, who holds the earlier steps.

        `layout` (series models): `data` is already split by `framing.split` (its metric columns),
        and this is the layout it returned.

        `helper` (row models): a thread that scores the second half of a batch of SPLIT_MIN_ROWS or
        more while this one scores the first. Rows score independently: the result is the same to
        float32 rounding, as for rows scored in separate calls. torch and numpy release the GIL in
        their kernels. The service passes one when a worker has nothing else to score."""
        if self.framing is not None and layout is None:
            data, layout = self.framing.split(data)
        if isinstance(data, Mapping):
            checked, report = self.schema.check_columns(data)
            index = None
        else:  # a DataFrame or an array; anything else is refused by the check, saying what it takes
            checked, report = self.schema.check(data)
            index = checked.index if isinstance(checked, pd.DataFrame) else pd.RangeIndex(len(checked))
        x = model_input(self.preprocessor, self.schema, checked)
        clipped = self.clip_notes(x)
        steps = None
        if rows is not None:
            if layout is None:
                raise ValueError("rows= selects windows of a series model; a row model scores what it is given")
            rows = np.asarray(rows, dtype=np.int64)
            checked = _take_rows(checked, rows)
            index = index[rows] if index is not None else None
        if layout is None:
            scores, contributions = self._score_rows(x, helper)
        else:
            scores, contributions, steps = self.score_windows(series_input(x, layout), layout,
                                                              keep_steps=step_shares, rows=rows)
        bad = ~np.isfinite(scores)
        if bad.any():
            bad_rows = np.flatnonzero(bad)[:5].tolist()
            raise ScoringError(f"the model produced non-finite scores for rows {bad_rows}; their values are far "
                               "outside anything seen in training; check them for unit or sensor errors")
        cal = self.calibration
        result = ScoreResult(scores=scores, p_values=cal.p_values(scores), is_anomaly=scores > cal.threshold,
                             severity=cal.severity(scores), index=index, checked=checked,
                             model_input=x if rows is None else x[rows],
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
        if clipped is not None:
            clipped = clipped if rows is None else [clipped[i] for i in rows.tolist()]
            result.notes = [a + b for a, b in zip(result.notes or [[] for _ in clipped], clipped)]
        if steps is not None:
            mapped = np.maximum(steps, 0.0)
            if self._groups is not None:
                mapped = mapped @ self._groups
            total = mapped.sum((1, 2), keepdims=True)
            result.step_shares = np.divide(mapped, total, out=np.zeros_like(mapped), where=total > 0)
        if layout is not None and rows is not None:
            result.layout = layout
            if any(layout.notes[i] for i in rows.tolist()):
                notes = result.notes or [[] for _ in rows]
                result.notes = [layout.notes[i] + n for i, n in zip(rows.tolist(), notes)]
        elif layout is not None:
            result.layout = layout
            result.alerts = self.alerts(result.is_anomaly, layout)
            if any(layout.notes):
                result.notes = [a + b for a, b in zip(layout.notes, result.notes or [[]] * len(scores))]
        return result

    def _score_rows(self, x: np.ndarray, helper: Executor | None) -> tuple[np.ndarray, np.ndarray]:
        if helper is None or len(x) < SPLIT_MIN_ROWS:
            return self.scorer.score(x)
        half = len(x) // 2
        second = helper.submit(self.scorer.score, x[half:])
        try:
            scores, contributions = self.scorer.score(x[:half])
        finally:  # the helper is free again when this returns, even if the first half failed
            wait([second])
        more_scores, more_contributions = second.result()
        return np.concatenate([scores, more_scores]), np.concatenate([contributions, more_contributions])

    def score_windows(self, x: np.ndarray, layout: SeriesLayout, chunk: int = 2048, keep_steps: bool = False,
                      rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Score each row (or only `rows`) by the window ending at it, in chunks so the (rows,
        window, features) copies stay small; contributions summed over the window's steps (and,
        with `keep_steps`, also returned per step)."""
        assert self.framing is not None
        window = layout.windows(self.framing.window)
        if rows is not None:
            window = window[rows]
        fast = None if self.sequence else getattr(self.scorer, "score_windows", None)
        # knn over sliding windows scores windows from their rows, not flattened copies (and fastest in
        # time order: a window one step after the one before shares all but one of its rows)
        order = np.argsort(layout.position if rows is None else layout.position[rows], kind="stable") \
            if fast is not None else np.arange(len(window))
        scores, contributions, steps = [], [], []
        for start in range(0, max(len(window), 1), chunk):
            part_rows = order[start:start + chunk]
            got = fast(x, window[part_rows]) if fast is not None and len(part_rows) else None
            if got is None:
                fast = None
                part = x[window[part_rows]]  # (n, window, features)
                if not self.sequence:
                    part = part.reshape(len(part), -1)
                got = self.scorer.score(part)
            s, c = got
            scores.append(s)
            per_step = c.reshape(len(part_rows), self.framing.window, -1)
            contributions.append(per_step.sum(1))
            if keep_steps:
                steps.append(per_step)
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return (np.concatenate(scores)[inverse], np.concatenate(contributions)[inverse],
                np.concatenate(steps)[inverse] if keep_steps else None)

    def alerts(self, flags: np.ndarray, layout: SeriesLayout) -> np.ndarray:
        """The alert rule over each series' flagged steps, in time order."""
        alerts = np.zeros(len(flags), dtype=bool)
        if self.alert_rule is not None:
            for rows in layout.order:
                alerts[rows] = self.alert_rule.apply(flags[rows])
        return alerts

    def shares(self, contributions: np.ndarray) -> np.ndarray:
        """Each input column's share of a row's misfit (rows sum to 1, or 0 for a perfect fit)."""
        contributions = np.maximum(contributions.reshape(len(contributions), -1), 0.0)
        if self._groups is not None:
            contributions = contributions @ self._groups
        total = contributions.sum(1, keepdims=True)
        return np.divide(contributions, total, out=np.zeros_like(contributions), where=total > 0)

    def clip_notes(self, x: np.ndarray) -> list[list[str]] | None:
        """Per-row notes naming the input columns whose values preprocessing clipped at CLIP (training
        standard deviations from the mean, or training ranges for images), None when none was: such a
        row is scored as if its value lay at the limit, so its score stops growing with the value."""
        hit = np.abs(x.reshape(len(x), -1)) >= CLIP
        if not hit.any():
            return None
        if self._groups is not None:  # model inputs -> input columns
            hit = (hit.astype(np.float32) @ self._groups[: hit.shape[1]]) > 0
        unit = "training ranges outside its training values" if self._groups is None \
            else "standard deviations from its training mean"
        said = [f"'{name}' lies more than {CLIP:,.0f} {unit} and is scored as if at that limit; check it for unit or "
                "sensor errors" for name in self.feature_names]
        notes: list[list[str]] = [[] for _ in range(len(x))]
        for i in np.flatnonzero(hit.any(1)).tolist():
            notes[i] = [said[j] for j in np.flatnonzero(hit[i]).tolist()]
        return notes

    def notes(self, checked: Any, missing: Mapping[str, int], unseen: Mapping[str, int]) -> list[list[str]]:
        """Per-row remarks that are not errors: categories never seen in training, imputed values."""
        n = len(checked) if isinstance(checked, pd.DataFrame) else len(next(iter(checked.values())))
        notes: list[list[str]] = [[] for _ in range(n)]
        for name in unseen:
            known = self._known[name]
            for i, v in enumerate(np.asarray(checked[name], dtype=object).tolist()):
                if v is not None and v not in known:
                    notes[i].append(f"unseen category {short_repr(v, 60)} in '{name}'")
        for name in missing:
            if name in self.preprocessor.numeric:
                for i in np.flatnonzero(np.isnan(np.asarray(checked[name], dtype=np.float64))).tolist():
                    notes[i].append(f"missing '{name}' imputed")
        return notes


def _take_rows(checked: Any, rows: np.ndarray) -> Any:
    if isinstance(checked, pd.DataFrame):
        return checked.iloc[rows]
    if isinstance(checked, Mapping):
        return {name: np.asarray(values)[rows] for name, values in checked.items()}
    return checked[rows]


def model_input(preprocessor: Preprocessor, schema: Schema, checked: Any) -> np.ndarray:
    """Checked input as the model's input array: (N, features), or (N, C, H, W) for images."""
    x = preprocessor.transform(checked)
    if schema.image is not None:
        image = schema.image
        return x.reshape(len(x), image.channels, image.height, image.width)
    return x


def series_input(x: np.ndarray, layout: SeriesLayout) -> np.ndarray:
    """A series model's input rows: the preprocessed columns, then the layout's calendar covariates."""
    return x if layout.covariates is None else np.hstack([x, layout.covariates.astype(x.dtype, copy=False)])


def _feature_names(schema: Schema) -> list[str]:
    if schema.image is not None:
        s = schema.image
        return [f"pixel[{c},{h},{w}]" for c in range(s.channels) for h in range(s.height) for w in range(s.width)]
    return schema.names
