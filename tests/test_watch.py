"""The Prometheus watcher's logic, in process: the spec, the source's parsing and faults, the
watcher against an offline pass, shards, catch-up, and its /metrics. Real Prometheus processes are
in tests/test_watch_prometheus.py."""

from __future__ import annotations

import math

import httpx
import numpy as np
import pandas as pd
import pytest

from anomaly_ae.data.synthetic_series import SERIES_METRIC_COLUMNS, make_series_telemetry
from anomaly_ae.exceptions import ConfigurationError
from anomaly_ae.series_detector import SeriesDetector
from anomaly_ae.watch.command import run_backtest
from anomaly_ae.watch.exposition import ExpositionServer
from anomaly_ae.watch.source import (MAX_POINTS_PER_QUERY, TIME_COLUMN, PrometheusSource, QueryError, build_frame,
                                     fetch_frame)
from anomaly_ae.watch.spec import WatchSpec, WatchSpecError, credentials, load_spec, parse_time
from anomaly_ae.watch.watcher import ModelInfo, Shard, Watcher
from fake_prometheus import FakePrometheus

STEP = 15.0
T0 = 1_800_000_000.0  # a multiple of the step: the frame's times sit on the watcher's grid
COLUMNS = list(SERIES_METRIC_COLUMNS[:4])
TRAIN_STEPS = 600


def make_spec(**overrides) -> WatchSpec:
    raw = {"prometheus": {"url": "http://prometheus:9090"}, "series_label": "host", "step": "15s",
           "metrics": {c: c for c in COLUMNS}, "watch": {"evaluation_delay": "0s"}}
    raw.update(overrides)
    return WatchSpec.model_validate(raw)


@pytest.fixture(scope="module")
def world():
    """Four hosts, 1,600 steps each (anomalies after the first 40%), a model trained on the first 600."""
    frame = make_series_telemetry(1600, 4, anomalies=True, seed=1)
    frame["ts"] = pd.to_datetime(T0 + frame.groupby("host").cumcount() * STEP, unit="s")
    fake = FakePrometheus(frame, time_col="ts", series_col="host")
    spec = make_spec()
    with PrometheusSource(spec, transport=fake.transport()) as source:
        history, _ = fetch_frame(source, T0, T0 + (TRAIN_STEPS - 1) * STEP)
    detector = SeriesDetector(window=16, time_col=TIME_COLUMN, series_col="host").fit(history)
    return frame, detector


def watcher_for(world, spec=None, shard=Shard()) -> tuple[Watcher, FakePrometheus]:
    frame, detector = world
    fake = FakePrometheus(frame, time_col="ts", series_col="host")
    spec = spec or make_spec()
    return Watcher(spec, PrometheusSource(spec, transport=fake.transport()), detector,
                   ModelInfo("telemetry", "1", "models:/telemetry@champion"), shard=shard), fake


def as_table(scores) -> pd.DataFrame:
    return pd.DataFrame([s.__dict__ for s in scores]).sort_values(["series", "timestamp"]).reset_index(drop=True)


# ---------------------------------------------------------------------------- the spec
def test_a_spec_file_loads_from_yaml_and_toml(tmp_path):
    (tmp_path / "watch.yml").write_text(
        "prometheus:\n  url: http://prom:9090/\n  timeout: 5s\n  auth: {bearer_token_env: PROM_TOKEN}\n"
        "series_label: instance\nstep: 1m\nmetrics:\n  load1: node_load1\n"
        "  cpu: 'sum by (instance) (rate(node_cpu_seconds_total{mode!=\"idle\"}[5m]))'\n")
    spec = load_spec(tmp_path / "watch.yml").spec
    assert spec.prometheus.url == "http://prom:9090" and spec.prometheus.timeout == 5.0
    assert spec.step == 60.0 and spec.columns == ["load1", "cpu"]
    (tmp_path / "watch.toml").write_text('series_label = "instance"\nstep = 60\n[prometheus]\nurl = "http://prom:9090"\n'
                                         '[metrics]\nload1 = "node_load1"\n')
    assert load_spec(tmp_path / "watch.toml").spec.step == 60.0
    assert spec.fingerprint() == make_spec(series_label="instance", step="1m",
                                           metrics=dict(spec.metrics)).fingerprint()


