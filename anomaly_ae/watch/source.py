"""Prometheus as a data source: range queries in, one aligned multi-metric frame out.

Plain `httpx` against Prometheus' HTTP API (`/api/v1/query_range`) rather than
`prometheus-api-client`: we need four things from the API (a range query, timeouts, auth, TLS),
httpx is well kept and already what the tests speak, and the wrapper would add pandas-version pins,
matplotlib and dateparser for features we do not use.

Each spec metric is one query that must return one series per value of the spec's `series_label`.
Results become rows (timestamp, series label, metric columns...) on the step grid; a row is kept
only when every metric has a finite value at that step, so a metric's gap is a gap of the row,
which the series framing fills (short gaps) or restarts the window at (long ones). Everything that
was dropped or odd is counted in a `FrameReport`, never silently lost.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import httpx
import numpy as np
import pandas as pd

from anomaly_ae.exceptions import AnomalyAEError
from anomaly_ae.watch.spec import WatchSpec, WatchSpecError, credentials

TIME_COLUMN = "timestamp"
# Prometheus refuses a range query over more than 11,000 points per series; stay below it.
MAX_POINTS_PER_QUERY = 10_000
CUBE_CELLS = 20_000_000  # float64 cells (160 MB) per block of series when aligning results on the grid
QUERY_ERROR_REASONS = ("timeout", "unreachable", "http_error", "bad_response", "no_data", "too_many_series",
                       "bad_series")


class QueryError(AnomalyAEError):
    """A query failed; `reason` is one of QUERY_ERROR_REASONS (a bounded metric label)."""

    def __init__(self, metric: str, reason: str, message: str) -> None:
        super().__init__(f"query for metric '{metric}' failed ({reason}): {message}")
        self.metric = metric
        self.reason = reason


# One metric's result: series label value -> (timestamps in ms, float64 values)
SeriesPoints = dict[str, tuple[np.ndarray, np.ndarray]]


def tls_verification(tls: Any) -> Any:
    """httpx's `verify`: a bool, or an SSL context when the spec names a CA file or a client certificate
    (a client certificate is sent with or without a CA file of its own)."""
    if not (tls.ca_file or tls.cert_file):
        return not tls.insecure_skip_verify
    import ssl

    try:
        context = ssl.create_default_context(cafile=tls.ca_file)
        if tls.insecure_skip_verify:
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        if tls.cert_file:
            context.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise WatchSpecError(f"prometheus.tls: cannot load the CA file or client certificate ({exc}); check the "
                             "paths under tls in the spec, and that they are PEM files") from None
    return context


class PrometheusSource:
    """Range queries against one Prometheus, with the spec's auth, TLS and timeout."""

    def __init__(self, spec: WatchSpec, *, environ: dict[str, str] | None = None,
                 transport: httpx.BaseTransport | None = None, shard: int | None = None) -> None:
        self.spec = spec
        # `$shard` in a query (in a regex matcher: {shard=~"$shard"}) becomes this replica's index, or
        # `.*` (every shard) for training and backtests; see WatchSpec.sharded_queries
        self.queries = {name: query.replace("$shard", ".*" if shard is None else str(shard))
                        for name, query in spec.metrics.items()}
        target = spec.prometheus
        verify = tls_verification(target.tls)
        auth = credentials(target.auth, environ)
        # what an error text from Prometheus (or a proxy before it) must never repeat into logs
        self._secrets = [v for v in (*auth.get("auth", ()), *auth.get("headers", {}).values()) if len(v) >= 4]
        self._secrets += [v.split(" ", 1)[1] for v in auth.get("headers", {}).values() if " " in v]
        if "auth" in auth:  # basic auth travels as base64("user:password")
            self._secrets.append(base64.b64encode(":".join(auth["auth"]).encode()).decode())
        self._client = httpx.Client(base_url=target.url, timeout=target.timeout, verify=verify,
                                    transport=transport, **auth)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "PrometheusSource":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ queries
    def query_range(self, metric: str, start: float, end: float) -> SeriesPoints:
        """One spec metric over [start, end] on the spec's step, in chunks under Prometheus' point limit."""
        step = self.spec.step
        n_steps = int(math.floor((end - start) / step + 1e-9)) + 1
        if n_steps < 1:
            raise ValueError(f"empty range: start {start} is after end {end}")
        parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        for first in range(0, n_steps, MAX_POINTS_PER_QUERY):
            last = min(first + MAX_POINTS_PER_QUERY, n_steps) - 1
            result = self._request(metric, {"query": self.queries[metric], "start": _fmt(start + first * step),
                                            "end": _fmt(start + last * step), "step": _fmt(step)})
            for name, points in self._parse(metric, result).items():
                parts.setdefault(name, []).append(points)
        return {name: (np.concatenate([p[0] for p in chunks]), np.concatenate([p[1] for p in chunks]))
                for name, chunks in parts.items()}

    def _request(self, metric: str, params: dict[str, str]) -> list[dict[str, Any]]:
        timeout = self.spec.prometheus.timeout
        params = {**params, "timeout": _fmt(timeout)}
        # httpx's timeout bounds each read, so a server that trickles its answer (a byte a second) would hold
        # the step for good: the whole answer must arrive within `timeout`.
        deadline = time.monotonic() + timeout
        try:
            with self._client.stream("POST", "/api/v1/query_range", data=params) as response:
                chunks = []
                for chunk in response.iter_bytes():
                    chunks.append(chunk)
                    if time.monotonic() > deadline:
                        raise httpx.ReadTimeout("the answer did not arrive within the timeout")
                content = b"".join(chunks)
        except httpx.TimeoutException:
            raise QueryError(metric, "timeout", f"no complete answer from {self.spec.prometheus.url} within "
                                                f"{timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise QueryError(metric, "unreachable", f"cannot reach {self.spec.prometheus.url}: "
                                                    f"{type(exc).__name__}") from None
        try:
            body = json.loads(content)
        except ValueError:
            body = None
        if response.status_code != 200 or not isinstance(body, dict) or body.get("status") != "success":
            detail = str(body.get("error") if isinstance(body, dict) else content[:200].decode(errors="replace"))
            for secret in sorted(self._secrets, key=len, reverse=True):  # a 401 page may echo the credentials
                detail = detail.replace(secret, "***")
            detail = detail[:300]
            reason = "timeout" if isinstance(body, dict) and body.get("errorType") == "timeout" else "http_error"
            raise QueryError(metric, reason, f"Prometheus answered HTTP {response.status_code}: {detail}")
        data = body.get("data")
        if not isinstance(data, dict) or data.get("resultType") != "matrix" or not isinstance(data.get("result"), list):
            raise QueryError(metric, "bad_response", "the answer is not a range vector (a matrix); is the query "
                                                     "a scalar or a string?")
        return data["result"]

    def _parse(self, metric: str, result: list[dict[str, Any]]) -> SeriesPoints:
        label = self.spec.series_label
        points: SeriesPoints = {}
        for series in result:
            labels = series.get("metric", {})
            name = labels.get(label)
            if name is None:
                raise QueryError(metric, "bad_series", f"a series has no '{label}' label ({_labels(labels)}); keep "
                                                       f"it in the query, e.g. sum by ({label}) (...)")
            if name in points:
                raise QueryError(metric, "bad_series", f"more than one series has {label}=\"{name}\" "
                                                       f"(e.g. {_labels(labels)}); aggregate them to one per "
                                                       f"{label}, e.g. sum by ({label}) (...)")
            values = series.get("values") or []
            try:
                t = np.array([round(float(v[0]) * 1000) for v in values], dtype=np.int64)
                x = np.array([float(v[1]) for v in values], dtype=np.float64)
            except (TypeError, ValueError, IndexError):
                raise QueryError(metric, "bad_response", "a sample is not a [time, value] pair") from None
            points[name] = (t, x)
        return points


