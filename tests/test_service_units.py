"""In-process checks of the service's building blocks (no server): the JSON fast path agrees with the
library's pandas path, metrics helpers, settings and keys, the coalescing transport."""

from __future__ import annotations

import os
import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anomaly_ae.data.schema import Schema
from anomaly_ae.data.synthetic import LABEL_COLUMNS, make_telemetry
from anomaly_ae.exceptions import SchemaError

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")

from anomaly_ae.service import metrics  # noqa: E402
from anomaly_ae.service.auth import ADMIN, SCORE, KeyRing  # noqa: E402
from anomaly_ae.service.scorer import Scorer  # noqa: E402
from anomaly_ae.service.server import CoalescingTransport  # noqa: E402
from anomaly_ae.service.settings import ServiceSettings  # noqa: E402


@pytest.fixture(scope="module")
def detector():
    import torch

    from anomaly_ae import Detector

    torch.set_num_threads(1)
    X = make_telemetry(600, seed=1).drop(columns=list(LABEL_COLUMNS))
    X.loc[X.index[::9], "latency_ms"] = np.nan  # a column that may be missing
    return Detector(model="ae", epochs=5, random_state=0).fit(X)


row_values = st.fixed_dictionaries({
    "mode": st.sampled_from(["day", "night", "batch", "maintenance", "holiday"]),
    "cpu_util_pct": st.floats(-1e6, 1e6, allow_nan=False),
    "mem_util_pct": st.floats(0, 100),
    "requests_per_s": st.integers(-10**6, 10**6),
    "latency_ms": st.one_of(st.none(), st.floats(0, 1e5)),
    "error_rate_pct": st.floats(0, 5),
    "disk_io_mb_s": st.floats(0, 1e3),
    "net_in_mb_s": st.floats(-1e300, 1e300),
    "temperature_c": st.floats(-50, 150),
})


@given(st.lists(row_values, min_size=1, max_size=12))
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_json_fast_path_scores_exactly_like_the_library(detector, rows):
    scorer = Scorer(detector)
    columns = {name: [r[name] for r in rows] for name in rows[0]}
    result = scorer.score(columns, top_k=3)
    frame = pd.DataFrame({n: pd.Series(v, dtype=object if n == "mode" else np.float64) for n, v in columns.items()})
    expected = detector.score_frame(frame, top_k=3)
    np.testing.assert_allclose(result.scores, expected["score"], rtol=1e-6)
    np.testing.assert_array_equal(result.p_values, expected["p_value"])
    assert result.severity.tolist() == expected["severity"].tolist()
    assert [f[0] for f in result.top_features] == expected["feature_1"].tolist()
    notes = ["; ".join(n) for n in result.notes] if result.notes else [""] * len(rows)
    assert notes == expected["notes"].tolist()


def test_check_columns_refuses_what_check_refuses(detector):
    schema: Schema = detector.schema_
    good = make_telemetry(3, seed=2).drop(columns=list(LABEL_COLUMNS))
    columns = {n: good[n].tolist() for n in good.columns}
    for column, value, reason in [("cpu_util_pct", None, "missing_value"), ("cpu_util_pct", "1", "dtype"),
                                  ("cpu_util_pct", True, "dtype"), ("cpu_util_pct", float("inf"), "non_finite"),
                                  ("cpu_util_pct", 10 ** 400, "overflow"), ("mode", None, "missing_value"),
                                  ("mode", [1], "dtype")]:
        bad = {**columns, column: [columns[column][0], value, columns[column][2]]}
        with pytest.raises(SchemaError) as info:
            schema.check_columns(bad)
        assert (info.value.reason, info.value.column, info.value.rows) == (reason, column, [1])
    with pytest.raises(SchemaError, match="missing column"):
        schema.check_columns({k: v for k, v in columns.items() if k != "mode"})
    with pytest.raises(SchemaError, match="unexpected column"):
        schema.check_columns({**columns, "extra": [1, 2, 3]})
    with pytest.raises(SchemaError, match="different lengths"):
        schema.check_columns({**columns, "mode": ["day"]})
    checked, report = schema.check_columns({**columns, "latency_ms": [None, 1.0, None], "mode": ["x", 1, "day"]})
    assert report.missing_values == {"latency_ms": 2} and report.unseen_categories == {"mode": 2}
    assert checked["mode"].tolist() == ["x", "1", "day"]


def test_smoke_test_refuses_nan_weights(detector):
    import copy

    import torch

    from anomaly_ae.service.scorer import SmokeTestError

    Scorer(detector).smoke_test()
    broken = copy.deepcopy(detector)
    with torch.no_grad():
        for p in broken.members_[0].parameters():
            p.fill_(float("nan"))
    with pytest.raises(SmokeTestError):
        Scorer(broken).smoke_test()