@pytest.mark.parametrize("text, says", [
    ("series_label: host\nstep: 15s\nmetrics: {a: up}\n", "prometheus: Field required"),
    ("prometheus: {url: prom:9090}\nseries_label: host\nstep: 15s\nmetrics: {a: up}\n", "prometheus.url: must be an http"),
    ('prometheus: {url: "http://127.0.0.1:abc"}\nseries_label: host\nstep: 15s\nmetrics: {a: up}\n',
     "prometheus.url: is not a valid URL (Invalid port: 'abc')"),
    ("prometheus: {url: http://256.1.1.1}\nseries_label: host\nstep: 15s\nmetrics: {a: up}\n",
     "prometheus.url: is not a valid URL (Invalid IPv4 address"),
    ("prometheus: {url: 'http://p/?access_token=abc'}\nseries_label: host\nstep: 15s\nmetrics: {a: up}\n",
     "prometheus.url: must not hold credentials in its query string"),
    ("prometheus: {url: http://p:99999}\nseries_label: host\nstep: 15s\nmetrics: {a: up}\n",
     "prometheus.url: has port 99999, outside 1-65535"),
    ("prometheus: {url: http://p}\nseries_label: host\nstep: often\nmetrics: {a: up}\n", "step: step must be a duration"),
    ("prometheus: {url: http://p}\nseries_label: host\nstep: 15s\nmetrics: {}\n", "metrics: name at least one metric"),
    ("prometheus: {url: http://p}\nseries_label: host\nstep: 0.4ms\nmetrics: {a: up}\n",
     "step: must be a whole number of milliseconds, at least 1ms (e.g. 15s), got '0.4ms'"),
    ("prometheus: {url: http://p}\nseries_label: host\nstep: 1.5ms\nmetrics: {a: up}\n", "whole number of milliseconds"),
    ("prometheus: {url: http://p}\nseries_label: host\nstep: 15s\nmetrics: {host: up}\n", "also a metric column"),
    ("prometheus: {url: http://p}\nseries_label: host\nstep: 15s\nmetrics: {a: up}\nsteps: 1\n", "steps: unknown field"),
    ("prometheus: {url: http://p\n", "is not valid YAML"),
    ("prometheus: {url: http://p, timeout: .inf}\nseries_label: host\nstep: 15s\nmetrics: {a: up}\n",
     "timeout must be a positive, finite duration"),
    ("prometheus: {url: http://p, timeout: 100000w}\nseries_label: host\nstep: 15s\nmetrics: {a: up}\n",
     "timeout must be at most 3600s, got '100000w'"),
    ("prometheus: {url: http://p}\nseries_label: host\nstep: 15s\nmetrics: {a: up}\nwatch: {evaluation_delay: 1000w}\n",
     "evaluation_delay must be at most 3600s"),
    ("- just\n- a list\n", "must be a mapping"),
    ("prometheus: {url: http://p}\nseries_label: host\nstep: 15s\nmetrics: {a: up, a: down}\n",
     "the key 'a' is given twice"),
    ("prometheus: {url: http://p}\nseries_label: host\nstep: 15s\nstep: 30s\nmetrics: {a: up}\n",
     "the key 'step' is given twice in one mapping (first at line 3)"),
    ("prometheus: {url: http://p}\n? [a, b]\n: 1\n", "unhashable key"),
])
def test_a_malformed_spec_says_which_field_and_what_to_write(tmp_path, text, says):
    path = tmp_path / "watch.yml"
    path.write_text(text)
    with pytest.raises(WatchSpecError, match="watch spec") as caught:
        load_spec(path)
    assert says in str(caught.value)


def test_credentials_come_from_the_environment_only():
    spec = make_spec(prometheus={"url": "http://p", "auth": {"bearer_token_env": "PROM_TOKEN"}})
    assert credentials(spec.prometheus.auth, {"PROM_TOKEN": "s3cret"}) == {"headers": {"Authorization": "Bearer s3cret"}}
    with pytest.raises(WatchSpecError, match=r"\$PROM_TOKEN, which is not set"):
        credentials(spec.prometheus.auth, {})
    basic = make_spec(prometheus={"url": "http://p", "auth": {"basic": {"username_env": "U", "password_env": "P"}}})
    assert credentials(basic.prometheus.auth, {"U": "me", "P": "pw"}) == {"auth": ("me", "pw")}