@dataclass
class FrameReport:
    """What a frame holds and what was dropped to build it, per series where it matters."""

    n_series: int = 0
    n_rows: int = 0
    incomplete_rows: int = 0                                  # steps where some metric had no finite value
    missing_metrics: dict[str, list[str]] = field(default_factory=dict)  # series -> metrics with no data at all
    gap_steps: dict[str, int] = field(default_factory=dict)   # series -> missing steps inside its range
    stale: list[str] = field(default_factory=list)            # series whose data ends before the range does
    dropped_series: list[str] = field(default_factory=list)   # over max_series
    empty_metrics: list[str] = field(default_factory=list)    # queries that returned no series at all

    def lines(self) -> list[str]:
        """Human-readable findings, one per kind (empty when all is well)."""
        out = []
        if self.empty_metrics:
            out.append(f"no series at all for: {', '.join(self.empty_metrics)}")
        if self.missing_metrics:
            some = list(self.missing_metrics.items())[:5]
            out.append(f"{len(self.missing_metrics)} series lack a metric and are left out: "
                       + "; ".join(f"{s} ({', '.join(m)})" for s, m in some))
        if self.incomplete_rows:
            out.append(f"{self.incomplete_rows} steps dropped where a metric had no value (gaps)")
        gaps = {s: n for s, n in self.gap_steps.items() if n}
        if gaps:
            worst = sorted(gaps.items(), key=lambda kv: -kv[1])[:5]
            out.append(f"{len(gaps)} series have gaps: " + ", ".join(f"{s} {n} steps" for s, n in worst))
        if self.stale:
            out.append(f"{len(self.stale)} series stopped before the end of the range (stale): "
                       + ", ".join(self.stale[:5]))
        if self.dropped_series:
            out.append(f"{len(self.dropped_series)} series over the cap of max_series were not used: "
                       + ", ".join(self.dropped_series[:5]))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"n_series": self.n_series, "n_rows": self.n_rows, "incomplete_rows": self.incomplete_rows,
                "missing_metrics": self.missing_metrics, "gap_steps": self.gap_steps, "stale": self.stale,
                "dropped_series": self.dropped_series, "empty_metrics": self.empty_metrics}


