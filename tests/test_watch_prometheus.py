"""The watcher end to end, on real processes: Prometheus (Debian's) holding backfilled synthetic
history and scraping a live synthetic exporter, `anomaly-ae train --prometheus`, and
`anomaly-ae watch` scraped by the same Prometheus.

One module-scoped world (history, Prometheus, exporter, a model trained with the CLI) is shared;
each test starts what else it needs and stops it. Time is compressed: one step is 2 s.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

from anomaly_ae.data.synthetic_series import SERIES_METRIC_COLUMNS, make_series_telemetry
from anomaly_ae.series_detector import SeriesDetector
from anomaly_ae.watch.command import run_backtest
from anomaly_ae.watch.simulate import SyntheticExporter, demo_spec
from anomaly_ae.watch.source import PrometheusSource, align
from anomaly_ae.watch.spec import WatchSpec
from anomaly_ae.watch.watcher import ModelInfo, Watcher
from watch_support import free_port, history_prometheus, wait_until

pytestmark = pytest.mark.slow

STEP = 2.0
# The synthetic frame has 5-minute rows (288 a day) replayed at one per 2 s. 2,160 rows of history
# (72 minutes here, 7.5 synthetic days) train on a whole week, weekend included, and put the live
# rows at synthetic Monday midday; with less than a week the live windows score near the threshold.
HISTORY_STEPS = 2160
TRAIN_STEPS = 1960  # the model learns from the first 1,960; the last 200 are history it has not seen
HOSTS = 3
CLI = [sys.executable, "-m", "anomaly_ae.cli"]


def _cli_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("watch-e2e")
    frame = make_series_telemetry(HISTORY_STEPS + 2000, HOSTS, anomalies=False, seed=3)
    now = time.time()
    start = align(now, STEP) - (HISTORY_STEPS - 1) * STEP
    history_end = start + (HISTORY_STEPS - 1) * STEP
    watcher_port = free_port()
    # timestamps=True: live samples carry their row's time, so each step holds its own row (without
    # them a scrape is stamped before the exporter answers and a step holds the previous row)
    exporter = SyntheticExporter(frame, start=start, step_seconds=STEP, timestamps=True).start()
    prom = history_prometheus(tmp, frame, start=start, step_seconds=STEP, end=history_end,
                              scrape_targets=[exporter.target], jobs={"anomaly-ae-watch": [f"127.0.0.1:{watcher_port}"]})
    spec_path = tmp / "watch.yml"
    spec_path.write_text(yaml.safe_dump(demo_spec(prom.url, step="2s", window=16)))
    model_dir = tmp / "model"
    train_end = start + (TRAIN_STEPS - 1) * STEP
    train = subprocess.run([*CLI, "train", "--prometheus", str(spec_path), "--start", repr(start),
                            "--end", repr(train_end), "--out", str(model_dir), "--no-progress"],
                           capture_output=True, text=True, timeout=300, env=_cli_env())
    try:
        assert train.returncode == 0, train.stderr[-3000:]
        yield {"tmp": tmp, "prom": prom, "exporter": exporter, "spec_path": spec_path, "model_dir": model_dir,
               "start": start, "history_end": history_end, "watcher_port": watcher_port, "train": train}
    finally:
        prom.stop()
        exporter.stop()


def test_train_from_prometheus_fetches_the_history_and_records_where_it_came_from(world):
    out = world["train"].stderr
    assert f"fetched {HOSTS * TRAIN_STEPS} steps of {HOSTS} series x {len(SERIES_METRIC_COLUMNS)} metrics" in out
    detector = SeriesDetector.load(world["model_dir"])
    source = detector.training_metadata_["source"]
    assert source["series_label"] == "host" and source["step_seconds"] == STEP
    assert len(source["query_fingerprint"]) == 16 and source["report"]["n_series"] == HOSTS
    assert detector.framing_.step_seconds == STEP and sorted(detector.framing_.known_series) == \
        [f"host-{i}" for i in range(HOSTS)]


def test_over_backfilled_history_the_watcher_equals_an_offline_pass(world):
    """Same windows, same scores, same alerts: a watcher stepped through the last 120 steps of the
    history in Prometheus against run_backtest (the offline SeriesDetector pass) over that range.
    (Steps the model was calibrated on are left out: the threshold is one of their scores, and a
    float32 rounding difference would flip that one step.)"""
    spec = WatchSpec.model_validate(yaml.safe_load(world["spec_path"].read_text()))
    detector = SeriesDetector.load(world["model_dir"])
    first = world["history_end"] - 119 * STEP
    with PrometheusSource(spec) as source:
        watcher = Watcher(spec, source, detector, ModelInfo("m", "1", str(world["model_dir"])))
        live = [s for k in range(120) for s in watcher.evaluate(first + k * STEP)]
        offline, _, _ = run_backtest(spec, detector, first, world["history_end"], source)
    live.sort(key=lambda s: (s.series, s.timestamp))
    assert len(live) == len(offline) == HOSTS * 120
    # float32 distances: the same windows scored in batches of another size round differently
    np.testing.assert_allclose([s.score for s in live], offline["score"], rtol=1e-4)
    assert [s.anomalous for s in live] == offline["is_anomaly"].tolist()
    assert [s.alert for s in live] == offline["alert"].tolist()


def test_a_query_that_returns_nothing_or_too_many_series_is_counted_not_fatal(world):
    raw = yaml.safe_load(world["spec_path"].read_text())
    detector = SeriesDetector.load(world["model_dir"])
    t = world["history_end"]
    empty = {**raw, "metrics": {**raw["metrics"], "cpu_util_pct": 'max by (host) (demo_cpu_util_pct{host="nope"})'}}
    capped = {**raw, "watch": {**raw["watch"], "max_series": 1}}
    with PrometheusSource(WatchSpec.model_validate(empty)) as source:
        watcher = Watcher(WatchSpec.model_validate(empty), source, detector, ModelInfo("m", "1", "dir"))
        assert watcher.evaluate(t) == []
        assert watcher.snapshot().stats.query_errors[("cpu_util_pct", "no_data")] == 1
    with PrometheusSource(WatchSpec.model_validate(capped)) as source:
        watcher = Watcher(WatchSpec.model_validate(capped), source, detector, ModelInfo("m", "1", "dir"))
        assert {s.series for s in watcher.evaluate(t)} == {"host-0"}
        assert watcher.snapshot().stats.n_dropped == HOSTS - 1


def test_a_malformed_spec_is_one_line_and_exit_code_2(world, tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("prometheus: {url: http://127.0.0.1:1}\nseries_label: host\nstep: 2 seconds\nmetrics: {a: up}\n")
    result = subprocess.run([*CLI, "watch", "--prometheus", str(bad), "--model", str(world["model_dir"])],
                            capture_output=True, text=True, timeout=120, env=_cli_env())
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "watch spec" in result.stderr and "step: step must be a duration" in result.stderr


def _scrape(port: int) -> str:
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text


def _sample(text: str, prefix: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_live_the_anomalous_host_alerts_through_prometheus_and_the_watcher_survives_a_restart(world):
    prom, exporter, port = world["prom"], world["exporter"], world["watcher_port"]
    log_path = world["tmp"] / "watch.log"
    with open(log_path, "w") as log:
        watcher = subprocess.Popen([*CLI, "watch", "--prometheus", str(world["spec_path"]), "--model",
                                    str(world["model_dir"]), "--listen", f"127.0.0.1:{port}", "--reload-interval", "5"],
                                   stdout=log, stderr=subprocess.STDOUT, env=_cli_env())
    try:
        # scraped by Prometheus and scoring every host
        wait_until(lambda: prom.value('sum(anomaly_ae_watch_series{job="anomaly-ae-watch"})') == HOSTS, timeout=90,
                   what="Prometheus to see the watcher scoring every host")
        # windows that span the history's end hold a few repeated values (Prometheus' lookback until
        # the first scrape); wait until the window of the newest step is all live rows
        window = SeriesDetector.load(world["model_dir"]).window_
        live_from = world["history_end"] + 5 * STEP  # the first scrape comes within ~5 s of Prometheus' start
        wait_until(lambda: (_sample(_scrape(port), "anomaly_ae_watch_last_step_timestamp_seconds") or 0)
                   > live_from + window * STEP, timeout=120, what="a window of live steps")
        # alerts so far (the first live windows span the backfill's end, where Prometheus' lookback
        # repeats the last backfilled value until the first scrape: a stuck value, rightly flagged)
        before = {r["metric"]["series"]: float(r["value"][1]) for r in prom.query("anomaly_ae_watch_alerts_total")}
        inject_at = align(time.time(), STEP) + 2 * STEP
        exporter.inject("host-1", "cpu_util_pct", 6.0, from_time=inject_at)  # CPU up, requests down: a runaway process
        exporter.inject("host-1", "requests_per_s", 0.2, from_time=inject_at)
        alerted = wait_until(lambda: (prom.value('anomaly_ae_watch_last_alert_timestamp_seconds{series="host-1"}')
                                      or 0) >= inject_at and
                             prom.value('anomaly_ae_watch_last_alert_timestamp_seconds{series="host-1"}'),
                             timeout=90, what="Prometheus to record an alert for host-1 after the injection")
        rule = SeriesDetector.load(world["model_dir"]).alert_rule_
        # the first injected step the watcher can see is the first step at or after inject_at that a
        # scrape covered (the exporter serves a row per 2 s; scrapes every 1 s)
        alert_lines = [line for line in log_path.read_text().splitlines() if "alert:" in line]
        assert alerted - inject_at <= (rule.min_steps + 1) * STEP, (alerted, inject_at, alert_lines)
        after = {r["metric"]["series"]: float(r["value"][1]) for r in prom.query("anomaly_ae_watch_alerts_total")}
        assert all(after[s] == before.get(s, 0) for s in after if s != "host-1"), (before, after)
        assert prom.value('anomaly_ae_watch_anomalous{series="host-1"}') == 1

        # Prometheus goes away: the watcher keeps serving /metrics, counts the failures, stays healthy
        prom.stop()
        wait_until(lambda: (_sample(_scrape(port), 'anomaly_ae_watch_query_errors_total{metric="cpu_util_pct",'
                                                   'reason="unreachable"}') or 0) >= 1, timeout=60,
                   what="the watcher to count unreachable queries")
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        stopped_at = time.time()
        prom.start()
        wait_until(lambda: (_sample(_scrape(port), "anomaly_ae_watch_last_step_timestamp_seconds") or 0)
                   > stopped_at + STEP, timeout=120, what="the watcher to score steps after the restart")
        assert watcher.poll() is None
    finally:
        watcher.send_signal(signal.SIGTERM)
        try:
            code = watcher.wait(timeout=60)
        except subprocess.TimeoutExpired:
            watcher.kill()
            raise
    text = log_path.read_text()
    assert code == 0 and "Traceback" not in text, text[-3000:]
    assert "unreachable" in text and "stopped" in text


def test_a_model_trained_from_prometheus_is_registered_with_its_spec_and_reloaded_when_the_alias_moves(
        world, mlflow_server):
    """`train --prometheus --register` logs the spec, the fetch report and the query fingerprint; a
    watcher on models:/NAME@champion switches to a newly promoted version at its next reload check."""
    from mlflow import MlflowClient

    from anomaly_ae.registry import log_training_run
    from anomaly_ae.watch.source import fetch_frame
    from anomaly_ae.watch.watcher import ModelSource, WatchLoop

    name = f"watch-e2e-{int(time.time() * 1000) % 10**8}"
    end = repr(world["start"] + (TRAIN_STEPS - 1) * STEP)
    result = subprocess.run([*CLI, "train", "--prometheus", str(world["spec_path"]), "--start", repr(world["start"]),
                             "--end", end, "--register", name, "--tracking-uri", mlflow_server, "--no-progress"],
                            capture_output=True, text=True, timeout=300, env=_cli_env())
    assert result.returncode == 0, result.stderr[-3000:]
    # a second version (the same model, logged by the library: the CLI path is the one above)
    spec = WatchSpec.model_validate(yaml.safe_load(world["spec_path"].read_text()))
    with PrometheusSource(spec) as source:
        frame, _ = fetch_frame(source, world["start"], float(end))
    log_training_run(SeriesDetector.load(world["model_dir"]), frame, register=name, tracking_uri=mlflow_server)
    client = MlflowClient(mlflow_server)
    version = client.get_model_version(name, "1")
    run = client.get_run(version.run_id)
    assert run.data.params["source.kind"] == "prometheus" and len(run.data.params["source.query_fingerprint"]) == 16
    assert {a.path for a in client.list_artifacts(version.run_id, "source")} == {"source/watch.yml",
                                                                                "source/fetch_report.json"}
    client.set_registered_model_alias(name, "champion", "1")
    models = ModelSource(f"models:/{name}@champion", tracking_uri=mlflow_server)
    detector, info = models.load()
    with PrometheusSource(spec) as source:
        watcher = Watcher(spec, source, detector, info)
        loop = WatchLoop(watcher, models, reload_interval=0.0)
        loop._maybe_reload()
        assert watcher.model.version == "1" and watcher.stats.reloads == {"ok": 0, "failed": 0}
        client.set_registered_model_alias(name, "champion", "2")
        loop._maybe_reload()
        assert watcher.model.version == "2" and watcher.stats.reloads["ok"] == 1
        assert watcher.evaluate(world["history_end"])  # scores with the new version
        models.uri = f"models:/{name}@no-such-alias"  # a version that cannot be loaded: the last good one stays
        loop._maybe_reload()
        assert watcher.model.version == "2" and watcher.stats.reloads["failed"] == 1


def test_backtest_reports_alerts_and_event_recall_and_writes_scores_and_plots(world, tmp_path):
    first, last = world["history_end"] - 150 * STEP, world["history_end"]
    incidents = tmp_path / "incidents.csv"
    incidents.write_text(f"series,start,end\nhost-2,{first + 40 * STEP!r},{first + 60 * STEP!r}\n")
    out = tmp_path / "backtest"
    result = subprocess.run([*CLI, "backtest", "--prometheus", str(world["spec_path"]), "--model",
                             str(world["model_dir"]), "--start", repr(first), "--end", repr(last), "--labels",
                             str(incidents), "--out", str(out)], capture_output=True, text=True, timeout=300,
                            env=_cli_env())
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps_scored"] == HOSTS * 151 and summary["series"] == HOSTS
    assert summary["events_by_alerts"]["n_events"] == 1 and summary["events_by_flagged_steps"]["n_events"] == 1
    scores = pd.read_csv(out / "scores.csv")
    assert list(scores.columns) == ["timestamp", "host", "score", "p_value", "is_anomaly", "top_metric", "alert"]
    assert len(scores) == HOSTS * 151 and any(p.suffix == ".png" for p in out.iterdir())
    # the same range through the library: what the CLI wrote
    spec = WatchSpec.model_validate(yaml.safe_load(world["spec_path"].read_text()))
    with PrometheusSource(spec) as source:
        table, _, _ = run_backtest(spec, SeriesDetector.load(world["model_dir"]), first, last, source)
    np.testing.assert_allclose(scores["score"], table["score"], rtol=1e-6)