def test_an_error_page_that_echoes_the_credentials_is_not_repeated():
    """A proxy's 401 page that repeats the Authorization header went into every step's log line."""
    spec = make_spec(prometheus={"url": "http://p", "auth": {"bearer_token_env": "PROM_TOKEN"}})

    def echo(request: httpx.Request) -> httpx.Response:
        echoed = f"bad credentials: {request.headers['authorization']}"
        return httpx.Response(401, json={"status": "error", "error": echoed})

    source = PrometheusSource(spec, environ={"PROM_TOKEN": "s3cret-token-zz"}, transport=httpx.MockTransport(echo))
    with pytest.raises(QueryError) as caught:
        source.query_range(COLUMNS[0], T0, T0)
    assert "s3cret-token-zz" not in str(caught.value) and "bad credentials: ***" in str(caught.value)
    basic = make_spec(prometheus={"url": "http://p", "auth": {"basic": {"username_env": "U", "password_env": "P"}}})
    page = httpx.MockTransport(lambda r: httpx.Response(401, text=f"no: {r.headers['authorization']} pw=hunter22"))
    with pytest.raises(QueryError) as caught:
        PrometheusSource(basic, environ={"U": "me", "P": "hunter22"}, transport=page).query_range(COLUMNS[0], T0, T0)
    assert "hunter22" not in str(caught.value) and "bWU6aHVudGVyMjI" not in str(caught.value)  # nor its base64


def test_a_password_in_the_url_is_refused_without_being_repeated(tmp_path):
    """httpx would use it for basic auth, and the URL is printed, logged and registered with the model."""
    path = tmp_path / "watch.yml"
    path.write_text("prometheus: {url: 'http://admin:Hunter2Secret@prom:9090'}\nseries_label: host\nstep: 15s\n"
                    "metrics: {a: up}\n")
    with pytest.raises(WatchSpecError, match="must not hold credentials") as caught:
        load_spec(path)
    assert "Hunter2Secret" not in str(caught.value)


def test_tls_files_that_cannot_be_loaded_are_a_spec_error(tmp_path):
    """A client certificate is loaded with or without a CA file (before, it was ignored without one)."""
    for tls in ({"ca_file": str(tmp_path / "missing-ca.pem")},
                {"cert_file": str(tmp_path / "missing.crt"), "key_file": str(tmp_path / "missing.key")}):
        spec = make_spec(prometheus={"url": "https://p", "tls": tls})
        with pytest.raises(WatchSpecError, match="prometheus.tls: cannot load"):
            PrometheusSource(spec)
    (tmp_path / "not-a-cert.pem").write_text("hello\n")
    not_a_cert = make_spec(prometheus={"url": "https://p", "tls": {"ca_file": str(tmp_path / "not-a-cert.pem")}})
    with pytest.raises(WatchSpecError, match="prometheus.tls: cannot load"):
        PrometheusSource(not_a_cert)


def test_times_read_as_now_relative_rfc3339_or_unix():
    now = 1_800_000_000.0
    assert parse_time("now", now) == now
    assert parse_time("-14d", now) == now - 14 * 86400
    assert parse_time("-30m", now) == now - 1800
    assert parse_time("2027-01-15T08:00:00Z", now) == now  # 1.8e9 s since the epoch
    assert parse_time("2027-01-15T09:00:00+01:00", now) == now
    assert parse_time("1800000000", now) == now
    with pytest.raises(WatchSpecError, match="cannot read the time"):
        parse_time("yesterday", now)
    for outside in ("nan", "inf", "-1e20", "-99999999d"):
        with pytest.raises(WatchSpecError, match="outside 1970-9999"):
            parse_time(outside, now)


# ---------------------------------------------------------------------------- the source
def test_a_long_range_is_fetched_in_chunks_under_the_point_limit(world):
    frame, _ = world
    fake = FakePrometheus(frame, time_col="ts", series_col="host")
    spec = make_spec(step="1s")  # 1,600 rows at 15 s span 24,000 one-second steps
    with PrometheusSource(spec, transport=fake.transport()) as source:
        points = source.query_range(COLUMNS[0], T0, T0 + 1599 * STEP)
    sizes = [round((float(r["end"]) - float(r["start"])) / 1.0) + 1 for r in fake.requests]
    assert len(fake.requests) == math.ceil(24_000 / MAX_POINTS_PER_QUERY) and max(sizes) <= MAX_POINTS_PER_QUERY
    t, x = points["host-0"]
    assert len(t) == 1600 and np.array_equal(x, frame.loc[frame.host == "host-0", COLUMNS[0]].to_numpy())


