"""Metric streams as windows: where each row sits in its series' time grid, and the window before it.

A series frame has rows in time order, an optional time column (timestamps) and an optional
series column (a host, a sensor: windows never cross series). `SeriesFraming` checks the order,
places every row on a regular grid of the training step (rows that land on one step, as irregular
sampling gives: each is scored when it comes, and the last one stands for the step in later
windows), fills short gaps by carrying the last row forward and restarts the series after long
ones, and returns, for every input row, the indices of the `window` grid steps ending at it.
Scores are causal: a row's window holds only it and rows before it, so scoring history offline
gives what a live stream would have got.

No torch here: windows are index arrays into the preprocessed rows (`SeriesLayout.windows`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from anomaly_ae.data.schema import MAX_ROWS_NAMED_IN_ERRORS, short_repr
from anomaly_ae.exceptions import DataError, InvalidParameterError

# A series id we record for notes about unseen series; beyond this many, new ids are not remembered.
MAX_KNOWN_SERIES = 10_000
ONE_SERIES = "__series__"
# words pandas reads as a time (as it does control characters around a date): not timestamps
_WORD_TIMES = re.compile(r"\s*(now|today|tomorrow|yesterday)\s*$", re.IGNORECASE)
_DATE_ONLY = re.compile(r"\d{4}-\d{2}-\d{2}")  # ISO 8601 date, no time of day
_NS_SECONDS = (int(pd.Timestamp.min.timestamp()), int(pd.Timestamp.max.timestamp()))  # what datetime64[ns] holds
# Calendar covariates a series model can take from its time column (`calendar_covariates`).
COVARIATES = ("time_of_day", "day_of_week")
_DAY_NS = 86_400 * 10**9


@dataclass
class SeriesLayout:
    """The grid of one input: `source[g]` is the input row that grid step g shows (a filled step shows
    the last real row before it), `segment_start[g]` the first grid step of its run without long gaps,
    `position[i]` the grid step of input row i."""

    source: np.ndarray
    segment_start: np.ndarray
    position: np.ndarray
    series: np.ndarray  # (N,) series id per input row (object)
    order: list[np.ndarray]  # per series: its input rows in time order
    notes: list[list[str]] = field(default_factory=list)
    covariates: np.ndarray | None = None  # (N, 2 per covariate) calendar inputs per row (`calendar_covariates`)
    # per series, the time (ns) its grid is anchored at: the training history's first timestamp, or for a
    # series new to the model its first row here (a caller scoring a file in parts carries it on)
    origins_ns: dict[Any, int] = field(default_factory=dict)

    def windows(self, window: int) -> np.ndarray:
        """(N, window) input-row indices of each row's window, oldest first; steps before the start
        of a segment repeat its first row. A row always ends its own window, also one that a later
        row of the same grid step replaced for the windows after it."""
        offsets = np.arange(1 - window, 1)
        steps = np.maximum(self.position[:, None] + offsets[None, :], self.segment_start[self.position][:, None])
        rows = self.source[steps]
        rows[:, -1] = np.arange(len(self.position))
        return rows

    def history(self) -> np.ndarray:
        """(N,) how many grid steps of the row's segment lie at or before it (itself included)."""
        return self.position - self.segment_start[self.position] + 1


