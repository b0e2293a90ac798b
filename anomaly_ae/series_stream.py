"""Scoring a metric stream with no state on the scorer: what a client sends, which rows are new.

A series model scores each row by the window of `window` steps ending at it, so a stream processor
that scores live rows one request at a time sends, per series, its new rows together with the rows
before them, and asks for the new ones back (the service's `score_last`). `StreamContract` says how
much context that takes; `select_new_rows` picks the new rows out of a scored request and applies
the alert rule to them.

What equals an offline pass (`SeriesDetector.score_frame` over the whole history):

- score, p-value, flag, severity and notes of a new row, when at least `window - 1` rows of its
  series precede it in the request (or all the rows the series has);
- its alert, when `context_rows = window - 1 + alert_rule.lookback` rows precede the new rows (or
  all the series has): an alert depends on the flags of the `lookback = within - 1 + cooldown`
  steps before it (`AlertRule`), and those rows then have complete windows. Context rows whose
  window reaches back before the request are not counted as flagged: their scores come from a cut
  window. A request with fewer context rows than `context_rows` is taken to hold the start of its
  series (a client sends what it has), and every row counts, as offline.

No torch and no framework here: index arithmetic on the layout `SeriesFraming.split` returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from anomaly_ae.calibration import AlertRule
from anomaly_ae.inference import InferencePath, ScoreResult


@dataclass(frozen=True)
class StreamContract:
    """What a client of a series model needs to know to send the right rows."""

    window: int
    time_col: str | None
    series_col: str | None
    step_seconds: float | None
    max_gap: int
    alert_rule: AlertRule
    n_known_series: int
    covariates: tuple[str, ...] = ()

    @property
    def context_rows(self) -> int:
        """Rows of a series to send before its new rows: a full window for the scores, plus the
        steps before the new rows whose flags decide their alerts (`AlertRule.lookback`)."""
        return self.window - 1 + self.alert_rule.lookback

    @classmethod
    def of(cls, path: InferencePath) -> "StreamContract":
        framing = path.framing
        if framing is None:
            raise ValueError("a row model has no stream contract: each row is scored alone")
        rule = path.alert_rule or AlertRule(1, 1, 0)
        return cls(window=int(framing.window), time_col=framing.time_col, series_col=framing.series_col,
                   step_seconds=framing.step_seconds, max_gap=int(framing.max_gap), alert_rule=rule,
                   n_known_series=len(framing.known_series), covariates=tuple(framing.covariates))

    def to_dict(self) -> dict[str, Any]:
        return {"window": self.window, "context_rows": self.context_rows, "time_col": self.time_col,
                "series_col": self.series_col, "step_seconds": self.step_seconds, "max_gap": self.max_gap,
                "alert_rule": self.alert_rule.to_dict(), "n_known_series": self.n_known_series,
                "covariates": list(self.covariates)}


@dataclass
class NewRows:
    """The rows of a scored request to return, in input order."""

    rows: np.ndarray      # input positions
    alerts: np.ndarray    # bool per returned row
    series: np.ndarray    # series id per returned row (object; "__series__" for a model without a series column)
    n_context: int        # rows sent as context only


def score_new_rows(path: InferencePath, data: Any, score_last: int | None, *, top_k: int = 0
                   ) -> tuple[ScoreResult, NewRows]:
    """Score the last `score_last` rows of each series in `data` (all rows when None) and give their
    alerts: the same results for those rows as `path.score(data)` then `select_new_rows`, scoring
    only the windows they need.

    The returned result's arrays follow `NewRows.rows` (its `missing` and `unseen` still count the
    whole request). Scored: the new rows, and before them the rows the alert rule's k-of-n part
    counts (`within - 1`; flags only). The other context rows complete windows and are validated,
    never scored, unless a new row has `min_steps` of its last `within` steps flagged and the rule
    has a cooldown: whether it alerts then depends on the rule's `lookback` steps before the new
    rows, and those are scored too (during an incident)."""
    framing = path.framing
    if framing is None:
        raise ValueError("score_new_rows applies to series models")
    metrics, layout = framing.split(data)
    if score_last is None:
        result = path.score(metrics, top_k=top_k, layout=layout)
        return result, select_new_rows(path, data, result, None)
    contract = StreamContract.of(path)
    rule = path.alert_rule
    n = len(layout.position)
    counted = _counted(layout, contract, score_last)
    new = np.zeros(n, dtype=bool)
    needed = np.zeros(n, dtype=bool)  # rows whose flags the k-of-n part of the new rows' alerts reads
    for rows in layout.order:
        before = len(rows) - min(int(score_last), len(rows))
        new[rows[before:]] = True
        if rule is not None:
            look = rows[max(0, before - (rule.within - 1)):before]
            needed[look[counted[look]]] = True
    scored = np.flatnonzero(new | needed)
    result = path.score(metrics, top_k=top_k, layout=layout, rows=scored)
    flags = np.zeros(n, dtype=bool)
    flags[scored] = result.is_anomaly
    if rule is not None and rule.cooldown > 0:
        rest = []
        for rows in layout.order:
            steps = np.convolve((flags[rows] & counted[rows]).astype(np.int64), np.ones(rule.within, dtype=np.int64))
            if (steps[:len(rows)][new[rows]] >= rule.min_steps).any():  # an alert may fire: the cooldown decides
                first_new = int(np.argmax(new[rows]))
                look = rows[max(0, first_new - rule.lookback):first_new]
                rest.append(look[counted[look] & ~needed[look]])
        extra = np.concatenate(rest) if rest else np.zeros(0, dtype=np.int64)
        if len(extra):
            flags[extra] = path.score(metrics, layout=layout, rows=extra).is_anomaly
    picked = select_new_rows(path, data, _Flags(flags, layout), score_last)
    return result.take(np.searchsorted(scored, picked.rows)), picked


@dataclass
class _Flags:
    is_anomaly: np.ndarray
    layout: Any


def _counted(layout: Any, contract: StreamContract, score_last: int | None) -> np.ndarray:
    """Bool per input row: the alert rule counts its flag. Not counted: with the full context sent
    (`context_rows` before the new rows), the context rows whose window reaches back before the
    request (scored on a cut window); a restart after a long gap is real and counts."""
    counted = np.ones(len(layout.position), dtype=bool)
    history = layout.history()
    segment = layout.segment_start[layout.position]
    for rows in layout.order:
        n_new = len(rows) if score_last is None else min(int(score_last), len(rows))
        if len(rows) - n_new >= contract.context_rows:
            counted[rows[(history[rows] < contract.window) & (segment[rows] == segment[rows[0]])]] = False
    return counted


def select_new_rows(path: InferencePath, data: Any, result: ScoreResult, score_last: int | None) -> NewRows:
    """The last `score_last` rows of each series in `data` (all rows when None), and their alerts.

    `result` is `path.score(data)`: its `layout` says where each row sits in its series (`data` is
    split in time again only when the result has none)."""
    framing = path.framing
    if framing is None:
        raise ValueError("select_new_rows applies to series models")
    layout = getattr(result, "layout", None)
    if layout is None:
        _, layout = framing.split(data)
    contract = StreamContract.of(path)
    flags = np.asarray(result.is_anomaly, dtype=bool)
    # the client cut older history: rows whose window reaches back before the request scored on a
    # cut window and are not counted (a restart after a long gap is real and counts)
    counted = flags & _counted(layout, contract, score_last)
    alerts = np.zeros(len(flags), dtype=bool)
    new: list[np.ndarray] = []
    n_context = 0
    for rows in layout.order:  # one series, in time order (the framing refuses any other order)
        n_new = len(rows) if score_last is None else min(int(score_last), len(rows))
        before = len(rows) - n_new
        alerts[rows] = contract.alert_rule.apply(counted[rows]) if path.alert_rule is not None else False
        new.append(rows[before:])
        n_context += before
    picked = np.sort(np.concatenate(new)) if new else np.zeros(0, dtype=np.int64)
    return NewRows(rows=picked, alerts=alerts[picked], series=layout.series[picked], n_context=n_context)