@pytest.mark.parametrize("fault, reason, says", [
    ("down", "unreachable", "cannot reach http://prometheus:9090"),
    ("timeout", "timeout", "no complete answer"),
    ("http_500", "http_error", "HTTP 503: overloaded"),
    ("scalar", "bad_response", "not a range vector"),
    ("duplicate", "bad_series", "aggregate them to one per host"),
])
def test_query_faults_are_errors_with_a_reason_and_advice(world, fault, reason, says):
    frame, _ = world
    fake = FakePrometheus(frame, time_col="ts", series_col="host")
    fake.fault = fault
    with PrometheusSource(make_spec(), transport=fake.transport()) as source, pytest.raises(QueryError) as caught:
        source.query_range(COLUMNS[0], T0, T0 + 10 * STEP)
    assert caught.value.reason == reason and says in str(caught.value)


def test_an_answer_trickled_past_the_timeout_is_a_timeout():
    """A real socket server that sends its answer a byte every 0.1 s: each read is quick, the whole is not."""
    import socket
    import threading
    import time

    body = b'{"status": "success", "data": {"resultType": "matrix", "result": []}}'
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                               b"Content-Length: %d\r\n\r\n" % len(body))
            for byte in body:
                if stop.wait(0.1):
                    return
                try:
                    connection.sendall(bytes([byte]))
                except OSError:
                    return

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    spec = make_spec(prometheus={"url": f"http://127.0.0.1:{listener.getsockname()[1]}", "timeout": "1s"})
    started = time.monotonic()
    try:
        with PrometheusSource(spec) as source, pytest.raises(QueryError) as caught:
            source.query_range(COLUMNS[0], T0, T0 + 10 * STEP)  # the whole body would take ~7 s
    finally:
        stop.set()
        listener.close()
        server.join(5)
    assert caught.value.reason == "timeout" and "no complete answer" in str(caught.value)
    assert time.monotonic() - started < 3


def test_the_frame_reports_gaps_stale_missing_and_dropped_series():
    spec = make_spec(metrics={"a": "a", "b": "b"})
    t = (T0 + np.arange(10) * STEP) * 1000
    full = np.arange(10.0)
    holed = full.copy()
    holed[4] = np.nan
    results = {"a": {"h1": (t.astype(np.int64), full), "h2": (t[:6].astype(np.int64), full[:6]),
                     "h3": (t.astype(np.int64), full), "h4": (t.astype(np.int64), full)},
               "b": {"h1": (t.astype(np.int64), holed), "h2": (t[:6].astype(np.int64), full[:6]),
                     "h4": (t.astype(np.int64), full)}}
    frame, report = build_frame(spec, results, T0, T0 + 9 * STEP, max_series=2)
    assert report.missing_metrics == {"h3": ["b"]}
    assert report.dropped_series == ["h4"] and sorted(frame["host"].unique()) == ["h1", "h2"]
    assert report.incomplete_rows == 1 and report.gap_steps["h1"] == 1
    assert report.stale == ["h2"]
    assert len(frame) == 9 + 6 and list(frame.columns) == [TIME_COLUMN, "host", "a", "b"]
    lines = " ".join(report.lines())
    assert "h3 (b)" in lines and "stale" in lines and "max_series" in lines


# ---------------------------------------------------------------------------- the watcher
def test_the_watcher_equals_an_offline_pass_over_the_same_range(world):
    """Step by step, the watcher's scores, flags and alerts are the offline pass's (run_backtest:
    SeriesDetector's inference over the whole range, its alert rule over each series)."""
    _, detector = world
    watcher, fake = watcher_for(world)
    start = T0 + (TRAIN_STEPS + 100) * STEP
    live = [s for k in range(150) for s in watcher.evaluate(start + k * STEP)]
    watcher_requests = list(fake.requests)
    offline, _, _ = run_backtest(watcher.spec, detector, start, start + 149 * STEP, watcher.source)
    live_table = as_table(live)
    assert len(live_table) == len(offline) == 4 * 150
    np.testing.assert_allclose(live_table["score"], offline["score"], rtol=1e-6)
    assert np.array_equal(live_table["anomalous"], offline["is_anomaly"])
    assert np.array_equal(live_table["alert"], offline["alert"]) and offline["alert"].sum() > 0
    # after the first evaluation each step fetches one new step per query, not the window again
    assert len(watcher_requests) == 150 * len(COLUMNS)
    assert all(float(r["start"]) == float(r["end"]) for r in watcher_requests[len(COLUMNS):])


