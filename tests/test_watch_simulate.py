"""anomaly_ae.watch.simulate against a real Prometheus: backfilled history reads back exactly, and the
live exporter, scraped every second, continues it.

A 3-host frame at a 15 s step: rows 0-399 are backfilled with promtool so the last one lies about
10 minutes ago; the exporter serves the rows after that by wall time, and the Prometheus started on
the blocks scrapes it. The fast tests at the top check the text formats without any server.
"""

from __future__ import annotations

import math
import time

import httpx
import numpy as np
import pandas as pd
import pytest

from prometheus_support import prometheus, promtool
from watch_support import SYNTHETIC_JOB, history_prometheus, wait_until

from anomaly_ae.data.synthetic_series import SERIES_METRIC_COLUMNS, make_series_telemetry
from anomaly_ae.watch.simulate import SyntheticExporter, demo_spec, metric_name, openmetrics_history

STEP = 15.0
HISTORY_ROWS = 400
HOSTS = ("host-0", "host-1", "host-2")


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    # 520 rows: 400 backfilled, 40 in the 10-minute gap, 80 (20 minutes) for the exporter to serve.
    return make_series_telemetry(520, 3, step="5min", anomalies=False, seed=3)


def rows(frame: pd.DataFrame, host: str) -> pd.DataFrame:
    return frame[frame["host"] == host].reset_index(drop=True)


# ------------------------------------------------------------------------------ formats, no server
def test_metric_name():
    assert metric_name("cpu_util_pct") == "demo_cpu_util_pct"
    assert metric_name("cpu_util_pct", prefix="x_") == "x_cpu_util_pct"
    with pytest.raises(ValueError):
        metric_name("cpu-util")


def test_openmetrics_history_layout():
    small = pd.DataFrame({"ts": pd.date_range("2020-01-01", periods=4, freq="5min").tolist() * 2,
                          "host": ["b"] * 4 + ["a"] * 4,
                          "m1": [0.1, 1 / 3, np.nan, 4.0, 1e-300, -2.5, 7.0, 8.0],
                          "m2": [1.0] * 8})
    text = openmetrics_history(small, start=1_000_000_000.5, step_seconds=0.25, metrics=("m1", "m2"), prefix="t_",
                               end=1_000_000_001.0)
    lines = text.splitlines()
    assert text.endswith("# EOF\n") and lines.count("# EOF") == 1
    assert lines[0] == "# TYPE t_m1 gauge" and "# TYPE t_m2 gauge" in lines
    assert lines.index("# TYPE t_m2 gauge") > max(i for i, line in enumerate(lines) if line.startswith("t_m1"))
    samples = [line.split(" ") for line in lines if line.startswith("t_m1")]
    # series sorted, rows in frame order, the frame's ts ignored, NaN left out, rows after `end` left out
    assert [s[0] for s in samples] == ['t_m1{host="a"}'] * 3 + ['t_m1{host="b"}'] * 2
    assert [s[2] for s in samples] == ["1000000000.500", "1000000000.750", "1000000001.000",
                                       "1000000000.500", "1000000000.750"]
    assert [float(s[1]) for s in samples] == [1e-300, -2.5, 7.0, 0.1, 1 / 3]  # repr: exact round trip


def test_exporter_serves_the_row_of_the_wall_clock(frame):
    start = 1_000_000_000.0
    exporter = SyntheticExporter(frame, start=start, step_seconds=STEP)
    host1 = rows(frame, "host-1")
    assert exporter.values_at(start - 0.001) == {}
    assert exporter.values_at(start + 7 * STEP + 14.999)["host-1"]["cpu_util_pct"] == host1.loc[7, "cpu_util_pct"]
    assert exporter.values_at(start + 1e6)["host-1"]["cpu_util_pct"] == host1["cpu_util_pct"].iloc[-1]  # clamped
    body = exporter.exposition(start + 7 * STEP)
    assert "# TYPE demo_cpu_util_pct gauge" in body
    assert f'demo_cpu_util_pct{{host="host-1"}} {float(host1.loc[7, "cpu_util_pct"])!r}' in body.splitlines()
    exporter.inject("host-1", "latency_ms", 3.0, from_time=start + 10 * STEP)
    at9, at10 = (exporter.values_at(start + i * STEP) for i in (9, 10))
    assert at9["host-1"]["latency_ms"] == host1.loc[9, "latency_ms"]
    assert at10["host-1"]["latency_ms"] == host1.loc[10, "latency_ms"] * 3.0
    assert at10["host-0"]["latency_ms"] == rows(frame, "host-0").loc[10, "latency_ms"]
    assert frame["latency_ms"].equals(make_series_telemetry(520, 3, step="5min", anomalies=False, seed=3)["latency_ms"])
    with pytest.raises(KeyError):
        exporter.inject("host-9", "latency_ms", 2.0, from_time=start)
    with exporter:
        assert httpx.get(f"{exporter.url}/nope").status_code == 404
        response = httpx.get(f"{exporter.url}/metrics")
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain; version=0.0.4")


