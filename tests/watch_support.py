"""Helpers for the watch tests: a real Prometheus that holds synthetic history and scrapes live targets.

A test builds a frame (`make_series_telemetry`), backfills its first rows into TSDB blocks with
promtool (`anomaly_ae.watch.simulate`), starts Debian's `prometheus` on that data directory on
127.0.0.1 and a free port, and points it at a `SyntheticExporter` serving the following rows live
(and at the watcher's /metrics, when there is one). Binaries come from `prometheus_support`, which
installs or skips. Everything waits on conditions with deadlines; every server started here is
stopped when its `with` block or fixture ends (and, as a last resort, when the interpreter exits).

Things learnt from Prometheus 2.42 that shape these helpers:

- Prometheus refuses scraped samples older than the newest block's end ("out of bounds"), `up`
  included. The history must therefore end before the first scrape: `history_prometheus` writes
  only rows at or before `end` (default: now).
- Scraped samples get `job` and `instance`, backfilled ones do not: two series per host, and for
  5 minutes after the history ends (the lookback) a plain selector returns both. The synthetic job
  drops those two labels (`metric_relabel_configs`), so the live samples extend the backfilled series.
- The first scrape comes about 5 s after start (service discovery sends targets every 5 s).
"""

from __future__ import annotations

import atexit
import math
import socket
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pandas as pd
import pytest

from prometheus_support import prometheus, promtool

from anomaly_ae.data.synthetic_series import SERIES_METRIC_COLUMNS
from anomaly_ae.watch.simulate import (DEFAULT_MAX_BLOCK_DURATION, SYNTHETIC_JOB, LocalPrometheus, create_blocks,
                                       openmetrics_history)


T = TypeVar("T")


def free_port() -> int:
    """A loopback port free right now (the OS's choice; another process could take it before use)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], T], *, timeout: float = 30.0, interval: float = 0.2,
               what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy (returned) or ``timeout`` seconds pass
    (AssertionError naming ``what`` and the last value)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")
        time.sleep(interval)


class PrometheusQueryError(RuntimeError):
    """Prometheus answered a query with an error (bad PromQL, too many points...)."""


_RUNNING: weakref.WeakSet[PrometheusServer] = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:  # a test that forgot its `with` must not leave a prometheus behind
    for server in list(_RUNNING):
        server.stop()


class PrometheusServer(LocalPrometheus):
    """The package's `LocalPrometheus` (Debian's binary from `prometheus_support`, the lifecycle API
    on) with the HTTP API helpers the tests use, stopped at interpreter exit if a test forgot.
    Use as a context manager, or call :meth:`stop`."""

    def __init__(self, data_dir: Path, *, scrape_targets: Sequence[str] = (),
                 jobs: Mapping[str, Sequence[str]] | None = None, scrape_interval: str = "1s",
                 port: int | None = None, log_path: Path | None = None) -> None:
        super().__init__(data_dir, binary=prometheus(), synthetic_targets=scrape_targets, jobs=dict(jobs or {}),
                         scrape_interval=scrape_interval, port=port, log_path=log_path,
                         extra_args=["--web.enable-lifecycle"])
        self._client = httpx.Client(base_url=self.url, timeout=30)

    def start(self, timeout: float = 60.0) -> PrometheusServer:
        _RUNNING.add(self)
        super().start(timeout)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        _RUNNING.discard(self)
        super().stop(timeout)

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._client.close()

    # ------------------------------------------------------------------ HTTP API
    def _api(self, path: str, params: dict[str, str]) -> Any:
        response = self._client.post(f"/api/v1/{path}", data=params)
        try:
            body = response.json()
        except ValueError:
            body = {"status": "error", "error": response.text[:500]}
        if response.status_code != 200 or body.get("status") != "success":
            raise PrometheusQueryError(f"{path} {params}: HTTP {response.status_code}: {body.get('error', body)}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        """An instant query's ``result`` (vector: ``value`` [t, "v"]; range selector: ``values``)."""
        params = {"query": expr} if at is None else {"query": expr, "time": _seconds(at)}
        return self._api("query", params)["result"]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict]:
        """A range query's ``result``: one {"metric", "values": [[t, "v"], ...]} per series."""
        return self._api("query_range", {"query": expr, "start": _seconds(start), "end": _seconds(end),
                                         "step": _seconds(step)})["result"]

    def value(self, expr: str, at: float | None = None) -> float | None:
        """The single value an instant query returns, None when it returns nothing."""
        result = self.query(expr, at)
        if len(result) > 1:
            raise AssertionError(f"{expr} returned {len(result)} series: {result[:3]}")
        return float(result[0]["value"][1]) if result else None

    def samples(self, expr: str, label: str, at: float | None = None) -> dict[str, list[tuple[float, float]]]:
        """{value of ``label``: [(t, v), ...]} of a range selector (``metric[1m]``): raw samples,
        at their own timestamps (ms precision)."""
        return {r["metric"].get(label, ""): [(float(t), float(v)) for t, v in r["values"]]
                for r in self.query(expr, at)}

    def range_by(self, expr: str, label: str, start: float, end: float, step: float
                 ) -> dict[str, list[tuple[float, float]]]:
        """{value of ``label``: [(t, v), ...]} of a range query (one series per label value expected)."""
        out: dict[str, list[tuple[float, float]]] = {}
        for r in self.query_range(expr, start, end, step):
            key = r["metric"].get(label, "")
            if key in out:
                raise AssertionError(f"{expr} returned two series with {label}={key!r}")
            out[key] = [(float(t), float(v)) for t, v in r["values"]]
        return out

    def wait_scraped(self, job: str = SYNTHETIC_JOB, timeout: float = 30.0) -> None:
        """Wait until every target of ``job`` has been scraped successfully (the first scrape comes
        ~5 s after start: service discovery publishes targets every 5 s)."""
        def up() -> bool:
            values = [float(r["value"][1]) for r in self.query(f'up{{job="{job}"}}')]
            return bool(values) and all(v == 1 for v in values)

        wait_until(up, timeout=timeout, what=f"job {job!r} to be scraped")