def test_a_watcher_that_missed_steps_catches_up_and_still_matches(world):
    _, detector = world
    watcher, fake = watcher_for(world)
    start = T0 + (TRAIN_STEPS + 100) * STEP
    live = watcher.evaluate(start)
    fake.fault = "down"
    for k in range(1, 6):  # Prometheus down for five steps: each evaluation fails, nothing is lost
        with pytest.raises(QueryError):
            watcher.evaluate(start + k * STEP)
    fake.fault = None
    live += watcher.evaluate(start + 6 * STEP)  # one fetch covers the six steps missed
    assert len(live) == 4 * 7
    offline, _, _ = run_backtest(watcher.spec, detector, start, start + 6 * STEP, watcher.source)
    np.testing.assert_allclose(as_table(live)["score"], offline["score"], rtol=1e-6)
    snap = watcher.snapshot()
    assert snap.stats.query_errors[(COLUMNS[0], "unreachable")] == 5 and snap.stats.evaluations["failed"] == 5
    # far behind: the steps without context are skipped and counted
    watcher.evaluate(start + 200 * STEP)
    assert watcher.snapshot().stats.skipped_steps > 150


def test_a_restart_or_a_model_swap_during_an_incident_does_not_page_again(world):
    """The alert rule's state is rebuilt from Prometheus: a watcher started (or given a new model) in the
    middle of an incident alerts where a pass that never stopped does, not again inside the cooldown."""
    _, detector = world
    spec = make_spec()
    start = T0 + (TRAIN_STEPS + 100) * STEP
    offline, _, _ = run_backtest(spec, detector, start, start + 299 * STEP, watcher_for(world)[0].source)
    first = offline[offline["alert"]].iloc[0]  # an alert of the pass that never stopped
    restart = first[TIME_COLUMN].timestamp() + 2 * STEP
    after = offline[(offline[TIME_COLUMN] >= pd.Timestamp(restart, unit="s"))
                    & (offline[TIME_COLUMN] < pd.Timestamp(restart + 40 * STEP, unit="s"))].reset_index(drop=True)
    # the case is a real one: a rule started afresh at the restart would page again for that incident
    mine = after[after["host"] == first["host"]]
    assert detector.alert_rule_.apply(mine["is_anomaly"].to_numpy()).any() and not mine["alert"].iloc[:12].any()
    watcher, _ = watcher_for(world)
    live = []
    for k in range(len(after) // 4):
        if k == 10:
            watcher.swap_model(detector, ModelInfo("telemetry", "2", "models:/telemetry@champion"))
        live += watcher.evaluate(restart + k * STEP)
    live_table = as_table(live)
    assert len(live_table) == len(after)
    assert np.array_equal(live_table["anomalous"], after["is_anomaly"])
    assert np.array_equal(live_table["alert"], after["alert"])


def test_queries_that_answer_nothing_are_not_a_success(world):
    """All queries empty (a renamed metric, a Prometheus that lost its data) is counted as no_data and
    does not move last_success, so AnomalyAEWatchStale fires; when data comes back, the context is fetched again."""
    _, detector = world
    watcher, fake = watcher_for(world)
    start = T0 + (TRAIN_STEPS + 50) * STEP
    fake.fault = "empty"
    assert watcher.evaluate(start) == []
    stats = watcher.snapshot().stats
    assert stats.evaluations == {"ok": 0, "failed": 0, "no_data": 1} and stats.last_success is None
    fake.fault = None
    live = watcher.evaluate(start + STEP)
    offline, _, _ = run_backtest(watcher.spec, detector, start + STEP, start + STEP, watcher.source)
    np.testing.assert_allclose(as_table(live)["score"], offline["score"], rtol=1e-6)
    stats = watcher.snapshot().stats
    assert stats.evaluations["ok"] == 1 and stats.last_success is not None
    # a shard that none of the returned series hash to has nothing to score: that is a success
    empty_shard = next(i for i in range(50) if not any(Shard(i, 50).owns(f"host-{h}") for h in range(4)))
    watcher, _ = watcher_for(world, shard=Shard(empty_shard, 50))
    assert watcher.evaluate(start) == [] and watcher.snapshot().stats.evaluations["ok"] == 1


def test_a_series_lacking_one_metric_is_exported_as_incomplete(world):
    from prometheus_client import CollectorRegistry, generate_latest

    from anomaly_ae.watch.exposition import WatchCollector

    watcher, fake = watcher_for(world)
    fake.missing = {("host-1", COLUMNS[2])}
    scores = watcher.evaluate(T0 + (TRAIN_STEPS + 50) * STEP)
    assert {s.series for s in scores} == {"host-0", "host-2", "host-3"}
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WatchCollector(watcher.snapshot))
    text = generate_latest(registry).decode()
    assert f'anomaly_ae_watch_incomplete_series{{metric="{COLUMNS[2]}"}} 1.0' in text
    assert f'anomaly_ae_watch_incomplete_series{{metric="{COLUMNS[0]}"}} 0.0' in text
    fake.missing = set()
    watcher.evaluate(T0 + (TRAIN_STEPS + 51) * STEP)
    assert watcher.snapshot().stats.incomplete == {c: 0 for c in COLUMNS}


