"""Synthetic telemetry in a real Prometheus: backfilled history, and a live exporter that continues it.

`anomaly-ae watch` reads its data from Prometheus, so its tests and demos need a Prometheus that
holds days of known series and keeps receiving new samples. This module puts a synthetic frame
(:func:`anomaly_ae.data.synthetic_series.make_series_telemetry`) there in two parts that share one
clock, ``time(i) = start + i * step_seconds`` for the i-th row of each series:

- the history, written as OpenMetrics (:func:`openmetrics_history`) and turned into TSDB blocks
  with ``promtool tsdb create-blocks-from openmetrics`` (:func:`create_blocks`) before Prometheus
  starts on that directory;
- the present, served on ``/metrics`` by :class:`SyntheticExporter`, which at wall time ``w``
  serves the row whose slot holds ``w``, so a Prometheus scraping it sees the same series go on.

The frame's own ``ts`` column is ignored: a test places (and compresses) days of synthetic data
wherever it needs them, e.g. a 5-minute-step frame replayed at 15 s. Values are written with
``repr`` so the float Prometheus stores, and returns through its HTTP API, is the frame's float64
exactly: a test can compare what the watcher read with the frame using ``==``.

A NaN in the frame is a missing reading: no sample is written or served for it (Prometheus has no
"missing" value; a NaN sample would be a reading of NaN). Only numpy, pandas and the standard library
are used, so the module imports nothing the service does not already need.
"""

from __future__ import annotations

import http.server
import math
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from anomaly_ae.data.synthetic_series import SERIES_METRIC_COLUMNS

__all__ = ["LocalPrometheus", "SYNTHETIC_JOB", "SyntheticExporter", "create_blocks", "demo_spec", "metric_name", "openmetrics_history"]

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # the Prometheus text format


def metric_name(column: str, prefix: str = "demo_") -> str:
    """The Prometheus metric name of a frame column: ``prefix + column`` ("demo_cpu_util_pct").

    The prefix keeps synthetic series apart from real ones in a shared Prometheus; a name that
    Prometheus would refuse is an error here rather than a promtool or scrape failure later.
    """
    name = f"{prefix}{column}"
    if not _METRIC_NAME.fullmatch(name):
        raise ValueError(f"{name!r} (prefix {prefix!r} + column {column!r}) is not a valid Prometheus metric name")
    return name


def format_value(value: float) -> str:
    """A float as Prometheus parses it back to the same float64: ``repr`` is the shortest string
    that round-trips (Go's ParseFloat reads it to the same bits); infinities in Prometheus' spelling."""
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _check_clock(start: float, step_seconds: float) -> None:
    if not (isinstance(start, (int, float)) and math.isfinite(start)):
        raise ValueError(f"start must be a finite number of unix seconds, got {start!r}")
    if not (isinstance(step_seconds, (int, float)) and math.isfinite(step_seconds) and step_seconds > 0):
        raise ValueError(f"step_seconds must be a positive number of seconds, got {step_seconds!r}")


def _split_series(frame: pd.DataFrame, series_col: str, metrics: Sequence[str]
                  ) -> list[tuple[str, np.ndarray]]:
    """(series value, rows x metrics float64 array) per series, series in sorted order and rows in
    the frame's order (which is their time order: row i is step i)."""
    if not _LABEL_NAME.fullmatch(series_col) or series_col.startswith("__"):
        raise ValueError(f"series_col {series_col!r} is not usable as a Prometheus label name")
    missing = [c for c in (series_col, *metrics) if c not in frame.columns]
    if missing:
        raise ValueError(f"frame has no column(s) {missing}; it has {list(frame.columns)}")
    if not metrics:
        raise ValueError("metrics is empty")
    values = frame[list(metrics)].to_numpy(dtype=np.float64)
    keys = frame[series_col].astype(str).to_numpy()
    return [(key, values[keys == key]) for key in sorted(set(keys))]


def _row_times_ms(n_rows: int, start: float, step_seconds: float) -> np.ndarray:
    """Row times in whole milliseconds (Prometheus' resolution), from the one clock both halves use."""
    return np.round((start + np.arange(n_rows) * step_seconds) * 1000.0).astype(np.int64)


def _format_ms(ms: int) -> str:
    """Unix milliseconds as the exact decimal seconds OpenMetrics wants (``1700000000.015``)."""
    text = f"{ms // 1000}.{ms % 1000:03d}"
    # promtool stores int64(float(text) * 1000): make sure that is ms and not ms - 1.
    if int(float(text) * 1000) != ms:
        text += "5"  # half a millisecond up: the truncation lands on ms
    return text