def test_demo_spec_shape():
    spec = demo_spec("http://127.0.0.1:9090", step="15s", window=8)
    assert spec["prometheus"]["url"] == "http://127.0.0.1:9090" and spec["step"] == "15s"
    assert spec["series_label"] == "host" and spec["model"]["window"] == 8
    assert list(spec["metrics"]) == list(SERIES_METRIC_COLUMNS)
    assert spec["metrics"]["cpu_util_pct"] == "max by (host) (demo_cpu_util_pct)"


# ------------------------------------------------------------------------------ a real Prometheus
@pytest.fixture(scope="module")
def live(frame, tmp_path_factory):
    """(prometheus, exporter, stamped, start): history rows 0-399 end ~10 minutes ago; the exporter
    serves the rows of now; `stamped` serves them too, as ts_* metrics stamped with their rows'
    times; Prometheus scrapes both every second."""
    promtool(), prometheus()  # skip early, with the reason, when they cannot be installed
    now = math.floor(time.time())
    start = float(now - 600 - (HISTORY_ROWS - 1) * STEP)  # row 399 at now - 600 s
    exporter = SyntheticExporter(frame, start=start, step_seconds=STEP).start()
    stamped = SyntheticExporter(frame, start=start, step_seconds=STEP, prefix="ts_", timestamps=True).start()
    try:
        began = time.monotonic()
        with history_prometheus(tmp_path_factory.mktemp("watch-sim"), frame, start=start, step_seconds=STEP,
                                end=start + (HISTORY_ROWS - 1) * STEP,
                                scrape_targets=[exporter.target, stamped.target]) as prom:
            print(f"history backfilled and Prometheus ready in {time.monotonic() - began:.1f} s")
            yield prom, exporter, stamped, start
    finally:
        exporter.stop()
        stamped.stop()


@pytest.mark.slow
def test_history_reads_back_exactly(live, frame):
    prom, _, _, start = live
    end = start + (HISTORY_ROWS - 1) * STEP
    expected_times = [start + i * STEP for i in range(HISTORY_ROWS)]
    result = prom.query_range('{__name__=~"demo_.+"}', start, end, STEP)
    got = {(r["metric"]["__name__"], r["metric"]["host"]): r for r in result}
    assert sorted(got) == sorted((metric_name(c), h) for c in SERIES_METRIC_COLUMNS for h in HOSTS)
    for host in HOSTS:
        history = rows(frame, host).iloc[:HISTORY_ROWS]
        for column in SERIES_METRIC_COLUMNS:
            series = got[(metric_name(column), host)]
            assert set(series["metric"]) == {"__name__", "host"}
            assert [t for t, _ in series["values"]] == expected_times
            assert [float(v) for _, v in series["values"]] == history[column].tolist(), (host, column)
    # The raw samples (a range selector), at their own timestamps: the same, and nothing else.
    raw = prom.samples(f'demo_latency_ms[{int(HISTORY_ROWS * STEP)}s]', "host", at=end)
    for host in HOSTS:
        assert raw[host] == list(zip(expected_times, rows(frame, host)["latency_ms"].iloc[:HISTORY_ROWS]))