def test_shards_split_the_series_with_no_overlap(world):
    start = T0 + (TRAIN_STEPS + 50) * STEP
    seen = []
    for i in range(3):
        watcher, _ = watcher_for(world, shard=Shard(i, 3))
        seen.append({s.series for s in watcher.evaluate(start)})
    assert set.union(*seen) == {f"host-{i}" for i in range(4)} and sum(map(len, seen)) == 4
    assert Shard.parse("2/3") == Shard(2, 3)
    with pytest.raises(ConfigurationError, match="i/n"):
        Shard.parse("3")


def test_a_stale_series_leaves_the_exposition_and_is_counted(world):
    watcher, fake = watcher_for(world)
    start = T0 + (TRAIN_STEPS + 50) * STEP
    watcher.evaluate(start)
    fake.hidden = {"host-2"}
    watcher.evaluate(start + STEP)
    snap = watcher.snapshot()
    assert {s.series for s in snap.scores} == {"host-0", "host-1", "host-3"}
    assert snap.stats.n_stale == 1 and snap.stats.n_series == 3


def test_an_empty_query_and_a_series_cap_are_counted_not_fatal(world):
    watcher, fake = watcher_for(world, spec=make_spec(watch={"evaluation_delay": "0s", "max_series": 2}))
    start = T0 + (TRAIN_STEPS + 50) * STEP
    assert {s.series for s in watcher.evaluate(start)} == {"host-0", "host-1"}
    assert watcher.snapshot().stats.n_dropped == 2
    fake.fault = "empty"
    assert watcher.evaluate(start + STEP) == []
    stats = watcher.snapshot().stats
    assert stats.query_errors[("*", "too_many_series")] == 1 and stats.n_series == 0
    assert stats.query_errors[(COLUMNS[0], "no_data")] == 1


def test_a_model_that_does_not_fit_the_spec_is_refused(world):
    _, detector = world
    spec = make_spec(metrics={"other": "x"})
    with pytest.raises(ConfigurationError, match="trained on columns"):
        Watcher(spec, PrometheusSource(spec, transport=httpx.MockTransport(lambda r: httpx.Response(500))), detector,
                ModelInfo("m", "1", "dir"))
    spec = make_spec(step="30s")
    with pytest.raises(ConfigurationError, match="step of 15 s"):
        Watcher(spec, PrometheusSource(spec, transport=httpx.MockTransport(lambda r: httpx.Response(500))), detector,
                ModelInfo("m", "1", "dir"))


def test_a_query_changed_since_training_is_warned_of_and_the_order_of_metrics_is_free(world, caplog):
    """The same column name over another query (a fraction become a percent) flagged every step without a
    word; the spec's metrics listed in another order were refused, though columns are matched by name."""
    import copy

    from anomaly_ae.watch.watcher import check_model_fits_spec

    detector = copy.copy(world[1])
    detector.training_metadata_ = {"source": {"metrics": {c: c for c in COLUMNS}, "series_label": "host"}}
    assert check_model_fits_spec(detector, make_spec(metrics={c: c for c in reversed(COLUMNS)}), "m") == []
    assert check_model_fits_spec(detector, make_spec(metrics={c: f" {c} " for c in COLUMNS}), "m") == []
    changed = {**{c: c for c in COLUMNS}, COLUMNS[0]: f"{COLUMNS[0]} * 100"}
    notes = check_model_fits_spec(detector, make_spec(metrics=changed, series_label="instance"), "m")
    assert notes == [f"metric '{COLUMNS[0]}' is queried as '{COLUMNS[0]} * 100' but m was trained on "
                     f"'{COLUMNS[0]}': if its unit or meaning changed, every score is off; train again from this spec",
                     "m was trained on series by 'host', the spec groups them by 'instance': its series are new to "
                     "the model (scored with the shared model)"]
    spec = make_spec(metrics=changed)
    with caplog.at_level("WARNING", logger="anomaly_ae.watch"):
        Watcher(spec, PrometheusSource(spec, transport=httpx.MockTransport(lambda r: httpx.Response(500))), detector,
                ModelInfo("m", "1", "dir"))
    assert f"metric '{COLUMNS[0]}' is queried as" in caplog.text