def openmetrics_history(frame: pd.DataFrame, *, start: float, step_seconds: float, series_col: str = "host",
                        metrics: Sequence[str] = SERIES_METRIC_COLUMNS, prefix: str = "demo_",
                        end: float | None = None) -> str:
    """The frame as OpenMetrics text for ``promtool tsdb create-blocks-from openmetrics``.

    One gauge family per metric column (``prefix + column``), one series per value of
    ``series_col`` (label of the same name), the i-th row of each series at ``start + i *
    step_seconds`` (rounded to the millisecond). The frame's ``ts`` column is ignored. Samples are
    grouped per family, then per series, in time order, as promtool needs them (it refuses
    out-of-order samples). Rows after ``end`` (unix seconds), if given, are left out: they are the
    live exporter's to serve, and a block reaching past the first scrape would make Prometheus
    refuse scraped samples as out of bounds. NaN values are left out (a gap).
    """
    _check_clock(start, step_seconds)
    series = _split_series(frame, series_col, metrics)
    longest = max(len(values) for _, values in series)
    times = _row_times_ms(longest, start, step_seconds)
    if end is not None:
        longest = int(np.searchsorted(times, round(end * 1000), side="right"))
    stamps = [_format_ms(t) for t in times[:longest].tolist()]  # formatted once, shared by every series
    out: list[str] = []
    for j, column in enumerate(metrics):
        name = metric_name(column, prefix)
        out.append(f"# TYPE {name} gauge")
        out.append(f"# HELP {name} Synthetic {column} per {series_col} (anomaly_ae.watch.simulate).")
        for key, values in series:
            head = f'{name}{{{series_col}="{_escape_label_value(key)}"}} '
            out.extend(f"{head}{format_value(v)} {stamp}"
                       for v, stamp in zip(values[:longest, j].tolist(), stamps) if v == v)  # v != v: NaN
    out.append("# EOF")
    return "\n".join(out) + "\n"


# promtool re-reads the whole input once per block it writes: with its default 2 h blocks, 14 days
# at 15 s for 3 hosts (169 blocks) took 259 s; with blocks of up to 8760 h (promtool aligns them
# to 2 h * 3**k, here 4374 h) it writes 1-2 blocks in 6 s. Big blocks only matter for retention,
# which deletes whole blocks: irrelevant to a test or demo Prometheus.
DEFAULT_MAX_BLOCK_DURATION = "8760h"


def create_blocks(openmetrics_text: str, data_dir: Path, promtool: str = "promtool",
                  max_block_duration: str | None = DEFAULT_MAX_BLOCK_DURATION) -> None:
    """Write TSDB blocks of ``openmetrics_text`` into ``data_dir`` with promtool (2.42's CLI:
    ``promtool tsdb create-blocks-from openmetrics [--max-block-duration=D] FILE DIR``; the flag
    is hidden from ``--help`` in 2.42 but accepted).

    Run it before Prometheus starts on ``data_dir``: a running Prometheus only picks new blocks up
    at its next block reload. ``max_block_duration`` None is promtool's default (2 h blocks, slow
    for long histories: see :data:`DEFAULT_MAX_BLOCK_DURATION`). The data must end before the
    first sample Prometheus will scrape into the same directory (it refuses samples older than
    the newest block's end). Raises RuntimeError with promtool's output when it fails (bad input,
    out-of-order samples).
    """
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="openmetrics-") as tmp:
        source = Path(tmp) / "history.om"
        source.write_text(openmetrics_text, encoding="utf-8")
        command = [promtool, "tsdb", "create-blocks-from", "openmetrics"]
        if max_block_duration is not None:
            command.append(f"--max-block-duration={max_block_duration}")
        command += [str(source), str(data_dir)]
        try:
            result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise RuntimeError(f"{' '.join(command)} could not run: {error}") from error
    if result.returncode != 0:
        raise RuntimeError(f"promtool tsdb create-blocks-from openmetrics exited {result.returncode}: "
                           f"{(result.stderr or result.stdout).strip()[-4000:]}")


