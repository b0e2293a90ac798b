"""Every Prometheus metric of the scoring service, defined once, and the helpers that record them.

Names carry the ``anomaly_ae_`` prefix and base units; label values are bounded (route templates,
status classes, fixed reason codes, at most ``drift_max_features`` feature names, and for series
models a ``series`` label only when the operator opts in: at most ``metrics_series_labels`` series
of the model's training data, every other series under ``series="other"``). With several
workers, prometheus_client's multiprocess mode is used: ``anomaly-ae serve`` points
``PROMETHEUS_MULTIPROC_DIR`` at an empty directory before any worker imports this module, and
``/metrics`` merges every worker's files. Gauges therefore declare how workers combine.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Iterable

import numpy as np
from prometheus_client import (CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram,
                               disable_created_metrics, generate_latest, multiprocess)

from anomaly_ae.calibration import SEVERITY_LEVELS
from anomaly_ae.service.multiproc import forget_dead_processes

# No `*_created` series: multiprocess mode (several workers) has none, so one worker's /metrics held a
# quarter more series than two workers' (and no dashboard or rule reads them).
disable_created_metrics()

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Scores live on each model's own scale (mean squared standardised error for autoencoders);
# log-spaced buckets cover every model type. P-values are conformal, in (0, 1].
SCORE_BUCKETS = tuple(float(f"{b:.3g}") for b in np.logspace(-3, 4, 22))
P_VALUE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0)
LOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

# ---------------------------------------------------------------------------- HTTP
HTTP_REQUESTS = Counter("anomaly_ae_http_requests_total", "HTTP requests by route template, method and status class.",
                        ["route", "method", "status"])
HTTP_DURATION = Histogram("anomaly_ae_http_request_duration_seconds",
                          "Time from receiving a request to sending its response, by route template and method.",
                          ["route", "method"], buckets=LATENCY_BUCKETS)
HTTP_IN_FLIGHT = Gauge("anomaly_ae_http_requests_in_flight", "Requests being handled right now.",
                       multiprocess_mode="livesum")
SCORING_IN_FLIGHT = Gauge("anomaly_ae_scoring_in_flight", "Scoring requests holding a scoring place (at most "
                          "max_concurrency per worker): saturation.", multiprocess_mode="livesum")
REQUESTS_REJECTED = Counter("anomaly_ae_requests_rejected_total",
                            "Scoring requests refused before scoring: overloaded (503) or no model loaded yet (503).",
                            ["reason"])
VALIDATION_ERRORS = Counter("anomaly_ae_validation_errors_total", "Requests refused as invalid, by reason code.",
                            ["reason"])
AUTH_FAILURES = Counter("anomaly_ae_auth_failures_total", "Requests refused by authentication (401) or "
                        "authorisation (403).", ["status"])
# ---------------------------------------------------------------------------- scoring
ROWS_SCORED = Counter("anomaly_ae_rows_scored_total", "Rows scored.")
ANOMALIES = Counter("anomaly_ae_anomalies_total", "Rows flagged as anomalous, by severity.", ["severity"])
SCORES = Histogram("anomaly_ae_score", "Anomaly scores of scored rows (on the model's own scale; compare with "
                   "anomaly_ae_model_threshold).", buckets=SCORE_BUCKETS)
P_VALUES = Histogram("anomaly_ae_p_value", "Conformal p-values of scored rows.", buckets=P_VALUE_BUCKETS)
# ---------------------------------------------------------------------------- series models
CONTEXT_ROWS = Counter("anomaly_ae_context_rows_total", "Rows sent to series models as context: scored to complete "
                       "the windows of new rows, not returned (not in rows_scored_total).")
ALERTS = Counter("anomaly_ae_alerts_total", "Alerts (series models' alert rule: k of n steps flagged, one per "
                 "incident) among returned rows.")
UNSEEN_SERIES_ROWS = Counter("anomaly_ae_unseen_series_rows_total", "Returned rows of series that were not in the "
                             "model's training data (scored with the shared model).")
SERIES_ROWS = Counter("anomaly_ae_series_rows_scored_total", "Rows scored per series (only with "
                      "metrics_series_labels > 0; series beyond that cap count as series=\"other\").", ["series"])
SERIES_ANOMALIES = Counter("anomaly_ae_series_anomalies_total", "Rows flagged as anomalous per series (only with "
                           "metrics_series_labels > 0; beyond the cap: series=\"other\").", ["series"])
SERIES_ALERTS = Counter("anomaly_ae_series_alerts_total", "Alerts per series (only with metrics_series_labels > 0; "
                        "beyond the cap: series=\"other\").", ["series"])
OTHER_SERIES = "other"
# ---------------------------------------------------------------------------- model lifecycle
MODEL_INFO = Gauge("anomaly_ae_model_info", "1 for the model version a worker serves (several during a rollout).",
                   ["name", "version", "alias", "model_type"], multiprocess_mode="livemax")
MODEL_DESIRED_INFO = Gauge("anomaly_ae_model_desired_info",
                           "1 for the version the model URI (e.g. its alias) resolved to at the last registry lookup, "
                           "served or not.", ["name", "version"], multiprocess_mode="livemax")
MODEL_VERSION_MISMATCH = Gauge("anomaly_ae_model_version_mismatch",
                               "1 while the model URI resolves to a version other than the one served (refused, "
                               "failing to load, or still loading); 0 when they agree.", multiprocess_mode="livemax")
MODEL_THRESHOLD = Gauge("anomaly_ae_model_threshold", "Score threshold of the served model.",
                        multiprocess_mode="mostrecent")
MODEL_LOADED_AT = Gauge("anomaly_ae_model_load_timestamp_seconds", "Unix time the served model was loaded.",
                        multiprocess_mode="livemax")
MODEL_READY = Gauge("anomaly_ae_model_ready", "1 when every live worker has a model loaded.",
                    multiprocess_mode="livemin")
MODEL_LOAD_DURATION = Histogram("anomaly_ae_model_load_duration_seconds",
                                "Time to download, load and smoke-test a model version.", buckets=LOAD_BUCKETS)
RELOAD_ATTEMPTS = Counter("anomaly_ae_model_reload_attempts_total",
                          "Model loads attempted, by trigger (startup, poll, admin).", ["trigger"])
RELOAD_FAILURES = Counter("anomaly_ae_model_reload_failures_total",
                          "Registry lookups or model loads that failed; the last good model kept serving.",
                          ["reason"])
# ---------------------------------------------------------------------------- input drift
FEATURE_MEAN_SHIFT = Gauge("anomaly_ae_feature_mean_shift",
                           "Rolling mean of a numeric input minus its training mean, in training standard "
                           "deviations.", ["feature"], multiprocess_mode="mostrecent")
FEATURE_MISSING_RATIO = Gauge("anomaly_ae_feature_missing_ratio", "Rolling share of missing values of an input.",
                              ["feature"], multiprocess_mode="mostrecent")
FEATURE_UNSEEN_RATIO = Gauge("anomaly_ae_feature_unseen_category_ratio",
                             "Rolling share of categories never seen in training, per categorical input.",
                             ["feature"], multiprocess_mode="mostrecent")
FEATURE_MISSING = Counter("anomaly_ae_feature_missing_values_total", "Missing input values, per input.",
                          ["feature"])
FEATURE_UNSEEN = Counter("anomaly_ae_feature_unseen_categories_total",
                         "Input values in categories never seen in training, per categorical input.", ["feature"])


# Every value these labels can take. Pre-creating the series at start-up means they exist at 0
# before the first event, so rate()/increase() and alert rules see the first one.
SEVERITIES = tuple(level for level in SEVERITY_LEVELS if level != "normal")
REJECTION_REASONS = ("overloaded", "not_ready")
AUTH_STATUSES = ("401", "403")
RELOAD_TRIGGERS = ("startup", "poll", "admin")
RELOAD_FAILURE_REASONS = ("registry_timeout", "registry_unavailable", "model_not_found", "load_timeout",
                          "smoke_test_failed", "load_error", "schema_changed")


def initialise_label_sets() -> None:
    for counter, values in ((ANOMALIES, SEVERITIES), (REQUESTS_REJECTED, REJECTION_REASONS),
                            (AUTH_FAILURES, AUTH_STATUSES), (RELOAD_ATTEMPTS, RELOAD_TRIGGERS),
                            (RELOAD_FAILURES, RELOAD_FAILURE_REASONS)):
        for value in values:
            counter.labels(value)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")


def registry() -> CollectorRegistry:
    """This process's registry, or one that merges every worker's files in multiprocess mode."""
    directory = multiprocess_dir()
    if directory:
        forget_dead_processes(directory)  # a killed worker's gauges must not be merged in
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)
        return merged
    return REGISTRY


def render() -> tuple[bytes, str]:
    """The exposition text of `registry()`."""
    return generate_latest(registry()), CONTENT_TYPE_LATEST


def mark_process_dead() -> None:
    if multiprocess_dir():
        multiprocess.mark_process_dead(os.getpid())


def observe_many(histogram: Histogram, values: np.ndarray) -> None:
    """Observe a whole batch with one increment per bucket instead of one call per value.

    Uses the histogram's bucket children (`_upper_bounds`, `_buckets`, `_sum`), stable across
    prometheus_client releases; falls back to per-value `observe` if they change.
    """
    values = np.asarray(values, dtype=np.float64)
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    if bounds is None or buckets is None or len(values) < 4:
        for v in values.tolist():
            histogram.observe(v)
        return
    histogram._sum.inc(float(values.sum()))
    counts = np.bincount(np.searchsorted(np.asarray(bounds), values, side="left"), minlength=len(bounds))
    for i in np.flatnonzero(counts).tolist():
        buckets[i].inc(int(counts[i]))


def record_scores(scores: np.ndarray, p_values: np.ndarray, severity: np.ndarray) -> None:
    ROWS_SCORED.inc(len(scores))
    observe_many(SCORES, scores)
    observe_many(P_VALUES, p_values)
    flagged = severity[severity != "normal"]
    if len(flagged):
        levels, counts = np.unique(flagged.astype(str), return_counts=True)
        for level, count in zip(levels.tolist(), counts.tolist()):
            ANOMALIES.labels(level).inc(count)


class SeriesMetrics:
    """What a series model's scored rows add to the metrics, with a bounded `series` label.

    Per-series counters only when `max_labels` > 0: the first `max_labels` series of the model's
    training data (sorted, as the model keeps them) get their own label, every other series
    (including any not seen in training) counts under "other", so the label takes at most
    max_labels + 1 values whatever clients send, the same in every worker."""

    def __init__(self, known_series: list[str], max_labels: int, has_series_col: bool,
                 max_known: int | None = None) -> None:
        self.known = frozenset(known_series)
        # beyond the model's cap on remembered series an id is unknown, not unseen (as the model's notes say)
        self.count_unseen = has_series_col and (max_known is None or len(known_series) < max_known)
        self.labelled = {name: name for name in known_series[:max_labels]} if max_labels > 0 else None
        if self.labelled is not None:
            for value in [*self.labelled, OTHER_SERIES]:  # exported at 0 from the start
                for counter in (SERIES_ROWS, SERIES_ANOMALIES, SERIES_ALERTS):
                    counter.labels(value)

    def record(self, series: np.ndarray, flagged: np.ndarray, alerts: np.ndarray, n_context: int) -> None:
        if n_context:
            CONTEXT_ROWS.inc(n_context)
        n_alerts = int(np.count_nonzero(alerts))
        if n_alerts:
            ALERTS.inc(n_alerts)
        if self.count_unseen:
            unseen = sum(1 for s in series.tolist() if s not in self.known)
            if unseen:
                UNSEEN_SERIES_ROWS.inc(unseen)
        if self.labelled is None or not len(series):
            return
        labels = np.asarray([self.labelled.get(s, OTHER_SERIES) for s in series.tolist()], dtype=object)
        values, codes = np.unique(labels.astype(str), return_inverse=True)
        rows = np.bincount(codes, minlength=len(values))
        anomalies = np.bincount(codes, weights=flagged.astype(np.float64), minlength=len(values))
        fired = np.bincount(codes, weights=alerts.astype(np.float64), minlength=len(values))
        for i, value in enumerate(values.tolist()):
            SERIES_ROWS.labels(value).inc(int(rows[i]))
            if anomalies[i]:
                SERIES_ANOMALIES.labels(value).inc(int(anomalies[i]))
            if fired[i]:
                SERIES_ALERTS.labels(value).inc(int(fired[i]))


def set_model(previous: tuple[str, str, str, str] | None, current: tuple[str, str, str, str], threshold: float,
              loaded_at: float) -> None:
    if previous is not None and previous != current:
        MODEL_INFO.labels(*previous).set(0)
    MODEL_INFO.labels(*current).set(1)
    MODEL_THRESHOLD.set(threshold)
    MODEL_LOADED_AT.set(loaded_at)
    MODEL_READY.set(1)


def set_desired(previous: tuple[str, str] | None, current: tuple[str, str], mismatch: bool) -> None:
    """The version the URI resolves to (name, version), and whether it differs from the served one."""
    if previous is not None and previous != current:
        MODEL_DESIRED_INFO.labels(*previous).set(0)
    MODEL_DESIRED_INFO.labels(*current).set(1)
    MODEL_VERSION_MISMATCH.set(1 if mismatch else 0)


class DriftTracker:
    """Exponentially weighted per-feature input statistics against the training reference.

    For each tracked numeric input: the rolling mean of (x - training mean) / training std, and the
    share of missing values; for each tracked categorical input: the share of unseen categories and
    of missing values. Each row weighs 1/window, so the gauges average over about `window` recent
    rows. Gauges are written at most every `publish_every_s` seconds (the statistics every batch).
    """

    def __init__(self, numeric: dict[str, dict[str, float]], categorical: dict[str, list[str]],
                 names: Iterable[str], max_features: int, window: int, publish_every_s: float = 1.0,
                 input_columns: dict[str, list[int]] | None = None) -> None:
        tracked = [n for n in names if n in numeric or n in categorical][:max_features]
        self.numeric = [n for n in tracked if n in numeric]
        # where each numeric input's standardised value sits in the model input (Preprocessor.groups)
        self.input_columns = [input_columns[n][0] for n in self.numeric] if input_columns else None
        self.categorical = [n for n in tracked if n in categorical]
        self.mean = np.array([numeric[n]["mean"] for n in self.numeric], dtype=np.float64)
        self.scale = np.array([numeric[n]["scale"] for n in self.numeric], dtype=np.float64)
        self.tracked = frozenset(tracked)
        self.alpha = 1.0 / max(1, window)
        self.shift = np.zeros(len(self.numeric))
        self.num_missing = np.zeros(len(self.numeric))
        self.cat_unseen = np.zeros(len(self.categorical))
        self.cat_missing = np.zeros(len(self.categorical))
        self.publish_every_s = publish_every_s
        self._published = 0.0
        self._lock = threading.Lock()  # requests score in worker threads, several at once

    def update(self, columns: dict[str, np.ndarray], missing: dict[str, int], unseen: dict[str, int],
               model_input: np.ndarray | None = None) -> None:
        if not self.numeric and not self.categorical:
            return
        with self._lock:
            self._update(columns, missing, unseen, model_input)

    def _update(self, columns: dict[str, np.ndarray], missing: dict[str, int], unseen: dict[str, int],
                model_input: np.ndarray | None) -> None:
        n = len(next(iter(columns.values())))
        w = 1.0 - (1.0 - self.alpha) ** n  # weight of this batch after n single-row updates
        if self.numeric:
            if model_input is not None and self.input_columns is not None and not missing:
                # no missing values: the model input already holds (x - mean) / std for every row
                z = model_input[:, self.input_columns].mean(0, dtype=np.float64)
                self.shift += w * (z - self.shift)
                self.num_missing -= w * self.num_missing
            else:
                x = np.column_stack([columns[name] for name in self.numeric])
                isnan = np.isnan(x)
                present = (~isnan).sum(0)
                z = np.where(isnan, 0.0, (x - self.mean) / self.scale).sum(0) / np.maximum(present, 1)
                self.shift = np.where(present > 0, self.shift + w * (z - self.shift), self.shift)
                self.num_missing += w * (isnan.mean(0) - self.num_missing)
        if self.categorical:
            for i, name in enumerate(self.categorical):
                self.cat_unseen[i] += w * (unseen.get(name, 0) / n - self.cat_unseen[i])
                self.cat_missing[i] += w * (missing.get(name, 0) / n - self.cat_missing[i])
        for name, count in missing.items():
            if name in self.tracked:
                FEATURE_MISSING.labels(name).inc(count)
        for name, count in unseen.items():
            if name in self.tracked:
                FEATURE_UNSEEN.labels(name).inc(count)
        now = time.monotonic()
        if now - self._published >= self.publish_every_s:
            self.publish()
            self._published = now

    def publish(self) -> None:
        for i, name in enumerate(self.numeric):
            FEATURE_MEAN_SHIFT.labels(name).set(float(self.shift[i]))
            FEATURE_MISSING_RATIO.labels(name).set(float(self.num_missing[i]))
        for i, name in enumerate(self.categorical):
            FEATURE_UNSEEN_RATIO.labels(name).set(float(self.cat_unseen[i]))
            FEATURE_MISSING_RATIO.labels(name).set(float(self.cat_missing[i]))