def test_observe_many_equals_observing_one_by_one():
    from prometheus_client import CollectorRegistry, Histogram

    registry = CollectorRegistry()
    a = Histogram("a_seconds", "a", buckets=(0.1, 1.0, 10.0), registry=registry)
    b = Histogram("b_seconds", "b", buckets=(0.1, 1.0, 10.0), registry=registry)
    values = np.array([0.05, 0.1, 0.5, 1.0, 3.0, 10.0, 11.0, 1e9])
    metrics.observe_many(a, values)
    for v in values:
        b.observe(v)
    sample = {s.name.replace("a_seconds", "x") + str(s.labels): s.value for s in a.collect()[0].samples
              if not s.name.endswith("_created")}
    expected = {s.name.replace("b_seconds", "x") + str(s.labels): s.value for s in b.collect()[0].samples
                if not s.name.endswith("_created")}
    assert sample == pytest.approx(expected)


def test_counters_exist_at_zero_before_their_first_event():
    """A fresh service exposes every bounded label value at 0, so increase() catches the first event."""
    import inspect
    import subprocess
    import sys

    from anomaly_ae.service import model_holder

    # every reason the holder can report is pre-created
    used = set(re.findall(r'_(?:failed|refuse)\(trigger, (?:version, )?"([a-z_]+)"', inspect.getsource(model_holder)))
    assert used and used <= set(metrics.RELOAD_FAILURE_REASONS)
    code = ("from anomaly_ae.service.app import create_app; from anomaly_ae.service import metrics; "
            "from anomaly_ae.service.settings import ServiceSettings; "
            "create_app(ServiceSettings(model_uri='models:/x@champion')); print(metrics.render()[0].decode())")
    text = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}).stdout
    for severity in ("low", "medium", "high", "critical"):
        assert f'anomaly_ae_anomalies_total{{severity="{severity}"}} 0.0' in text
    for reason in used:
        assert f'anomaly_ae_model_reload_failures_total{{reason="{reason}"}} 0.0' in text
    assert 'anomaly_ae_auth_failures_total{status="401"} 0.0' in text
    assert 'anomaly_ae_requests_rejected_total{reason="overloaded"} 0.0' in text


def test_drift_tracker_follows_a_shift():
    numeric = {"x": {"mean": 10.0, "scale": 2.0, "median": 10.0, "missing_indicator": True}}
    tracker = metrics.DriftTracker(numeric, {"c": ["a", "__unknown__"]}, ["x", "c"], max_features=5, window=10)
    for _ in range(50):
        tracker.update({"x": np.full(4, 16.0), "c": np.array(["a", "b", "b", "a"], dtype=object)}, {}, {"c": 2})
    assert tracker.shift[0] == pytest.approx(3.0, rel=1e-3)  # (16 - 10) / 2
    assert tracker.cat_unseen[0] == pytest.approx(0.5, rel=1e-3)
    limited = metrics.DriftTracker(numeric, {"c": ["a"]}, ["x", "c"], max_features=1, window=10)
    assert limited.numeric == ["x"] and limited.categorical == []


def test_log_level_is_one_of_the_known_ones(monkeypatch):
    from pydantic import ValidationError

    monkeypatch.setenv("ANOMALY_AE_LOG_LEVEL", "WARNING")
    assert ServiceSettings(model_uri="m").log_level == "warning"
    with pytest.raises(ValidationError, match="log_level"):  # uvicorn failed on it at start-up, with a traceback
        ServiceSettings(model_uri="m", log_level="loud")


def test_settings_read_comma_separated_keys_and_round_trip(monkeypatch):
    monkeypatch.setenv("ANOMALY_AE_MODEL_URI", "models:/m@champion")
    monkeypatch.setenv("ANOMALY_AE_API_KEYS", " score-key-aaaaaaaaaaaaaaaa , score-key-bbbbbbbbbbbbbbbb,")
    monkeypatch.setenv("ANOMALY_AE_ADMIN_KEYS", "admin-key-cccccccccccccccc")
    s = ServiceSettings()
    assert [k.get_secret_value() for k in s.api_keys] == ["score-key-aaaaaaaaaaaaaaaa", "score-key-bbbbbbbbbbbbbbbb"]
    assert "aaaa" not in repr(s) and s.auth_enabled
    for key, value in s.to_env().items():
        monkeypatch.setenv(key, value)
    assert ServiceSettings() == s
    keys = KeyRing(s)
    assert keys.rights("score-key-bbbbbbbbbbbbbbbb") == {SCORE}
    assert keys.rights("admin-key-cccccccccccccccc") == {SCORE, ADMIN}
    assert keys.rights("score-key-aaaaaaaaaaaaaaa") == set() and keys.rights("") == set()


class _Recorder:
    def __init__(self):
        self.writes, self.closed = [], False

    def write(self, data):
        self.writes.append(bytes(data))

    def close(self):
        self.closed = True

    def is_closing(self):
        return self.closed