class SyntheticExporter:
    """A threaded HTTP server whose ``GET /metrics`` serves the frame's present, one row per series.

    At wall time ``w`` it serves row ``floor((w - start) / step_seconds)`` of each series (the last
    row once the frame is exhausted, nothing before ``start``), so with the ``start`` and
    ``step_seconds`` of :func:`openmetrics_history` the scraped series continue the backfilled
    ones. It serves no timestamps: Prometheus stamps each sample with its scrape time, as for any
    exporter, so a sample scraped at ``t`` holds the row of ``t`` (give or take the few
    milliseconds between Prometheus taking the time and the request arriving, at a row boundary).

    With ``timestamps=True`` each sample carries its row's time instead, so scraped samples sit on
    the same grid as the backfilled ones: a range query at row times then returns exactly row(t)
    (without, a sample scraped just before t holds row(t) - 1: a constant one-row lag). A value
    changed by :meth:`inject` after its row was scraped is then refused by Prometheus (a different
    value for a timestamp it holds); inject from a row not served yet.

    :meth:`inject` changes values from a given time on (an anomaly appearing live). The server
    binds its port in the constructor, so ``port`` and ``url`` are known before :meth:`start`
    (to write a scrape config).
    """

    def __init__(self, frame: pd.DataFrame, *, start: float, step_seconds: float, series_col: str = "host",
                 metrics: Sequence[str] = SERIES_METRIC_COLUMNS, prefix: str = "demo_", host: str = "127.0.0.1",
                 port: int = 0, timestamps: bool = False) -> None:
        _check_clock(start, step_seconds)
        self.timestamps = timestamps
        self.start_time = float(start)
        self.step_seconds = float(step_seconds)
        self.series_col = series_col
        self.metrics = tuple(metrics)
        self.names = tuple(metric_name(column, prefix) for column in self.metrics)
        # Private copies: inject() writes into them under the lock, the frame is never modified.
        self._series = {key: values.copy() for key, values in _split_series(frame, series_col, self.metrics)}
        self._times = {key: _row_times_ms(len(values), start, step_seconds) for key, values in self._series.items()}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        exporter = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404, "only /metrics is served")
                    return
                body = exporter.exposition().encode("utf-8")
                self.send_response(200)
                self.send_header("Content-Type", TEXT_CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # one line per scrape would drown test output

        self._server = http.server.ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.host = host
        self.port: int = self._server.server_address[1]

    @property
    def url(self) -> str:
        """The base URL (``http://127.0.0.1:PORT``); metrics are at ``url + "/metrics"``."""
        return f"http://{self.host}:{self.port}"

    @property
    def target(self) -> str:
        """``host:port``, as a Prometheus static_configs target."""
        return f"{self.host}:{self.port}"

    def row_index(self, at: float | None = None) -> int:
        """The row served at unix time ``at`` (default now), before clamping to the frame: -1 or
        less before ``start``."""
        at = time.time() if at is None else at
        return math.floor((at - self.start_time) / self.step_seconds)

    def row_time(self, index: int) -> float:
        """The time (unix seconds) of row ``index``: the same clock as the backfilled history."""
        return self.start_time + index * self.step_seconds

    def values_at(self, at: float | None = None) -> dict[str, dict[str, float]]:
        """What a scrape at ``at`` (default now) returns: {series: {column: value}} (injections
        included, NaN readings left out, no series before ``start``)."""
        return {key: values for key, (_, values) in self._rows_at(at).items()}

    def _rows_at(self, at: float | None) -> dict[str, tuple[int, dict[str, float]]]:
        """{series: (its row's time in ms, {column: value})} at ``at``."""
        index = self.row_index(at)
        if index < 0:
            return {}
        out = {}
        with self._lock:
            for key, values in self._series.items():
                row = min(index, len(values) - 1)
                out[key] = (int(self._times[key][row]),
                            {column: float(v) for column, v in zip(self.metrics, values[row]) if not math.isnan(v)})
        return out

    def exposition(self, at: float | None = None) -> str:
        """The /metrics body at ``at`` (default now) in the Prometheus text format; with
        ``timestamps`` each sample carries its row's time (ms)."""
        current = self._rows_at(at)
        lines: list[str] = []
        for column, name in zip(self.metrics, self.names):
            lines.append(f"# HELP {name} Synthetic {column} per {self.series_col} (anomaly_ae.watch.simulate).")
            lines.append(f"# TYPE {name} gauge")
            for key, (ms, values) in current.items():
                if column in values:
                    stamp = f" {ms}" if self.timestamps else ""
                    lines.append(f'{name}{{{self.series_col}="{_escape_label_value(key)}"}} '
                                 f"{format_value(values[column])}{stamp}")
        return "\n".join(lines) + "\n"

    def inject(self, host: str, column: str, factor: float, from_time: float) -> None:
        """Multiply series ``host``'s ``column`` by ``factor`` in every row whose time is at or after
        ``from_time`` (an anomaly appearing live; repeated calls compound). To change what is
        served right now, pass the current row's time (``row_time(row_index())``) or earlier."""
        if host not in self._series:
            raise KeyError(f"no series {host!r}; the series are {sorted(self._series)}")
        if column not in self.metrics:
            raise KeyError(f"no metric column {column!r}; the columns are {list(self.metrics)}")
        rows = self._times[host] >= round(from_time * 1000)
        j = self.metrics.index(column)
        with self._lock:
            self._series[host][rows, j] *= factor

    def start(self) -> SyntheticExporter:
        """Serve in a daemon thread; returns self."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                            name=f"synthetic-exporter-{self.port}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> SyntheticExporter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def demo_spec(prometheus_url: str, *, step: str, series_label: str = "host",
              metrics: Sequence[str] = SERIES_METRIC_COLUMNS, prefix: str = "demo_", window: int = 16,
              model: str = "knn", evaluation_delay: str = "2s") -> dict[str, Any]:
    """A watch spec (the contract's format, as a dict to dump to YAML or TOML) over the synthetic
    metrics: one column per metric, each query ``max by (LABEL) (demo_METRIC)``.

    The aggregation keeps exactly one series per ``series_label`` value whatever other labels the
    samples carry (a scrape adds ``job`` and ``instance``; backfilled samples have neither), and
    of one series it returns that series' value unchanged. ``evaluation_delay`` should be at least
    the scrape interval: a sample scraped just before a step time still holds the previous row.
    """
    if not _LABEL_NAME.fullmatch(series_label):
        raise ValueError(f"series_label {series_label!r} is not a valid label name")
    return {
        "prometheus": {"url": prometheus_url, "timeout": "10s"},
        "series_label": series_label,
        "step": step,
        "metrics": {column: f"max by ({series_label}) ({metric_name(column, prefix)})" for column in metrics},
        "model": {"model": model, "window": window, "target_fpr": 0.01},
        "watch": {"evaluation_delay": evaluation_delay, "max_series": 10000},
    }


SYNTHETIC_JOB = "synthetic"  # the job of synthetic targets: job/instance dropped, series continue the history
RETENTION = "3650d"  # retention counts back from the newest sample: keep any backfilled history


class LocalPrometheus:
    """Prometheus on 127.0.0.1:``port`` (a free one by default) over ``data_dir``, for the demo, the
    benchmarks and the tests (tests/watch_support.py adds query helpers).

    ``synthetic_targets`` are scraped as the job :data:`SYNTHETIC_JOB` with ``job`` and ``instance``
    dropped, so their samples continue backfilled history; ``jobs`` ({job name: targets}) are
    scraped as usual. The config is written next to the data directory, the log appended to
    ``log_path``. :meth:`restart` keeps the data directory, the port and the config."""

    def __init__(self, data_dir: Path, *, binary: str = "prometheus", synthetic_targets: Sequence[str] = (),
                 jobs: dict[str, Sequence[str]] | None = None, scrape_interval: str = "1s",
                 port: int | None = None, log_path: Path | None = None, extra_args: Sequence[str] = ()) -> None:
        import json
        import socket

        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if port is None:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
        self.port = port
        self.url = f"http://127.0.0.1:{self.port}"
        jobs = dict(jobs or {})
        if SYNTHETIC_JOB in jobs:
            raise ValueError(f"job name {SYNTHETIC_JOB!r} is reserved for synthetic_targets")
        # Applied after the target labels are added: the scraped series are the backfilled ones.
        scrape = [{"job_name": SYNTHETIC_JOB, "static_configs": [{"targets": list(synthetic_targets)}],
                   "metric_relabel_configs": [{"action": "labeldrop", "regex": "job|instance"}]}] if synthetic_targets else []
        scrape += [{"job_name": name, "static_configs": [{"targets": list(targets)}]} for name, targets in jobs.items()]
        self.config = self.data_dir.with_name(self.data_dir.name + ".prometheus.yml")
        # JSON is YAML: no YAML writer needed
        self.config.write_text(json.dumps({"global": {"scrape_interval": scrape_interval,
                                                      "scrape_timeout": scrape_interval,
                                                      "evaluation_interval": scrape_interval},
                                           "scrape_configs": scrape}, indent=1))
        self.log = Path(log_path or self.data_dir.with_name(self.data_dir.name + ".prometheus.log"))
        self.command = [binary, f"--config.file={self.config}", f"--storage.tsdb.path={self.data_dir}",
                        f"--web.listen-address=127.0.0.1:{self.port}", f"--storage.tsdb.retention.time={RETENTION}",
                        *extra_args]
        self.proc: subprocess.Popen | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 60.0) -> "LocalPrometheus":
        """Start the process and wait until /-/ready answers (RuntimeError with the log's end if it
        exits or is not ready within ``timeout``)."""
        import urllib.request

        if self.running:
            return self
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                raise RuntimeError(f"prometheus exited ({code}); the end of {self.log}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"prometheus was not ready within {timeout:g} s; the end of {self.log}:\n{self.log_tail()}")

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result (vector)."""
        import json
        import urllib.parse
        import urllib.request

        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())["data"]["result"]

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (Prometheus flushes its head), SIGKILL after ``timeout``; idempotent."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def restart(self, timeout: float = 60.0) -> "LocalPrometheus":
        """Stop and start again on the same data directory, port and config."""
        self.stop()
        return self.start(timeout)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def __enter__(self) -> "LocalPrometheus":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