def _seconds(t: float) -> str:
    """Unix seconds as the API wants them, exact to the millisecond."""
    if not math.isfinite(t):
        raise ValueError(f"not a finite time: {t!r}")
    return f"{t:.3f}"


def history_prometheus(tmp_dir: Path, frame: pd.DataFrame, *, start: float, step_seconds: float,
                       scrape_targets: Sequence[str] = (), jobs: Mapping[str, Sequence[str]] | None = None,
                       end: float | None = None, series_col: str = "host",
                       metrics: Sequence[str] = SERIES_METRIC_COLUMNS, prefix: str = "demo_",
                       scrape_interval: str = "1s", max_block_duration: str | None = DEFAULT_MAX_BLOCK_DURATION,
                       timeout: float = 60.0) -> PrometheusServer:
    """Backfill ``frame`` (row i of each series at ``start + i * step_seconds``, rows up to ``end``,
    default now) into ``tmp_dir/tsdb`` and start a Prometheus on it that scrapes ``scrape_targets``
    (as :data:`SYNTHETIC_JOB`) and ``jobs``. Returns the started server: use it in a ``with`` block
    (or stop it) so it is stopped at teardown.

    The default ``end`` keeps future rows out of the blocks: a block ending after the first scrape
    would make Prometheus drop every scraped sample until that time (see the module docstring).
    """
    tmp_dir = Path(tmp_dir)
    data_dir = tmp_dir / "tsdb"
    text = openmetrics_history(frame, start=start, step_seconds=step_seconds, series_col=series_col,
                               metrics=metrics, prefix=prefix, end=time.time() if end is None else end)
    create_blocks(text, data_dir, promtool=promtool(), max_block_duration=max_block_duration)
    server = PrometheusServer(data_dir, scrape_targets=scrape_targets, jobs=jobs, scrape_interval=scrape_interval,
                              log_path=tmp_dir / "prometheus.log")
    return server.start(timeout)


@pytest.fixture
def prometheus_servers() -> Iterator[list[PrometheusServer]]:
    """A list to append PrometheusServer objects to; every one is stopped at teardown."""
    servers: list[PrometheusServer] = []
    yield servers
    for server in servers:
        server.stop()