def test_admission_gives_the_split_helper_only_to_a_request_scored_alone():
    """A request admitted while the worker scores nothing else may use a second thread; one admitted
    while another scores gets none (both cores are busy then), and without `split` none ever does."""
    import asyncio
    import threading
    import time

    from anomaly_ae.service.limits import Admission

    def work(tag, seen, gate, helper=None):
        seen[tag] = helper
        gate.wait(10)
        return tag

    async def run(admission):
        seen, hold, free = {}, threading.Event(), threading.Event()
        free.set()
        first = asyncio.create_task(admission.score(work, "first", seen, hold, size=10_000))
        deadline = time.monotonic() + 10
        while "first" not in seen:  # the first request is scoring (holds its place and thread)
            assert time.monotonic() < deadline, "the first request never started scoring"
            await asyncio.sleep(0.01)
        await admission.score(work, "second", seen, free, size=10_000)
        hold.set()
        await first
        await admission.score(work, "third", seen, free, size=10_000)
        return seen

    split = Admission(8, 8, threads=2, release_interval_s=0, split=True)
    assert asyncio.run(run(split)) == {"first": split.helper, "second": None, "third": split.helper}
    assert split.helper is not None
    plain = Admission(8, 8, threads=2, release_interval_s=0)
    assert asyncio.run(run(plain)) == {"first": None, "second": None, "third": None}


def test_admission_scores_small_bodies_on_the_event_loop_and_large_ones_in_a_thread():
    """A body of at most inline_max_bytes is scored on the loop's own thread (the hop to a worker thread
    costs about as much as its work), holding a scoring place like any other; a larger one in a thread."""
    import asyncio
    import threading

    from anomaly_ae.service.limits import Admission

    def work(admission, helper=None):
        return threading.get_ident(), admission.scoring, helper

    async def run(admission, size):
        return await admission.score(work, admission, size=size)

    admission = Admission(8, 8, threads=2, release_interval_s=0, split=True, inline_max_bytes=4096)
    loop_thread = threading.get_ident()  # asyncio.run runs the loop on this thread
    assert asyncio.run(run(admission, 4096)) == (loop_thread, 1, None)
    thread, scoring, helper = asyncio.run(run(admission, 4097))
    assert thread != loop_thread and scoring == 1 and helper is admission.helper
    assert admission.scoring == 0
    admission.close()
    off = Admission(8, 8, threads=2, release_interval_s=0)  # inline_max_bytes=0: every body in a thread
    assert asyncio.run(run(off, 1))[0] != loop_thread


@pytest.mark.parametrize("cores, workers, torch_threads, enabled, expected", [
    (2, 1, 1, True, True), (1, 1, 1, True, False), (2, 2, 1, True, False), (2, 1, 2, True, False),
    (8, 2, 2, True, True), (2, 1, 1, False, False)])
def test_requests_are_split_only_where_cores_are_spare(monkeypatch, cores, workers, torch_threads, enabled, expected):
    from anomaly_ae.service.app import _can_split

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    settings = ServiceSettings(model_uri="m", workers=workers, torch_threads=torch_threads,
                               split_large_requests=enabled)
    assert _can_split(settings) is expected


def test_coalescing_transport_sends_each_response_once():
    raw = _Recorder()
    t = CoalescingTransport(raw)
    t.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # interim: at once
    t.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    assert raw.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    t.write(b"{}")
    assert raw.writes[1] == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"
    t.write(b"HTTP/1.1 204 No Content\r\n\r\n")
    t.close()  # a held header block is flushed, never lost
    assert raw.writes[-1] == b"HTTP/1.1 204 No Content\r\n\r\n" and raw.closed and t.is_closing()


def test_serve_with_workers_removes_the_temporary_folders_it_made(tmp_path, monkeypatch):
    """`serve --workers 2` makes a control folder and a metrics folder; a clean exit removes both."""
    import tempfile

    import uvicorn

    from anomaly_ae.service import server

    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items()
                                        if not k.startswith(("ANOMALY_AE_", "PROMETHEUS_MULTIPROC"))})
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    made = {}

    def fake_uvicorn_run(*args, **kwargs):  # what the workers would be handed
        made.update(control=os.environ["ANOMALY_AE_CONTROL_DIR"], metrics=os.environ["PROMETHEUS_MULTIPROC_DIR"])
        assert all(os.path.isdir(path) for path in made.values())

    monkeypatch.setattr(uvicorn, "run", fake_uvicorn_run)
    server.run(ServiceSettings(model_uri=str(tmp_path / "model"), workers=2, api_keys=["k" * 16]))
    assert set(made) == {"control", "metrics"} and all(p.startswith(str(tmp_path)) for p in made.values())
    assert list(tmp_path.iterdir()) == []


def test_a_model_folder_without_its_manifest_is_named_as_such(tmp_path):
    from anomaly_ae.exceptions import ModelLoadError
    from anomaly_ae.service.model_holder import resolve_local

    (tmp_path / "copied").mkdir()
    (tmp_path / "copied" / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="its manifest.json is missing, so its files cannot be checked"):
        resolve_local(str(tmp_path / "copied"))
    with pytest.raises(ModelLoadError, match="expected a directory written by Detector.save"):
        resolve_local(str(tmp_path / "nothing"))