def test_metrics_endpoint_exposes_scores_and_health(world):
    watcher, _ = watcher_for(world)
    watcher.evaluate(T0 + (TRAIN_STEPS + 50) * STEP)
    healthy = [True]
    server = ExpositionServer(watcher.snapshot, lambda: healthy[0], "127.0.0.1", 0).start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        text = httpx.get(f"{base}/metrics", timeout=5).text
        assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
        healthy[0] = False
        assert httpx.get(f"{base}/healthz", timeout=5).status_code == 503
        assert httpx.get(f"{base}/other", timeout=5).status_code == 404
    finally:
        server.stop()
    for name in ("anomaly_ae_watch_score{series=\"host-0\"}", "anomaly_ae_watch_p_value{", "anomaly_ae_watch_anomalous{",
                 "anomaly_ae_watch_top_metric_share{", "anomaly_ae_watch_threshold ",
                 "anomaly_ae_watch_lag_seconds ", "anomaly_ae_watch_series 4.0",
                 "anomaly_ae_watch_query_errors_total{metric=\"cpu_util_pct\",reason=\"timeout\"} 0.0",
                 "anomaly_ae_watch_model_info{name=\"telemetry\",uri=\"models:/telemetry@champion\",version=\"1\"} 1.0",
                 "anomaly_ae_watch_evaluation_duration_seconds_bucket", "anomaly_ae_watch_alerts_total{series=\"host-0\"}",
                 "anomaly_ae_watch_shard_info{shard=\"0\",shards=\"1\"} 1.0"):
        assert name in text, name
    top = [line for line in text.splitlines() if line.startswith("anomaly_ae_watch_top_metric_share{")]
    assert len(top) == 4 and all(any(f'metric="{c}"' in line for c in COLUMNS) for line in top)


def test_queries_that_select_their_shard_are_sent_per_replica_and_not_hashed_again(world):
    frame, detector = world
    spec = make_spec(metrics={c: c + '{watch_shard=~"$shard"}' for c in COLUMNS})
    assert spec.sharded_queries and not make_spec().sharded_queries
    seen = []
    fake = FakePrometheus(frame, time_col="ts", series_col="host")

    def handle(request: httpx.Request) -> httpx.Response:
        from urllib.parse import parse_qs

        query = parse_qs(request.content.decode())["query"][0]
        seen.append(query)
        # the stand-in answers by column name: strip the selector it cannot evaluate
        body = request.content.decode().replace("%7Bwatch_shard%3D~%222%22%7D", "")
        return fake._handle(httpx.Request("POST", request.url, content=body.encode()))

    source = PrometheusSource(spec, transport=httpx.MockTransport(handle), shard=2)
    watcher = Watcher(spec, source, detector, ModelInfo("m", "1", "dir"), shard=Shard(2, 3))
    scores = watcher.evaluate(T0 + (TRAIN_STEPS + 50) * STEP)
    assert seen and all(q.endswith('{watch_shard=~"2"}') for q in seen)
    assert {s.series for s in scores} == {f"host-{i}" for i in range(4)}  # Prometheus chose them; no re-hash
    assert PrometheusSource(spec).queries[COLUMNS[0]] == COLUMNS[0] + '{watch_shard=~".*"}'


def test_backtest_ranges_and_incident_files_get_clear_errors(tmp_path):
    from anomaly_ae.exceptions import DataError
    from anomaly_ae.watch.command import _incident_rows, _range

    spec = make_spec()
    with pytest.raises(WatchSpecError, match="the start .* is after the end .*; swap them"):
        _range(spec, repr(T0 + 10 * STEP), repr(T0))
    assert _range(spec, repr(T0), repr(T0)) == (T0, T0)  # one step: [start, end] is inclusive
    steps = T0 + np.arange(10) * STEP
    table = pd.DataFrame({TIME_COLUMN: pd.to_datetime(np.r_[steps, steps], unit="s"),
                          "host": ["host-0"] * 10 + ["host-1"] * 10})
    good = tmp_path / "good.csv"
    good.write_text(f"series,start,end\nhost-1,{T0 + 2 * STEP!r},{T0 + 4 * STEP!r}\n")
    assert _incident_rows(good, table, "host").tolist() == [0] * 12 + [1] * 3 + [0] * 5
    cases = {"empty.csv": (b"", "empty.csv is empty"),
             "latin.csv": ("series,start,end\nhöst,1,2\n".encode("latin-1"), "cannot read the incidents"),
             "blank.csv": (f"series,start,end\nhost-0,{T0!r},\n".encode(), "line 2 has an empty series, start or end"),
             "extra.csv": (f"series,start,end\nhost-0,{T0!r},{T0!r},oops\n".encode(), "line 2 has 4 fields"),
             "reversed.csv": (f"series,start,end\nhost-0,{T0 + STEP!r},{T0!r}\n".encode(), "line 2 ends"),
             "unknown.csv": (f"series,start,end\nhost-0,{T0!r},{T0!r}\nhost-9,{T0!r},{T0!r}\n".encode(),
                             "line 3 names the series 'host-9', which has no data"),
             "badtime.csv": ("series,start,end\nhost-0,soon,later\n".encode(), "badtime.csv line 2: ")}
    for name, (content, says) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DataError) as caught:
            _incident_rows(tmp_path / name, table, "host")
        assert says in str(caught.value), (name, str(caught.value))