class SeriesFraming:
    """The learned time layout of a series model: column names, step, window and known series."""

    def __init__(self, window: int, time_col: str | None = None, series_col: str | None = None,
                 max_gap: int = 3, step_seconds: float | None = None, known_series: Sequence[str] = (),
                 covariates: Sequence[str] = (), origins_ns: Mapping[str, int] | None = None,
                 zone: str | None = None, ends_ns: Mapping[str, int] | None = None) -> None:
        self.window = int(window)
        self.time_col = time_col
        self.series_col = series_col
        self.max_gap = int(max_gap)
        self.step_seconds = step_seconds
        self.known_series = list(known_series)
        self._known = frozenset(self.known_series)
        self.covariates = check_covariates(covariates, time_col)
        # Per known series, its first training timestamp (ns since the epoch): its grid's steps lie a
        # whole number of steps from it in every input, so a request, a file chunk and one pass see
        # one grid, and each series keeps its own phase (scrape offsets differ between hosts, and a
        # shared anchor half a step off one host's phase would split its jittered readings). A series
        # not in it (unseen, or a model saved before): its first row in the input anchors its grid.
        self.origins_ns = dict(origins_ns or {})
        # and its last (empty: a model saved before), so that recalibrating can tell the training period's rows
        self.ends_ns = dict(ends_ns or {})
        # The training timestamps' zone (`_zone`: naive, utc or offset; None: a model saved before). Naive ones
        # are read as UTC, so with calendar covariates naive on one side and an offset on the other moves
        # every time of day.
        self.zone = zone

    # ------------------------------------------------------------------ fitting
    def learn(self, data: Any) -> "SeriesFraming":
        """Learn the sampling step and the series ids from the training history."""
        times, series = self._time_and_series(data)
        groups = _group_rows(series)
        if self.series_col is not None and len(groups) > 1 and len(groups) > len(series) / 2:
            raise DataError(f"series column '{self.series_col}' gives {len(groups)} series for {len(series)} rows, "
                            "fewer than two rows a series: name the column that holds the host or sensor id",
                            column=self.series_col)
        if times is not None:
            diffs = []
            for rows in groups:
                t = times[rows].astype("datetime64[ns]").astype(np.int64)
                self._check_order(t, rows, series[rows[0]])  # reversed history: no positive step at all
                d = np.diff(t) / 1e9
                diffs.append(d[d > 0])
            positive = np.concatenate(diffs) if diffs else np.array([])
            if not len(positive):
                raise DataError(f"'{self.time_col}' needs at least two distinct timestamps per series to learn "
                                "the sampling step")
            self.step_seconds = float(np.median(positive))
        self.known_series = sorted({str(s) for s in series})[:MAX_KNOWN_SERIES]
        self._known = frozenset(self.known_series)
        if times is not None:
            self.zone = _zone(self._column(data, self.time_col))
            ns = times.astype("datetime64[ns]").astype(np.int64)
            self.origins_ns = {str(series[rows[0]]): int(ns[rows].min()) for rows in groups
                               if str(series[rows[0]]) in self._known}
            self.ends_ns = {str(series[rows[0]]): int(ns[rows].max()) for rows in groups
                            if str(series[rows[0]]) in self._known}
        return self

    # ------------------------------------------------------------------ scoring
    def split(self, data: Any) -> tuple[Any, SeriesLayout]:
        """(the metric columns only, in the form given, and the layout of the rows in time)."""
        times, series = self._time_and_series(data)
        metrics = self._drop_keys(data)
        n = len(series)
        source, segment_start, position = [], [], np.empty(n, dtype=np.int64)
        notes: list[list[str]] = [[] for _ in range(n)]
        order = _group_rows(series)
        origins: dict[Any, int] = {}
        for rows in order:
            name = series[rows[0]]
            steps, origins[name] = self._steps(times, rows, name)
            if self.series_col is not None and name not in self._known and len(self._known) < MAX_KNOWN_SERIES:
                for row in rows.tolist():
                    notes[row].append(f"series {name!r} was not in the training data; scored with the shared model")
            start = len(source)
            if len(rows) < 2 or (np.diff(steps) == 1).all():  # no gap (the usual case): one step per row
                position[rows] = np.arange(start, start + len(rows))
                source.extend(rows.tolist())
                segment_start.extend([start] * len(rows))
                continue
            for j, row in enumerate(rows):
                missing = 0 if j == 0 else int(steps[j] - steps[j - 1] - 1)
                if missing < 0:  # the same grid step as the row before: the last reading of a step wins
                    position[row] = position[rows[j - 1]]
                    source[position[row]] = row
                    where = ("at the same timestamp" if times[rows[j]] == times[rows[j - 1]]
                             else f"within the same {_duration(self.step_seconds or 0)} step")
                    notes[row].append(f"{where} as the reading before it, which it replaces in later windows")
                    continue
                if missing > self.max_gap:
                    start = len(source)
                    notes[row].append(f"gap of {missing} steps before this row (more than max_gap={self.max_gap}): "
                                      "the window restarts here")
                elif missing > 0:
                    notes[row].append(f"gap of {missing} step{'s' * (missing > 1)} before this row filled with the "
                                      "last value")
                    source.extend([rows[j - 1]] * missing)
                    segment_start.extend([start] * missing)
                position[row] = len(source)
                source.append(row)
                segment_start.append(start)
        layout = SeriesLayout(np.asarray(source, dtype=np.int64), np.asarray(segment_start, dtype=np.int64),
                              position, series, order, notes,
                              calendar_covariates(times, self.covariates) if self.covariates else None, origins)
        zones = {self.zone, _zone(self._column(data, self.time_col))} if self.covariates and self.zone else set()
        if zones == {"naive", "offset"}:
            said = ("carry a time zone, which the training ones did not" if self.zone == "naive"
                    else "carry no time zone, which the training ones did")
            for row_notes in notes:
                row_notes.append(f"the timestamps {said}: both are read as UTC, so the time of day the model "
                                 "compares may be off by the zone's offset; send them as in training")
        history = layout.history()
        for row in np.flatnonzero(history < self.window).tolist():
            notes[row].append(f"warm-up: {int(history[row])} of {self.window} steps of history")
        return metrics, layout

    def _check_order(self, t: np.ndarray, rows: np.ndarray, name: Any) -> None:
        """Refuse one series' timestamps (int64 ns, at input positions `rows`) out of time order."""
        d = np.diff(t)
        if (d < 0).any():
            i = int(np.flatnonzero(d < 0)[0])
            what = f" of series {name!r}" if self.series_col is not None else ""
            several = "" if self.series_col is not None else (
                " (or, if the rows hold several series one after another, name the column that tells them apart: "
                "series_col, or --series-col)")
            advice = f"sort the rows by '{self.time_col}' first{several}"
            if 1800 < -d[i] / 1e9 <= 3600:  # sorting local times across a fall-back would interleave two hours
                advice = (f"they go back by {-d[i] / 6e10:.0f} minutes, as local times do when daylight saving time "
                          "ends: send UTC times, or times with their offset (2026-10-25T02:30:00+01:00); if not, "
                          + advice)
            raise DataError(f"timestamps in '{self.time_col}'{what} are not in time order at row {int(rows[i + 1])}; "
                            f"{advice}", reason="unsorted_timestamps", column=self.time_col, rows=[int(rows[i + 1])])

    def _steps(self, times: np.ndarray | None, rows: np.ndarray, name: str) -> tuple[np.ndarray, int]:
        """Grid step of each row of one series, and the grid's anchor (ns); refuses unsorted timestamps.
        Rows with one timestamp (a reading sent twice, or two readings of one step) share its step, like
        readings that land on one step (`split`: the last stands for it)."""
        if times is None:
            return np.arange(len(rows)), 0
        t = times[rows].astype("datetime64[ns]").astype(np.int64)
        self._check_order(t, rows, name)
        assert self.step_seconds is not None
        # Each row goes to the nearest step of the grid (half-way up), in integer nanoseconds so that
        # a row half-way between two steps always goes the same way; rows that land on one step share
        # it (irregular sampling: `split` lets the last one stand for the step).
        step_ns = max(1, round(self.step_seconds * 1e9))
        origin = self.origins_ns.get(name, int(t[0]))
        return (t - origin + step_ns // 2) // step_ns, origin

    def in_training_period(self, data: Any) -> np.ndarray:
        """(N,) True where a row's timestamp lies within its series' training history (first to last
        training timestamp); all False without a time column or for a model saved before this was kept."""
        if self.time_col is None or not self.ends_ns:
            return np.zeros(_n_rows(data), dtype=bool)
        times, series = self._time_and_series(data)
        assert times is not None
        ns = times.astype("datetime64[ns]").astype(np.int64)
        first = np.array([self.origins_ns.get(s, 0) for s in series], dtype=np.int64)
        last = np.array([self.ends_ns.get(s, -1) for s in series], dtype=np.int64)
        return (ns >= first) & (ns <= last)

    # ------------------------------------------------------------------ columns
    def _time_and_series(self, data: Any) -> tuple[np.ndarray | None, np.ndarray]:
        n = _n_rows(data)
        if n == 0:
            raise DataError("the input has no rows; send at least one sample")
        if isinstance(data, pd.DataFrame) and data.columns.duplicated().any():
            names = sorted({str(c) for c in data.columns[data.columns.duplicated()]})
            raise DataError(f"duplicate column names: {names}; give each column once", reason="duplicate_column",
                            column=names[0])
        times = None
        if self.time_col is not None:
            times = self._timestamps(self._column(data, self.time_col))
        if self.series_col is not None:
            raw = self._column(data, self.series_col)
            # NaN, NaT and pd.NA as well as None: str() would make a series called "nan"
            absent = pd.isna(pd.Series(list(raw), dtype=object)).to_numpy()
            series = np.asarray([None if gone else str(v) for v, gone in zip(raw, absent)], dtype=object)
            if absent.any():
                missing = [row for row, v in enumerate(series) if v is None]
                raise DataError(f"'{self.series_col}' is missing at row {missing[0]}; every row needs a series id",
                                reason="missing_value", column=self.series_col, rows=missing[:MAX_ROWS_NAMED_IN_ERRORS])
            self._refuse_colliding_ids(raw)
        else:
            series = np.full(n, ONE_SERIES, dtype=object)
        return times, series

    def _refuse_colliding_ids(self, raw: Sequence[Any]) -> None:
        """Series ids are matched as text (a CSV's "7" is a JSON client's 7), so two ids of one input that
        read the same, such as 7 and "7", would merge two series' windows."""
        seen: dict[str, Any] = {}
        for value in pd.unique(pd.Series(list(raw), dtype=object)):
            first = seen.setdefault(str(value), value)
            if type(first) is not type(value):
                raise DataError(f"series ids {first!r} and {value!r} in '{self.series_col}' read as one series "
                                f"({str(value)!r}); give every id as the same type", reason="dtype",
                                column=self.series_col)

    def _timestamps(self, raw: Sequence[Any]) -> np.ndarray:
        """The time column as datetime64[ns] (UTC, naive), refusing what pandas would misread silently:
        numbers (read as nanoseconds since 1970), words such as "now", and dates nanoseconds cannot hold."""
        column = self.time_col
        values = pd.Series(list(raw) if not isinstance(raw, pd.Series) else raw)
        kind = pd.api.types.infer_dtype(values, skipna=True)
        if kind in ("integer", "floating", "mixed-integer", "mixed-integer-float", "decimal", "boolean", "complex"):
            raise DataError(f"'{column}' holds numbers, not timestamps; send ISO 8601 text such as "
                            "2026-01-05T10:00:00Z or datetime values (epoch seconds: convert them first, e.g. "
                            "pd.to_datetime(frame[col], unit='s'))", reason="invalid_timestamp", column=column)
        if kind in ("string", "mixed"):  # in Python: pandas' string methods cost ~0.1 ms a call on 64 rows
            row = next((i for i, v in enumerate(values.tolist()) if isinstance(v, str) and (
                not v.isprintable() or (len(v) < 12 and _WORD_TIMES.match(v)))), None)
            if row is not None:
                raise DataError(f"'{column}' holds {values.iloc[row][:60]!r} at row {row}: words such as 'now' and "
                                "control characters are not timestamps; send ISO 8601 text such as "
                                "2026-01-05T10:00:00Z", reason="invalid_timestamp", column=column, rows=[row])
        try:
            # ISO 8601 only: pandas' "mixed" read '10:20' as today at 10:20 and '07/01/2026' as July but
            # '13/01/2026' as January, silently (then "not in time order" across a midnight)
            parsed = pd.to_datetime(values, utc=True, format="ISO8601")
        except (ValueError, TypeError, OverflowError):
            row = next((i for i, v in enumerate(values.tolist()) if not _iso_timestamp(v)), None)
            where = f"{short_repr(values.iloc[row])} at row {row}" if row is not None else "values"
            raise DataError(f"'{column}' holds {where}, not an ISO 8601 timestamp; send a date and a time such as "
                            "2026-01-05T10:00:00Z or 2026-01-05 10:00:00+02:00 (day/month orders and times "
                            "without a date are ambiguous)", reason="invalid_timestamp", column=column,
                            rows=[row] if row is not None else None) from None
        if parsed.isna().any():
            row = int(np.flatnonzero(parsed.isna().to_numpy())[0])
            raise DataError(f"'{column}' is missing at row {row}; every row needs a timestamp",
                            reason="missing_value", column=column, rows=[row])
        first = values.iloc[0]
        if self.step_seconds is not None and self.step_seconds < 86_400 and isinstance(first, str) \
                and _DATE_ONLY.fullmatch(first.strip()):  # every row of a day would fall on its midnight
            raise DataError(f"'{column}' holds the date {first[:20]!r} without a time of day, but the model's step "
                            f"is {self.step_seconds:g} s; send a date and a time such as 2026-01-05T10:00:00Z",
                            reason="invalid_timestamp", column=column, rows=[0])
        times = parsed.dt.tz_localize(None).to_numpy()
        if times.dtype != np.dtype("datetime64[ns]"):
            # pandas keeps dates outside 1677-2262 at a coarser unit; in nanoseconds they would wrap around
            seconds = times.astype("datetime64[s]").astype(np.int64)
            outside = (seconds <= _NS_SECONDS[0]) | (seconds >= _NS_SECONDS[1])
            if outside.any():
                row = int(np.flatnonzero(outside)[0])
                raise DataError(f"'{column}' holds {short_repr(values.iloc[row])} at row {row}; timestamps must lie "
                                f"between {pd.Timestamp.min:%Y-%m-%d} and {pd.Timestamp.max:%Y-%m-%d}",
                                reason="invalid_timestamp", column=column, rows=[row])
        return times.astype("datetime64[ns]")

    def _column(self, data: Any, name: str) -> Sequence[Any]:
        if isinstance(data, pd.DataFrame):
            if name not in data.columns:
                raise self._missing(name)
            return data[name].tolist() if name == self.series_col else data[name]
        if isinstance(data, Mapping):
            if name not in data:
                raise self._missing(name)
            return list(data[name])
        raise DataError(f"a model trained with the column '{name}' needs a table with named columns, "
                        f"not a bare {type(data).__name__}", reason="missing_column", column=name)

    def _missing(self, name: str) -> DataError:
        kind = "time" if name == self.time_col else "series"
        return DataError(f"column '{name}' is missing: the model was trained with it as its {kind} column "
                         f"({kind}_col), so every row needs it; name your {kind} column '{name}'",
                         reason="missing_column", column=name)

    def _drop_keys(self, data: Any) -> Any:
        keys = [c for c in (self.time_col, self.series_col) if c is not None]
        if not keys:
            return data
        if isinstance(data, pd.DataFrame):
            return data.drop(columns=keys)
        return {k: v for k, v in data.items() if k not in keys}

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        return {"window": self.window, "time_col": self.time_col, "series_col": self.series_col,
                "max_gap": self.max_gap, "step_seconds": self.step_seconds, "known_series": self.known_series,
                "covariates": list(self.covariates), "origins_ns": self.origins_ns, "zone": self.zone,
                "ends_ns": self.ends_ns}

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> "SeriesFraming":
        return cls(**payload)


def check_covariates(covariates: Sequence[str], time_col: str | None) -> tuple[str, ...]:
    """The covariate names as a tuple; a clear error for an unknown one or one without a time column."""
    if isinstance(covariates, str):
        covariates = [covariates]
    names = tuple(str(c) for c in covariates)
    unknown = [c for c in names if c not in COVARIATES]
    if unknown:
        raise InvalidParameterError(f"unknown covariate(s) {', '.join(map(repr, unknown))}; "
                                    f"choose from {', '.join(COVARIATES)}")
    if len(set(names)) != len(names):
        raise InvalidParameterError(f"covariates repeat a name: {list(names)}")
    if names and time_col is None:
        raise InvalidParameterError(f"covariates {list(names)} are read from the timestamps: give the time "
                                    "column as well (time_col, or --time-col)")
    return names


def calendar_covariates(times: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """(N, 2 per name) float64: each covariate as a point on the unit circle (sin, cos), so 23:55 lies
    next to 00:00 and Sunday next to Monday. time_of_day turns once a day; day_of_week once a week
    (Monday 00:00 at angle 0), moving on within the day. The clock is the timestamps' in UTC (an
    offset in the input is converted; naive timestamps are read as they are)."""
    ns = np.asarray(times, dtype="datetime64[ns]").astype(np.int64)
    day_fraction = (ns % _DAY_NS) / _DAY_NS
    columns = []
    for name in names:
        if name == "time_of_day":
            angle = 2 * np.pi * day_fraction
        else:  # day_of_week: 1970-01-01 was a Thursday (3 days after a Monday)
            angle = 2 * np.pi * (((ns // _DAY_NS + 3) % 7) + day_fraction) / 7
        columns += [np.sin(angle), np.cos(angle)]
    return np.column_stack(columns) if columns else np.zeros((len(ns), 0))


def dominant_period(x: np.ndarray, low: int = 8, high: int = 128) -> int | None:
    """The lag of the first autocorrelation peak of the rows' first principal direction, within
    [low, high]; None when there is no clear peak (TSB-AD's `find_length` uses the same idea)."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) < 3 * low:
        return None
    centred = x - x.mean(0)
    if x.shape[1] > 1:
        _, _, vt = np.linalg.svd(centred[: min(len(x), 20_000)], full_matrices=False)
        signal = centred @ vt[0]
    else:
        signal = centred[:, 0]
    if signal.std() == 0:
        return None
    n = len(signal)
    spectrum = np.fft.rfft(signal - signal.mean(), 2 * n)
    acf = np.fft.irfft(spectrum * np.conj(spectrum))[:n]
    acf = acf / acf[0]
    high = min(high, n // 3)
    lags = np.arange(low, high)
    if len(lags) < 3:
        return None
    local = acf[lags]
    peaks = [i for i in range(1, len(lags) - 1) if local[i] > local[i - 1] and local[i] >= local[i + 1]
             and local[i] > 0.2]
    return int(lags[peaks[0]]) if peaks else None


def _group_rows(series: np.ndarray) -> list[np.ndarray]:
    """Input rows of each series, in input order, series in order of first appearance."""
    if len(series) == 0:
        return []
    if (series == series[0]).all():  # one series (a model without a series column, a one-host request)
        return [np.arange(len(series))]
    codes, first = pd.factorize(series, sort=False)
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    return np.split(order, bounds)


def _n_rows(data: Any) -> int:
    if isinstance(data, Mapping):
        return len(next(iter(data.values()))) if data else 0
    return len(data)


def _duration(seconds: float) -> str:
    """A step as people write it: 5 min, 1 h, 1.5 s."""
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


# An ISO 8601 time's zone at its end: Z, or an offset such as +02:00 / -0500.
_ZONE = re.compile(r".*[T ]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?\s*(Z|[+-]\d{2}:?\d{2})$", re.IGNORECASE)


def _zone(raw: Sequence[Any]) -> str:
    """A time column's zone, judged by its dtype or its first value: "naive" (none), "utc" or "offset"."""
    first = raw.iloc[0] if isinstance(raw, pd.Series) else next(iter(raw), None)
    if isinstance(first, str):
        match = _ZONE.match(first.strip())
        if match is None:
            return "naive"
        return "utc" if match.group(1).upper() in ("Z", "+00:00", "-00:00", "+0000", "-0000") else "offset"
    offset = first.utcoffset() if getattr(first, "tzinfo", None) is not None else None
    return "naive" if offset is None else "utc" if not offset else "offset"


def _iso_timestamp(value: Any) -> bool:
    """Whether pandas reads this one value as an ISO 8601 timestamp (the error path's search for the row)."""
    try:
        pd.to_datetime(value, utc=True, format="ISO8601")
        return True
    except (ValueError, TypeError, OverflowError):
        return False