@pytest.mark.slow
def test_exporter_continues_the_series_and_inject_changes_one_host(live, frame):
    prom, exporter, _, start = live
    prom.wait_scraped(SYNTHETIC_JOB)

    def row_of(t: float) -> int:
        return math.floor((t - start) / STEP)

    def scraped(column: str, since: float) -> dict[str, list[tuple[float, float]]]:
        now = time.time()
        return {host: [(t, v) for t, v in points if t > since]
                for host, points in prom.samples(f"{metric_name(column)}[{math.ceil(now - since) + 5}s]", "host",
                                                 at=now).items()}

    def check(column: str, points: list[tuple[float, float]], host: str, factor_from: tuple[float, float] | None):
        """Every scraped value is its row's: the row of its scrape time, or (for a scrape within 1 s
        before a row boundary: Prometheus stamps a sample before the request reaches the exporter)
        the next one."""
        values = rows(frame, host)[column]
        for t, v in points:
            candidates = {row_of(t), row_of(t + 1.0)}
            allowed = []
            for i in candidates:
                value = values.iloc[min(i, len(values) - 1)]
                if factor_from and start + i * STEP >= factor_from[1]:
                    value = value * factor_from[0]
                allowed.append(value)
            assert v in allowed, (host, column, t, row_of(t), v, allowed)

    # Live samples continue the backfilled series (job/instance dropped: one series per host) until
    # they span a row boundary, i.e. two rows of the frame each appear at their time.
    history_end = start + (HISTORY_ROWS - 1) * STEP
    began = time.time()

    def two_rows() -> dict | None:
        found = scraped("cpu_util_pct", history_end)
        return found if len({row_of(t) for t, _ in found.get("host-0", [])}) >= 2 else None

    live_cpu = wait_until(two_rows, timeout=40, interval=0.5, what="scrapes on both sides of a row boundary")
    print(f"two rows scraped after {time.time() - began:.1f} s")
    assert sorted(live_cpu) == list(HOSTS)
    for host in HOSTS:
        check("cpu_util_pct", live_cpu[host], host, None)
    assert row_of(live_cpu["host-0"][-1][0]) > HISTORY_ROWS + 30  # the present, not the clamped last row

    # The spec's queries: one series per host over history and present, equal to the plain series.
    spec = demo_spec(prom.url, step="15s")
    now = time.time()
    for column, query in spec["metrics"].items():
        agg = prom.range_by(query, "host", history_end - 120, now, STEP)
        plain = prom.range_by(metric_name(column), "host", history_end - 120, now, STEP)
        assert sorted(agg) == list(HOSTS) and agg == plain, column

    # An injected anomaly: host-1's latency x 4 from the row being served now on; nothing else changes.
    factor, injected_at = 4.0, time.time()
    from_time = exporter.row_time(exporter.row_index(injected_at))
    exporter.inject("host-1", "latency_ms", factor, from_time=from_time)

    def two_scrapes() -> dict | None:
        found = scraped("latency_ms", injected_at + 0.1)
        return found if len(found.get("host-1", [])) >= 2 else None

    after = wait_until(two_scrapes, timeout=20, what="two scrapes after the injection")
    for host in HOSTS:
        check("latency_ms", after[host], host, (factor, from_time) if host == "host-1" else None)
    expected = rows(frame, "host-1")["latency_ms"]
    assert all(v == expected.iloc[row_of(t)] * factor or v == expected.iloc[row_of(t) + 1] * factor
               for t, v in after["host-1"]), "host-1's latency was multiplied"
    for column in ("cpu_util_pct", "requests_per_s"):  # host-1's other metrics are untouched
        check(column, scraped(column, injected_at + 0.1)["host-1"], "host-1", None)


@pytest.mark.slow
def test_restart_keeps_history_and_scraped_samples(live, frame):
    prom, _, _, start = live
    prom.wait_scraped(SYNTHETIC_JOB)

    def committed() -> tuple[float, list] | None:
        settled = time.time() - 2  # samples up to here are committed (a scrape takes milliseconds)
        points = prom.samples("demo_requests_per_s[2m]", "host", at=settled).get("host-2")
        return (settled, points) if points else None

    settled, before = wait_until(committed, timeout=30, what="a scraped sample 2 s old")
    restarted = time.time()
    prom.restart()
    assert prom.samples("demo_requests_per_s[2m]", "host", at=settled)["host-2"] == before  # replayed from the WAL
    history = prom.query_range('demo_requests_per_s{host="host-2"}', start, start + 9 * STEP, STEP)
    assert [float(v) for _, v in history[0]["values"]] == rows(frame, "host-2")["requests_per_s"].iloc[:10].tolist()
    wait_until(lambda: prom.samples("demo_requests_per_s[30s]", "host").get("host-2", [(0.0, 0.0)])[-1][0] > restarted,
               timeout=30, what="scrapes to resume after the restart")


@pytest.mark.slow
def test_stamped_exporter_puts_each_row_at_its_own_time(live, frame):
    """With timestamps=True the scraped samples sit on the row grid, like the backfilled ones: a
    range query at row times returns exactly row(t), with no one-row lag and no boundary jitter."""
    prom, _, stamped, start = live
    assert stamped.exposition(start).splitlines()[2].endswith(f" {round(start * 1000)}")
    prom.wait_scraped(SYNTHETIC_JOB)
    history_end = start + (HISTORY_ROWS - 1) * STEP

    def two_rows() -> dict | None:
        found = prom.samples("ts_net_in_mb_s[5m]", "host")
        return found if len(found.get("host-2", [])) >= 2 else None

    raw = wait_until(two_rows, timeout=40, interval=0.5, what="two rows of the stamped exporter")
    for host in HOSTS:
        values = rows(frame, host)["net_in_mb_s"]
        for t, v in raw[host]:
            i = round((t - start) / STEP)
            assert t == start + i * STEP and v == values.iloc[i], (host, t, v)
    first, last = raw["host-2"][0][0], raw["host-2"][-1][0]
    got = prom.range_by("max by (host) (ts_net_in_mb_s)", "host", first, last, STEP)
    for host in HOSTS:
        values = rows(frame, host)["net_in_mb_s"]
        assert got[host] == [(t, values.iloc[round((t - start) / STEP)]) for t, _ in got[host]]
        assert len(got[host]) == round((last - first) / STEP) + 1 and first > history_end