def build_frame(spec: WatchSpec, results: dict[str, SeriesPoints], start: float, end: float, *,
                keep: Callable[[str], bool] | None = None, max_series: int | None = None
                ) -> tuple[pd.DataFrame, FrameReport]:
    """Rows (timestamp, series label, metrics in spec order) where every metric has a finite value,
    sorted by series then time. `keep` says which series to use (a shard's); `max_series` caps
    them (sorted by name, the rest reported as dropped)."""
    report = FrameReport(empty_metrics=[m for m in spec.columns if not results.get(m)])
    names = set().union(*(set(results.get(m, {})) for m in spec.columns)) if results else set()
    if keep is not None:
        names = {name for name in names if keep(name)}
    complete = []
    for name in sorted(names):
        lacking = [m for m in spec.columns if name not in results.get(m, {})]
        if lacking:
            report.missing_metrics[name] = lacking
        else:
            complete.append(name)
    if max_series is not None and len(complete) > max_series:
        complete, report.dropped_series = complete[:max_series], complete[max_series:]
    step_ms = round(spec.step * 1000)
    start_ms, end_ms = round(start * 1000), round(end * 1000)
    n_grid = (end_ms - start_ms) // step_ms + 1
    # (series, step, metric) cubes, filled metric by metric, for blocks of series small enough to
    # hold (a watcher step: every series at once; two weeks of history: a few series at a time)
    per_series = n_grid * len(spec.columns)
    block = max(1, CUBE_CELLS // max(per_series, 1))
    parts = [_frame_block(spec, results, complete[i:i + block], start_ms, step_ms, n_grid, report)
             for i in range(0, len(complete), block)] or [_frame_block(spec, results, [], start_ms, step_ms, n_grid,
                                                                      report)]
    frame = parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)
    report.n_series = frame[spec.series_label].nunique()
    report.n_rows = len(frame)
    return frame, report


def _frame_block(spec: WatchSpec, results: dict[str, SeriesPoints], names: list[str], start_ms: int, step_ms: int,
                 n_grid: int, report: FrameReport) -> pd.DataFrame:
    cube = np.full((len(names), n_grid, len(spec.columns)), np.nan)
    for j, metric in enumerate(spec.columns):
        points = results[metric]
        for i, name in enumerate(names):
            t, x = points[name]
            slot = (t - start_ms) // step_ms
            inside = (slot >= 0) & (slot < n_grid) & ((t - start_ms) % step_ms == 0)
            cube[i, slot[inside], j] = x[inside]
    finite = np.isfinite(cube)
    ok = finite.all(axis=2)
    report.incomplete_rows += int((finite.any(axis=2) & ~ok).sum())
    counts = ok.sum(axis=1)
    first = np.where(counts > 0, ok.argmax(axis=1), 0)
    last = np.where(counts > 0, n_grid - 1 - ok[:, ::-1].argmax(axis=1), -1)
    for i, name in enumerate(names):
        if counts[i]:
            report.gap_steps[name] = int(last[i] - first[i] + 1 - counts[i])
        if last[i] < n_grid - 1:
            report.stale.append(name)
    series_idx, grid_idx = np.nonzero(ok)  # series by series, in time order
    frame = pd.DataFrame(cube[series_idx, grid_idx], columns=spec.columns)
    frame.insert(0, spec.series_label, np.asarray(names, dtype=object)[series_idx] if names
                 else np.zeros(0, dtype=object))
    frame.insert(0, TIME_COLUMN, pd.to_datetime(start_ms + grid_idx.astype(np.int64) * step_ms, unit="ms"))
    return frame


def fetch_frame(source: PrometheusSource, start: float, end: float, *, keep: Callable[[str], bool] | None = None,
                max_series: int | None = None) -> tuple[pd.DataFrame, FrameReport]:
    """Every spec metric over [start, end] (aligned to the step grid by the caller), as one frame."""
    results = {metric: source.query_range(metric, start, end) for metric in source.spec.columns}
    return build_frame(source.spec, results, start, end, keep=keep, max_series=max_series)


def frame_fingerprint(frame: pd.DataFrame) -> str:
    """Of the query results a model was trained on: same data from Prometheus, same fingerprint."""
    digest = hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    digest.update(",".join(frame.columns).encode())
    return digest.hexdigest()[:16]


def align(t: float, step: float) -> float:
    """The last step boundary at or before t (boundaries are multiples of the step since the epoch)."""
    return math.floor(t / step + 1e-9) * step


def _fmt(x: float) -> str:
    return f"{x:.3f}".rstrip("0").rstrip(".")


def _labels(labels: dict[str, str]) -> str:
    return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())[:6]) + "}"
