"""The watcher: every step, fetch what is new from Prometheus, score each series' latest windows.

State is small and rebuilt from Prometheus after a restart or a model swap: per series, the last
`window - 1 + max_gap` steps (the context of the next window) and the alert rule's state. Each
evaluation at step boundary t fetches only the steps after the last one it scored. The first one
(and the first after a swap or a long outage) also fetches the context and, before the new steps,
the rule's lookback (`within - 1 + cooldown` steps): those are scored and fed to the rule without
alerting, so an incident that alerted before a restart does not page again inside its cooldown.
Every new step of every series is scored by the window ending at it, and the alert rule runs over
those steps in order. So a watcher that falls behind catches up without losing steps it still has
context for, and its scores and alerts over a range are those of an offline `SeriesDetector` pass
over the same range (complete data; see `docs/watch.md` for what differs across gaps).

No HTTP server and no metrics library here: `Watcher.snapshot()` is what the exposition layer
(`watch.exposition`) turns into Prometheus samples.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd

from anomaly_ae.calibration import AlertRule, AlertState
from anomaly_ae.exceptions import AnomalyAEError, ConfigurationError
from anomaly_ae.watch.source import (QUERY_ERROR_REASONS, TIME_COLUMN, FrameReport, PrometheusSource, QueryError,
                                     align, build_frame)
from anomaly_ae.watch.spec import WatchSpec

log = logging.getLogger("anomaly_ae.watch")

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True)
class Shard:
    """Replica `index` of `count` keeps the series whose stable hash falls to it: n replicas cover
    disjoint sets with no coordination, and a series stays on its replica across restarts."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str | None) -> "Shard":
        if not text:
            return cls()
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            raise ConfigurationError(f"--shard takes i/n (e.g. 0/3 for the first of 3 replicas), got {text!r}") from None
        if count < 1 or not 0 <= index < count:
            raise ConfigurationError(f"--shard {text}: need 0 <= i < n")
        return cls(index, count)

    def owns(self, series: str) -> bool:
        if self.count == 1:
            return True
        digest = hashlib.blake2b(series.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") % self.count == self.index


def model_columns(spec: WatchSpec, framing: Any) -> dict[str, str]:
    """Frame column -> the model's own name for time and series (it may have been trained from a file)."""
    return {TIME_COLUMN: framing.time_col or TIME_COLUMN, spec.series_label: framing.series_col}


@dataclass(frozen=True)
class SeriesScore:
    series: str
    timestamp: float
    score: float
    p_value: float
    anomalous: bool
    alert: bool
    top_metric: str
    top_share: float


@dataclass
class _SeriesState:
    rule: AlertState
    alerts: int = 0
    last_alert: float | None = None  # the step of the last alert
    last: SeriesScore | None = None


@dataclass
class WatchStats:
    """Counters and the latest state, as the exposition layer reads them (under the watcher's lock)."""

    queries: dict[str, int] = field(default_factory=dict)
    query_errors: dict[tuple[str, str], int] = field(default_factory=dict)
    # no_data: Prometheus answered, but nothing of this shard could be scored (no series, or none complete)
    evaluations: dict[str, int] = field(default_factory=lambda: {"ok": 0, "failed": 0, "no_data": 0})
    skipped_steps: int = 0
    reloads: dict[str, int] = field(default_factory=lambda: {"ok": 0, "failed": 0})
    duration_buckets: list[int] = field(default_factory=lambda: [0] * len(DURATION_BUCKETS))
    duration_count: int = 0
    duration_sum: float = 0.0
    last_step: float | None = None
    last_success: float | None = None
    n_series: int = 0
    n_dropped: int = 0
    n_stale: int = 0
    incomplete: dict[str, int] = field(default_factory=dict)  # metric -> series left out for lacking it

    def observe(self, seconds: float) -> None:
        self.duration_count += 1
        self.duration_sum += seconds
        for i, bound in enumerate(DURATION_BUCKETS):
            if seconds <= bound:
                self.duration_buckets[i] += 1


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    uri: str


@dataclass
class Snapshot:
    spec: WatchSpec
    shard: Shard
    model: ModelInfo
    threshold: float
    scores: list[SeriesScore]
    alerts_total: dict[str, int]
    last_alert: dict[str, float]
    stats: WatchStats
    now: float


def check_model_fits_spec(detector: Any, spec: WatchSpec, uri: str) -> list[str]:
    """Refuse a model that cannot score what the spec's queries return: a row model, one series, other
    metric columns or another step (the watcher and the backtest alike). Returns warnings: a metric
    queried otherwise than in training (the same column name over other units reads as an incident
    everywhere), or series grouped by another label."""
    framing = getattr(detector, "framing_", None)
    if framing is None:
        raise ConfigurationError(f"{uri} is a row model; the watcher needs a series model "
                                 "(train one with `anomaly-ae train --prometheus SPEC`)")
    if not framing.series_col:
        raise ConfigurationError(f"{uri} was trained on one series without a series column; the watcher "
                                 "scores many: train with a series column (`train --prometheus` does)")
    expected = list(spec.columns)
    if sorted(detector.schema_.names) != sorted(expected):  # by name: the order of the spec's keys is free
        raise ConfigurationError(f"{uri} was trained on columns {list(detector.schema_.names)} but the "
                                 f"spec's metrics are {expected}; train it from this spec or use its spec")
    if framing.step_seconds and abs(framing.step_seconds - spec.step) > 1e-6:
        raise ConfigurationError(f"{uri} was trained at a step of {framing.step_seconds:g} s but the spec's "
                                 f"step is {spec.step:g} s; use the same step")
    trained = (getattr(detector, "training_metadata_", None) or {}).get("source") or {}
    notes = [f"metric '{column}' is queried as {spec.metrics[column]!r} but {uri} was trained on {query!r}: "
             "if its unit or meaning changed, every score is off; train again from this spec"
             for column, query in (trained.get("metrics") or {}).items()
             if column in spec.metrics and " ".join(spec.metrics[column].split()) != " ".join(str(query).split())]
    if trained.get("series_label") not in (None, spec.series_label):
        notes.append(f"{uri} was trained on series by '{trained['series_label']}', the spec groups them by "
                     f"'{spec.series_label}': its series are new to the model (scored with the shared model)")
    return notes


class Watcher:
    """Scores one shard of the spec's series with one SeriesDetector, step by step."""

    def __init__(self, spec: WatchSpec, source: PrometheusSource, detector: Any, model: ModelInfo, *,
                 shard: Shard = Shard(), clock: Callable[[], float] = time.time) -> None:
        self.spec = spec
        self.source = source
        self.shard = shard
        self.clock = clock
        self.stats = WatchStats(queries={m: 0 for m in spec.columns}, incomplete={m: 0 for m in spec.columns})
        self._lock = threading.Lock()
        self._use(detector, model)

    # ------------------------------------------------------------------ the model
    def _use(self, detector: Any, model: ModelInfo) -> None:
        for note in check_model_fits_spec(detector, self.spec, model.uri):
            log.warning(note)
        framing = detector.framing_
        with self._lock:
            self.detector, self.model = detector, model
            self.window = int(framing.window)
            self.context_steps = self.window - 1 + int(framing.max_gap)
            self.rule: AlertRule = detector.alert_rule_
            self._rename = model_columns(self.spec, framing)
            self._buffer: pd.DataFrame | None = None
            # alert counts survive a swap (they are counters); the rule state is rebuilt with the new model
            self._states: dict[str, _SeriesState] = getattr(self, "_states", {})
            for state in self._states.values():
                state.rule = self.rule.start()

    def swap_model(self, detector: Any, model: ModelInfo) -> None:
        """Serve a new model from the next step (its own context and alert state, rebuilt from Prometheus:
        the next evaluation scores the rule's lookback with the new model, without alerting)."""
        self._use(detector, model)
        log.info("watching with model %s version %s", model.name, model.version)

    # ------------------------------------------------------------------ one step
    def evaluate(self, t: float) -> list[SeriesScore]:
        """Fetch and score every step after the last one scored, up to step boundary `t`.

        Raises QueryError when a query fails (nothing is lost: the next call fetches from the
        same point); returns the new scores in time order."""
        started = time.perf_counter()
        step = self.spec.step
        t = align(t, step)
        last = self.stats.last_step
        oldest = t - self.context_steps * step  # the context the new steps' windows need
        if last is not None and t <= last:
            return []
        first_new = t if last is None else last + step
        if first_new < oldest:  # behind by more than the context: those steps are given up
            skipped = int(round((oldest - first_new) / step))
            self.stats.skipped_steps += skipped
            log.warning("fell %d steps behind; resuming at the newest %d", skipped, self.context_steps + 1)
            first_new, self._buffer = oldest, None
        # the buffer holds the context of first_new when it exists; else fetch that context too, and
        # the alert rule's lookback before first_new (scored to rebuild each series' rule state)
        cold = self._buffer is None
        warm_from = first_new - self.rule.lookback * step if cold else first_new
        fetch_from = warm_from - self.context_steps * step if cold else first_new
        try:
            results = {}
            for metric in self.spec.columns:
                self.stats.queries[metric] += 1
                results[metric] = self.source.query_range(metric, fetch_from, t)
        except QueryError as exc:
            self._failed(exc, started)
            raise
        # queries that select the shard themselves ($shard) need no second, different hash here
        keep = None if self.spec.sharded_queries else self.shard.owns
        frame, report = build_frame(self.spec, results, fetch_from, t, keep=keep,
                                    max_series=self.spec.watch.max_series)
        self._count_report(report)
        scores = self._score(frame, warm_from, first_new, t)
        returned = set().union(*results.values())
        # a shard none of whose series Prometheus returned has nothing to score: that is a success
        scored = bool(scores) or (bool(returned) and keep is not None and not any(map(keep, returned)))
        if cold and not scores:
            self._buffer = None  # so the next evaluation fetches the context again
        with self._lock:
            self.stats.evaluations["ok" if scored else "no_data"] += 1
            self.stats.last_step = t
            if scored:  # an empty answer is not a success: AnomalyAEWatchStale must see it
                self.stats.last_success = self.clock()
            self.stats.observe(time.perf_counter() - started)
        return scores

    def _failed(self, exc: QueryError, started: float) -> None:
        with self._lock:
            key = (exc.metric, exc.reason)
            self.stats.query_errors[key] = self.stats.query_errors.get(key, 0) + 1
            self.stats.evaluations["failed"] += 1
            self.stats.observe(time.perf_counter() - started)

    def _count_report(self, report: FrameReport) -> None:
        with self._lock:
            for metric in report.empty_metrics:
                key = (metric, "no_data")
                self.stats.query_errors[key] = self.stats.query_errors.get(key, 0) + 1
            if report.dropped_series:
                key = ("*", "too_many_series")
                self.stats.query_errors[key] = self.stats.query_errors.get(key, 0) + 1
            self.stats.n_dropped = len(report.dropped_series)
            self.stats.incomplete = {m: 0 for m in self.spec.columns}
            for lacking in report.missing_metrics.values():
                for metric in lacking:
                    self.stats.incomplete[metric] += 1
        for line in report.lines():
            log.warning("%s", line)

    def _score(self, new: pd.DataFrame, warm_from: float, first_new: float, t: float) -> list[SeriesScore]:
        """Score the steps from `warm_from` to `t`; those before `first_new` only feed the alert rule."""
        step, label = self.spec.step, self.spec.series_label
        buffer = new if self._buffer is None else pd.concat([self._buffer, new], ignore_index=True)
        buffer = buffer[buffer[TIME_COLUMN] >= pd.Timestamp(warm_from - self.context_steps * step, unit="s")]
        buffer = buffer.sort_values([label, TIME_COLUMN], kind="stable").reset_index(drop=True)
        # what the next step's windows need
        self._buffer = buffer[buffer[TIME_COLUMN] >= pd.Timestamp(t - self.context_steps * step, unit="s")]
        rows = np.flatnonzero((buffer[TIME_COLUMN] >= pd.Timestamp(warm_from, unit="s")).to_numpy())
        out: list[SeriesScore] = []
        if len(rows):
            result = self.detector.inference_.score(buffer.rename(columns=self._rename), top_k=1, rows=rows)
            times = buffer[TIME_COLUMN].to_numpy()[rows].astype("datetime64[ms]").astype(np.int64) / 1000.0
            names = buffer[label].to_numpy()[rows]
            warmed: set[str] = set()
            with self._lock:
                for i in range(len(rows)):  # buffer order: series, then time: the rule sees each series in order
                    name = str(names[i])
                    if times[i] < first_new - step / 2:
                        self._warm(name, bool(result.is_anomaly[i]), fresh=name not in warmed)
                        warmed.add(name)
                    else:
                        out.append(self._advance(name, float(times[i]), result, i))
        seen_now = {s.series for s in out if s.timestamp == t}
        with self._lock:
            horizon = t - self.context_steps * step
            for name in [n for n, st in self._states.items() if st.last is None or st.last.timestamp < horizon]:
                del self._states[name]  # gone longer than a window: its alert state would be stale
            self.stats.n_series = len(seen_now)
            self.stats.n_stale = sum(1 for n in self._states if n not in seen_now)
        return sorted(out, key=lambda s: (s.timestamp, s.series))

    def _state(self, name: str) -> _SeriesState:
        state = self._states.get(name)
        if state is None:
            state = self._states[name] = _SeriesState(rule=self.rule.start())
        return state

    def _warm(self, name: str, anomalous: bool, *, fresh: bool) -> None:
        """A step before the new ones: rebuilds the series' rule state (from a new one at its first)."""
        state = self._state(name)
        if fresh:
            state.rule = self.rule.start()
        state.rule.step(anomalous)

    def _advance(self, name: str, timestamp: float, result: Any, i: int) -> SeriesScore:
        state = self._state(name)
        anomalous = bool(result.is_anomaly[i])
        alert = state.rule.step(anomalous)  # what AlertRule.apply gives offline, one step at a time
        if alert:
            state.alerts += 1
            state.last_alert = timestamp
            log.info("alert: %s at %s: score %.4g above the threshold %.4g in %d of the last %d steps; top metric %s "
                     "(%.0f%%)", name, _iso(timestamp), float(result.scores[i]), float(self.detector.threshold_),
                     sum(state.rule.recent), self.rule.within, result.top_features[i][0],
                     100 * float(result.top_contributions[i][0]))
        state.last = SeriesScore(series=name, timestamp=timestamp, score=float(result.scores[i]),
                                 p_value=float(result.p_values[i]), anomalous=anomalous, alert=alert,
                                 top_metric=str(result.top_features[i][0]),
                                 top_share=float(result.top_contributions[i][0]))
        return state.last

    # ------------------------------------------------------------------ what /metrics shows
    def snapshot(self) -> Snapshot:
        with self._lock:
            t = self.stats.last_step
            current = [st.last for st in self._states.values() if st.last is not None and st.last.timestamp == t]
            return Snapshot(spec=self.spec, shard=self.shard, model=self.model,
                            threshold=float(self.detector.threshold_), scores=current,
                            alerts_total={n: st.alerts for n, st in self._states.items()},
                            last_alert={n: st.last_alert for n, st in self._states.items()
                                        if st.last_alert is not None},
                            stats=copy.deepcopy(self.stats), now=self.clock())


class ModelSource:
    """Loads the watched model and notices when its URI (an alias) points to a new version."""

    def __init__(self, uri: str, *, tracking_uri: str | None = None) -> None:
        self.uri = uri
        self.tracking_uri = tracking_uri

    def resolve(self) -> ModelInfo:
        from anomaly_ae.registry import resolve_model

        ref = resolve_model(self.uri, tracking_uri=self.tracking_uri)
        return ModelInfo(name=str(ref.name), version=str(ref.version), uri=self.uri)

    def load(self) -> tuple[Any, ModelInfo]:
        from anomaly_ae.registry import load_model

        detector, ref = load_model(self.uri, tracking_uri=self.tracking_uri)
        return detector, ModelInfo(name=str(ref.name), version=str(ref.version), uri=self.uri)


class WatchLoop:
    """Runs the watcher on step boundaries (plus the evaluation delay) until stopped: retries
    failed steps with backoff, reloads the model when its alias moves, never raises."""

    def __init__(self, watcher: Watcher, models: ModelSource | None = None, *, reload_interval: float = 60.0,
                 clock: Callable[[], float] = time.time, stop_event: threading.Event | None = None) -> None:
        self.watcher = watcher
        self.models = models
        self.reload_interval = reload_interval
        self.clock = clock
        self.stop_event = stop_event or threading.Event()
        self.heartbeat = clock()
        self._failures = 0
        self._next_reload = clock() + reload_interval

    def run(self) -> None:
        spec = self.watcher.spec
        delay = spec.watch.evaluation_delay
        while not self.stop_event.is_set():
            self.heartbeat = self.clock()
            t = align(self.clock() - delay, spec.step)
            try:
                self.watcher.evaluate(t)
                self._failures = 0
            except QueryError as exc:
                self._failures += 1
                log.warning("step %s not scored: %s (attempt %d; retrying)", _iso(t), exc, self._failures)
            except AnomalyAEError as exc:  # bad data for the model: say so, keep watching
                self._failures += 1
                log.error("step %s not scored: %s", _iso(t), exc)
            except Exception:  # a bug must not stop the watching; it is logged with its traceback
                self._failures += 1
                log.exception("step %s not scored: unexpected error", _iso(t))
            self._maybe_reload()
            self.stop_event.wait(self._wait_seconds())

    def _wait_seconds(self) -> float:
        spec = self.watcher.spec
        now = self.clock()
        next_step = align(now - spec.watch.evaluation_delay, spec.step) + spec.step + spec.watch.evaluation_delay
        wait = next_step - now
        if self._failures:  # back off while Prometheus is down: 1, 2, 4... steps, at most 5 minutes
            wait += spec.step * min(2 ** (self._failures - 1) - 1, max(1, int(300 / spec.step)))
        return max(0.0, min(wait, 300.0))

    def _maybe_reload(self) -> None:
        if self.models is None or self.clock() < self._next_reload:
            return
        self._next_reload = self.clock() + self.reload_interval
        stats = self.watcher.stats
        try:
            info = self.models.resolve()
            if info.version == self.watcher.model.version and info.name == self.watcher.model.name:
                return
            detector, info = self.models.load()
            self.watcher.swap_model(detector, info)
            stats.reloads["ok"] += 1
        except Exception as exc:  # the last good model keeps watching
            stats.reloads["failed"] += 1
            log.error("model reload from %s failed; still watching with version %s: %s", self.models.uri,
                      self.watcher.model.version, exc)

    def stop(self) -> None:
        self.stop_event.set()


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


__all__ = ["DURATION_BUCKETS", "ModelInfo", "ModelSource", "QUERY_ERROR_REASONS", "SeriesScore", "Shard",
           "Snapshot", "WatchLoop", "WatchStats", "Watcher"]