def test_a_bad_model_option_in_the_spec_fails_before_any_history_is_fetched(tmp_path):
    from anomaly_ae.exceptions import InvalidParameterError
    from anomaly_ae.watch.command import train_from_prometheus

    path = tmp_path / "watch.yml"  # nothing listens at the URL: a fetch would fail with a connection error
    path.write_text("prometheus: {url: 'http://127.0.0.1:9'}\nseries_label: host\nstep: 15s\n"
                    "metrics: {a: up}\nmodel: {model: nosuch}\n")
    with pytest.raises(InvalidParameterError, match="unknown model 'nosuch'"):
        train_from_prometheus(path, "-1h", "now", model=None, window=None, out=None, experiment=None, register=None,
                              tracking_uri=None, device="cpu", progress=False)


def test_backtest_refuses_an_out_it_cannot_create_and_bad_threads_before_fetching(tmp_path):
    from typer.testing import CliRunner

    from anomaly_ae.cli import app

    spec = tmp_path / "watch.yml"  # nothing listens at the URL: a fetch would fail with a connection error
    spec.write_text("prometheus: {url: 'http://127.0.0.1:9'}\nseries_label: host\nstep: 15s\nmetrics: {a: up}\n")
    (tmp_path / "afile").write_text("")
    result = CliRunner().invoke(app, ["backtest", "--prometheus", str(spec), "--model", str(tmp_path / "none"),
                                      "--start", "-1h", "--out", str(tmp_path / "afile" / "sub")])
    assert result.exit_code == 2 and "cannot create --out" in result.output and "afile' is a file" in result.output \
        and "Traceback" not in result.output, result.output
    for command in (["backtest", "--prometheus", str(spec), "--model", "m", "--start", "-1h"],
                    ["watch", "--prometheus", str(spec), "--model", "m"], ["train", str(spec)]):
        result = CliRunner().invoke(app, [*command, "--threads", "0"])
        assert result.exit_code == 2 and "Invalid value for '--threads'" in " ".join(result.output.split()), \
            result.output


def test_watch_refuses_sharded_queries_without_a_shard_and_listens_on_ipv6(tmp_path):
    """`$shard` in the queries without --shard watched shard 0 alone (the others silently unwatched)."""
    import socket

    from typer.testing import CliRunner

    from anomaly_ae.cli import app

    spec = tmp_path / "watch.yml"
    spec.write_text("prometheus: {url: 'http://127.0.0.1:9'}\nseries_label: host\nstep: 15s\n"
                    "metrics: {a: 'up{watch_shard=~\"$shard\"}'}\n")
    result = CliRunner().invoke(app, ["watch", "--prometheus", str(spec), "--model", str(tmp_path / "none")])
    output = " ".join(result.output.split())
    assert result.exit_code == 2 and "select a shard with $shard: pass --shard i/n" in output, result.output
    result = CliRunner().invoke(app, ["watch", "--prometheus", str(spec), "--model", "m", "--shard", "0/2",
                                      "--listen", "[::1]:0"])
    assert "--listen takes HOST:PORT" in " ".join(result.output.split())  # port 0 is refused, [::1] is read
    try:
        server = ExpositionServer(lambda: None, lambda: True, "::1", 0).start()
    except OSError:
        pytest.skip("this machine has no IPv6 loopback")
    try:
        assert httpx.get(f"http://[::1]:{server.port}/healthz", timeout=5).status_code == 200
    finally:
        server.stop()
    assert socket.has_ipv6
