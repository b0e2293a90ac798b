"""The scoring service through real HTTP: real uvicorn processes, real saved models, real requests.

Three services start at once (they take a few seconds each to import torch): `api` (auth on,
small limits, no polling), `reload` (polls its model directory every 0.2 s), `open` (no keys,
one scoring request at a time). Model directories stand in for registry aliases here (a new
manifest = a moved alias); test_service_registry.py does the same against a real MLflow server.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import math
import shutil
import signal
import socket
import subprocess
import threading
import time
from typing import Callable, Iterator

import httpx
import numpy as np
import pandas as pd
import pytest

from service_support import ADMIN, ADMIN_KEY, SCORE, SCORE_KEY, Service, metric_value, train_model, wait_for

from anomaly_ae import Detector
from anomaly_ae.data.synthetic import LABEL_COLUMNS, make_telemetry

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    first = train_model(root / "v1", seed=1)
    second = train_model(root / "v2", seed=3, random_state=1)
    return root, first, second


@pytest.fixture(scope="module")
def services(models, tmp_path_factory):
    root, _, _ = models
    logs = tmp_path_factory.mktemp("logs")
    shutil.copytree(root / "v1", root / "served")
    started = {
        "api": Service(root / "v1", log=logs / "api.log", max_rows=100, max_body_bytes=100_000,
                       env={"ANOMALY_AE_BODY_TIMEOUT_S": "2"}),
        "reload": Service(root / "served", log=logs / "reload.log", poll_interval=0.2),
        "open": Service(root / "v1", keys=False, log=logs / "open.log", max_concurrency=1),
    }
    try:
        for service in started.values():
            service.wait_ready()
        yield started
    finally:
        for service in started.values():
            service.stop()


@pytest.fixture(scope="module")
def api(services):
    with httpx.Client(base_url=services["api"].url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def incoming():
    frame = make_telemetry(60, anomaly_fraction=0.2, seed=7).drop(columns=list(LABEL_COLUMNS))
    return frame


def records(frame: pd.DataFrame) -> list[dict]:
    return json.loads(frame.to_json(orient="records"))


def score(client: httpx.Client, body, headers=SCORE, **kwargs) -> httpx.Response:
    return client.post("/v1/score", json=body, headers=headers, **kwargs)


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["status"] == status and error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error


# ---------------------------------------------------------------------------- scoring
def test_scores_match_the_library(api, models, incoming):
    _, detector, _ = models
    expected = detector.score_frame(incoming, top_k=3)
    body = {"records": records(incoming), "ids": [f"host-{i}" for i in range(len(incoming))], "explain": True}
    response = score(api, body)
    assert response.status_code == 200, response.text
    payload = response.json()
    assert payload["model"]["name"] == "v1" and len(payload["model"]["version"]) == 12
    assert payload["n_rows"] == len(incoming) and payload["threshold"] == pytest.approx(detector.threshold_)
    rows = payload["results"]
    assert [r["id"] for r in rows] == body["ids"]
    np.testing.assert_allclose([r["score"] for r in rows], expected["score"], rtol=1e-6)
    np.testing.assert_allclose([r["p_value"] for r in rows], expected["p_value"])
    assert [r["is_anomaly"] for r in rows] == expected["is_anomaly"].tolist()
    assert [r["severity"] for r in rows] == expected["severity"].tolist()
    assert [r["top_features"][0]["feature"] for r in rows] == expected["feature_1"].tolist()
    assert payload["n_anomalies"] == int(expected["is_anomaly"].sum()) > 0


def test_columnar_form_equals_records_and_explain_is_optional(api, incoming):
    cols = list(incoming.columns)
    columnar = {"columns": cols, "data": [[r[c] for c in cols] for r in records(incoming.head(5))]}
    a = score(api, columnar).json()["results"]
    b = score(api, {"records": records(incoming.head(5))}).json()["results"]
    assert a == b
    assert "top_features" not in a[0] and "id" not in a[0]
    explained = score(api, {**columnar, "explain": True, "top_k": 2}).json()["results"]
    assert [len(r["top_features"]) for r in explained] == [2] * 5
    assert all(sum(f["contribution"] for f in r["top_features"]) <= 1 + 1e-9 for r in explained)
    # column order in the columnar form does not matter
    rev = {"columns": cols[::-1], "data": [row[::-1] for row in columnar["data"]]}
    assert score(api, rev).json()["results"] == a


def test_unseen_category_is_scored_with_a_note(api, incoming):
    row = records(incoming.head(1))[0] | {"mode": "holiday"}
    result = score(api, {"records": [row]}).json()["results"][0]
    assert result["notes"] == ["unseen category 'holiday' in 'mode'"] and math.isfinite(result["score"])


def test_extreme_values_give_finite_scores(api, incoming):
    row = records(incoming.head(1))[0]
    huge = {k: (1.7e308 if isinstance(v, float) else v) for k, v in row.items()}
    tiny = {k: (-1.7e308 if isinstance(v, float) else v) for k, v in row.items()}
    payload = score(api, {"records": [huge, tiny, row | {"cpu_util_pct": 10 ** 18}]}).json()
    assert all(math.isfinite(r["score"]) and r["is_anomaly"] for r in payload["results"])


def test_model_info_describes_the_schema(api, models):
    info = api.get("/v1/model", headers=SCORE).json()
    assert info["name"] == "v1" and info["model_type"] == "ae" and info["alias"] is None
    assert info["threshold"] == pytest.approx(models[1].threshold_)
    columns = {c["name"]: c for c in info["schema"]["columns"]}
    assert columns["mode"]["kind"] == "categorical" and "day" in columns["mode"]["categories"]
    assert columns["cpu_util_pct"]["kind"] == "numeric"
    assert info["loaded_at"].endswith("+00:00")


def test_health_ready_docs(api):
    assert api.get("/healthz").json() == {"status": "ok"}
    assert api.get("/readyz").json()["status"] == "ready"
    assert api.get("/docs").status_code == 200
    spec = api.get("/openapi.json").json()
    assert "records" in spec["paths"]["/v1/score"]["post"]["requestBody"]["content"]["application/json"]["schema"][
        "properties"]


# ---------------------------------------------------------------------------- auth
@pytest.mark.parametrize("path,method,right", [("/v1/score", "POST", "score"), ("/v1/model", "GET", "score"),
                                               ("/v1/admin/reload", "POST", "admin")])
def test_auth_matrix(api, incoming, path, method, right):
    body = {"records": records(incoming.head(1))} if path == "/v1/score" else None
    cases = {
        "none": ({}, 401),
        "not bearer": ({"Authorization": f"Basic {SCORE_KEY}"}, 401),
        "bearer without key": ({"Authorization": "Bearer"}, 401),
        "wrong key": ({"Authorization": "Bearer " + "x" * 26}, 401),
        "prefix of a key": ({"Authorization": f"Bearer {SCORE_KEY[:-1]}"}, 401),
        "score key": (SCORE, 200 if right == "score" else 403),
        "admin key": (ADMIN, 200),
    }
    for name, (headers, status) in cases.items():
        response = api.request(method, path, json=body, headers=headers)
        assert response.status_code == status, (name, response.text)
        if status == 401:
            assert response.headers["www-authenticate"] == "Bearer"
            assert_error(response, 401, "unauthorized")
        if status == 403:
            assert_error(response, 403, "forbidden")


def test_probes_and_metrics_need_no_key(api):
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert api.get(path).status_code == 200


def test_keys_never_reach_the_logs(services, api):
    api.get("/v1/model", headers={"Authorization": "Bearer wrong-key-which-must-not-be-logged"})
    text = services["api"].output() + services["reload"].output()
    assert SCORE_KEY not in text and ADMIN_KEY not in text and "wrong-key-which" not in text


# ---------------------------------------------------------------------------- bad input
BAD_BODIES = {
    "not json": (b"{records: 1}", 400, "invalid_json"),
    "truncated json": (b'{"records": [{"mode": "day"', 400, "invalid_json"),
    "NaN literal": (b'{"records": [{"cpu_util_pct": NaN}]}', 400, "invalid_json"),
    "Infinity literal": (b'{"columns": ["a"], "data": [[Infinity]]}', 400, "invalid_json"),
    "number beyond float": (b'{"columns": ["a"], "data": [[1e999]]}', 400, "invalid_json"),
    "empty body": (b"", 400, "invalid_json"),
    "not an object": (b"[1, 2]", 422, "invalid_body"),
    "no rows field": (b'{"explain": true}', 422, "invalid_body"),
    "unknown top-level field": (b'{"records": [{}], "foo": 1}', 422, "unknown_field"),
    "both forms": (b'{"records": [{}], "columns": ["a"], "data": [[1]]}', 422, "invalid_body"),
    "empty batch": (b'{"records": []}', 422, "empty_batch"),
    "empty data": (b'{"columns": ["a"], "data": []}', 422, "empty_batch"),
    "records not a list": (b'{"records": {"a": 1}}', 422, "invalid_field"),
    "record not an object": (b'{"records": [1]}', 422, "invalid_record"),
    "columns without data": (b'{"columns": ["a"]}', 422, "invalid_body"),
    "ragged rows": (b'{"columns": ["a", "b"], "data": [[1, 2], [1]]}', 422, "invalid_row"),
    "duplicate columns": (b'{"columns": ["a", "a"], "data": [[1, 2]]}', 422, "duplicate_column"),
    "explain not bool": (b'{"records": [{}], "explain": "yes"}', 422, "invalid_field"),
    "top_k too big": (b'{"records": [{}], "top_k": 1000}', 422, "invalid_field"),
    "top_k bool": (b'{"records": [{}], "top_k": true}', 422, "invalid_field"),
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_malformed_bodies_get_one_error_shape(api, case):
    body, status, code = BAD_BODIES[case]
    response = api.post("/v1/score", content=body, headers={**SCORE, "Content-Type": "application/json"})
    assert_error(response, status, code)


def test_schema_violations_name_column_and_rows(api, incoming):
    good = records(incoming.head(3))
    cases = {
        "missing column": ([{k: v for k, v in r.items() if k != "latency_ms"} for r in good], "missing_column",
                           "latency_ms"),
        "missing in one record": ([good[0], {k: v for k, v in good[1].items() if k != "latency_ms"}, good[2]],
                                  "missing_column", "latency_ms"),
        "extra column": ([r | {"colour": "red"} for r in good], "extra_column", "colour"),
        "text in numeric": ([good[0], good[1] | {"cpu_util_pct": "high"}, good[2]], "dtype", "cpu_util_pct"),
        "numeric string": ([good[0], good[1], good[2] | {"cpu_util_pct": "55.0"}], "dtype", "cpu_util_pct"),
        "bool in numeric": ([good[0] | {"temperature_c": True}, good[1], good[2]], "dtype", "temperature_c"),
        "null not allowed": ([good[0], good[1] | {"latency_ms": None}, good[2]], "missing_value", "latency_ms"),
        "object in categorical": ([good[0], good[1], good[2] | {"mode": {"a": 1}}], "dtype", "mode"),
        "list in numeric": ([good[0] | {"mem_util_pct": [1.0]}, good[1], good[2]], "dtype", "mem_util_pct"),
    }
    expected_rows = {"missing in one record": [1], "text in numeric": [1], "numeric string": [2],
                     "bool in numeric": [0], "null not allowed": [1], "object in categorical": [2],
                     "list in numeric": [0]}
    for name, (rows, code, column) in cases.items():
        error = assert_error(score(api, {"records": rows}), 422, code)
        assert error["column"] == column, name
        if name in expected_rows:
            assert error["rows"] == expected_rows[name], name


def test_ids_are_checked(api, incoming):
    body = {"records": records(incoming.head(2))}
    assert_error(score(api, body | {"ids": ["a"]}), 422, "invalid_ids")
    assert_error(score(api, body | {"ids": [1.5, 2]}), 422, "invalid_ids")
    assert_error(score(api, body | {"ids": ["x" * 300, "b"]}), 422, "invalid_ids")
    assert [r["id"] for r in score(api, body | {"ids": [7, "b"]}).json()["results"]] == [7, "b"]


def test_content_type_and_size_limits(api, incoming):
    body = json.dumps({"records": records(incoming.head(2))}).encode()
    assert_error(api.post("/v1/score", content=body, headers={**SCORE, "Content-Type": "text/plain"}), 415)
    assert_error(api.post("/v1/score", content=body, headers=SCORE), 415)  # no content type at all
    too_many = {"records": records(make_telemetry(101, seed=3).drop(columns=list(LABEL_COLUMNS)))}
    assert_error(score(api, too_many), 413, "too_many_rows")
    big = json.dumps({"records": [{"mode": "x" * 120_000}]}).encode()
    assert_error(api.post("/v1/score", content=big, headers={**SCORE, "Content-Type": "application/json"}), 413,
                 "body_too_large")

    def chunked():  # no Content-Length: the limit applies while streaming
        for _ in range(30):
            yield b" " * 10_000
    assert_error(api.post("/v1/score", content=chunked(), headers={**SCORE, "Content-Type": "application/json"}),
                 413, "body_too_large")


def test_a_body_that_never_arrives_times_out(services):
    """A client that declares a body and stalls gets 408 after body_timeout_s and frees its slot."""
    port = services["api"].port  # body_timeout_s=2
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(f"POST /v1/score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SCORE_KEY}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode())
        started = time.monotonic()
        reply = sock.recv(4096).decode()
        assert 1.5 < time.monotonic() - started < 15
    assert reply.startswith("HTTP/1.1 408") and '"body_timeout"' in reply


def test_oversized_body_is_refused_before_it_is_read(services):
    """A declared 1 GB body gets its 413 at once, though only the headers were sent."""
    port = services["api"].port
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"POST /v1/score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SCORE_KEY}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n{".encode())
        started = time.monotonic()
        reply = sock.recv(4096).decode()
        assert time.monotonic() - started < 5
    assert reply.startswith("HTTP/1.1 413") and '"body_too_large"' in reply


def test_unknown_routes_and_methods_use_the_error_shape(api):
    assert_error(api.get("/nope"), 404, "not_found")
    assert_error(api.get("/v1/score", headers=SCORE), 405, "method_not_allowed")
    assert_error(api.post("/v1/admin/reload?force=maybe", headers=ADMIN), 422, "invalid_parameter")


# ---------------------------------------------------------------------------- metrics
def test_metrics_count_exactly_and_pass_promtool(services, incoming):
    with httpx.Client(base_url=services["api"].url, timeout=30) as client:
        before = client.get("/metrics").text
        for n in (1, 4, 9):
            assert score(client, {"records": records(incoming.head(n))}).status_code == 200
        assert score(client, {"records": [{"mode": "day"}]}).status_code == 422
        after = client.get("/metrics").text

    def delta(name, **labels):
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    assert delta("anomaly_ae_rows_scored_total") == 14
    assert delta("anomaly_ae_http_requests_total", route="/v1/score", method="POST", status="2xx") == 3
    assert delta("anomaly_ae_http_requests_total", route="/v1/score", method="POST", status="4xx") == 1
    assert delta("anomaly_ae_validation_errors_total", reason="missing_column") == 1
    assert delta("anomaly_ae_score_count") == 14 and delta("anomaly_ae_p_value_count") == 14
    assert delta("anomaly_ae_http_request_duration_seconds_count", route="/v1/score", method="POST") == 4
    assert metric_value(after, "anomaly_ae_model_info", name="v1", model_type="ae") == 1
    assert metric_value(after, "anomaly_ae_model_ready") == 1
    assert metric_value(after, "anomaly_ae_http_requests_in_flight") == 1  # the scrape itself
    assert 'anomaly_ae_feature_mean_shift{feature="cpu_util_pct"}' in after
    assert_promtool_accepts(after)


def assert_promtool_accepts(text: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian: apt-get install prometheus)")
    result = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=60)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


# ---------------------------------------------------------------------------- open service: no keys, overload
def test_without_keys_serve_warns_loudly_and_is_open(services, incoming):
    service = services["open"]
    assert "no API keys configured" in service.output()
    assert httpx.post(f"{service.url}/v1/score", json={"records": records(incoming.head(1))}).status_code == 200


@contextlib.contextmanager
def request_in_flight(url: str, body: bytes) -> Iterator[Callable[[], httpx.Response]]:
    """A scoring request held in flight: its body stops after 10 bytes until `finish()` sends the
    rest and returns the response."""
    started, release = threading.Event(), threading.Event()

    def parts():
        yield body[:10]
        started.set()
        release.wait(30)
        yield body[10:]

    def finish() -> httpx.Response:
        release.set()
        return sending.result()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        sending = pool.submit(httpx.post, f"{url}/v1/score", content=parts(),
                              headers={"Content-Type": "application/json"}, timeout=60)
        try:
            assert started.wait(30)
            time.sleep(0.3)
            yield finish
        finally:
            release.set()


def test_overload_is_refused_fast_with_retry_after(services, incoming):
    service = services["open"]  # max_concurrency=1
    body = json.dumps({"records": records(incoming.head(2))}).encode()
    with request_in_flight(service.url, body) as finish:
        t0 = time.monotonic()
        refused = httpx.post(f"{service.url}/v1/score", content=body, headers={"Content-Type": "application/json"})
        assert time.monotonic() - t0 < 2
        assert finish().status_code == 200
    assert_error(refused, 503, "overloaded")
    assert refused.headers["retry-after"] == "1"
    metrics = httpx.get(f"{service.url}/metrics").text
    assert metric_value(metrics, "anomaly_ae_requests_rejected_total", reason="overloaded") == 1


# ---------------------------------------------------------------------------- hot reload (model directory)
def versions_seen(url: str, body: dict, stop: threading.Event, out: list) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        while not stop.is_set():
            response = client.post("/v1/score", json=body, headers=SCORE)
            out.append((response.status_code, response.json().get("model", {}).get("version")))


def current_version(url: str) -> str:
    return httpx.get(f"{url}/readyz").json()["model"]["version"]


def test_model_switch_under_concurrent_requests_fails_none(services, models, incoming):
    root, _, _ = models
    url = services["reload"].url
    old = current_version(url)
    body = {"records": records(incoming.head(20))}
    stop, seen = threading.Event(), [[] for _ in range(4)]
    threads = [threading.Thread(target=versions_seen, args=(url, body, stop, out)) for out in seen]
    for t in threads:
        t.start()
    time.sleep(1.0)
    Detector.load(root / "v2").save(root / "served")  # the atomic replace a new alias target amounts to
    assert wait_for(lambda: current_version(url) != old)
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join()
    flat = [s for out in seen for s in out]
    assert len(flat) > 20 and all(status == 200 for status, _ in flat)
    new = current_version(url)
    for out in seen:  # each client sees the old version, then only the new one
        versions = [v for _, v in out]
        assert set(versions) <= {old, new}
        assert versions == sorted(versions, key=lambda v: v == new)
    assert any(v == new for _, v in flat) and any(v == old for _, v in flat)
    metrics = httpx.get(f"{url}/metrics").text
    assert metric_value(metrics, "anomaly_ae_model_reload_attempts_total", trigger="poll") >= 1
    assert metric_value(metrics, "anomaly_ae_model_info", version=new) == 1
    assert metric_value(metrics, "anomaly_ae_model_info", version=old) == 0


def admin_reload(url: str, force: bool = False, timeout_s: float = 60.0) -> httpx.Response:
    """POST /v1/admin/reload, waiting out a background poll that is mid-reload (503 reload_in_progress):
    on a loaded machine the poll and the admin call can overlap."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = httpx.post(f"{url}/v1/admin/reload" + ("?force=true" if force else ""), headers=ADMIN, timeout=60)
        busy = response.status_code == 503 and response.json()["error"]["code"] == "reload_in_progress"
        if not busy or time.monotonic() > deadline:
            return response
        time.sleep(0.5)


def test_broken_versions_are_refused_and_the_last_good_model_serves(services, models, incoming):
    import torch

    root, _, _ = models
    url = services["reload"].url
    good = current_version(url)
    body = {"records": records(incoming.head(3))}
    # 1. loads fine, but its weights are NaN: refused by the smoke test
    broken = Detector.load(root / "v1")
    with torch.no_grad():
        for p in broken.members_[0].parameters():
            p.fill_(float("nan"))
    broken.save(root / "served")
    metrics_url = f"{url}/metrics"
    assert wait_for(lambda: metric_value(httpx.get(metrics_url).text, "anomaly_ae_model_reload_failures_total",
                                         reason="smoke_test_failed") >= 1)
    assert current_version(url) == good
    assert httpx.post(f"{url}/v1/score", json=body, headers=SCORE).json()["model"]["version"] == good
    # 2. a tampered file: the manifest's hash no longer matches, Detector.load refuses it
    train_model(root / "v3", seed=5, epochs=5)
    shutil.rmtree(root / "served")
    shutil.copytree(root / "v3", root / "served")
    weights = root / "served" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    assert wait_for(lambda: metric_value(httpx.get(metrics_url).text, "anomaly_ae_model_reload_failures_total",
                                         reason="load_error") >= 1)
    assert current_version(url) == good
    # an admin can see why and retry
    response = admin_reload(url)
    assert_error(response, 409, "load_error")
    assert "SHA-256" in response.json()["error"]["message"]
    # 3. the model source disappears (a dead registry, for a directory): still ready, still scoring
    shutil.rmtree(root / "served")
    time.sleep(1.0)
    assert httpx.get(f"{url}/readyz").status_code == 200
    assert httpx.post(f"{url}/v1/score", json=body, headers=SCORE).status_code == 200
    assert_error(admin_reload(url), 503)
    # 4. a good version again: served
    shutil.copytree(root / "v1", root / "served")
    assert wait_for(lambda: current_version(url) != good)
    response = admin_reload(url)
    assert response.status_code == 200 and response.json()["status"] == "unchanged"
    forced = admin_reload(url, force=True)
    assert forced.status_code == 200 and forced.json()["status"] == "loaded"


# ---------------------------------------------------------------------------- shutdown
def test_graceful_shutdown_finishes_in_flight_requests(services, incoming):
    service = services["open"]
    body = json.dumps({"records": records(incoming.head(2))}).encode()
    with request_in_flight(service.url, body) as finish:
        service.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert service.proc.poll() is None  # waiting for the request
        response = finish()
    assert response.status_code == 200 and len(response.json()["results"]) == 2
    # uvicorn re-raises the SIGTERM it handled once shutdown is complete
    assert service.proc.wait(30) in (0, -signal.SIGTERM)


# ---------------------------------------------------------------------------- the command
def test_serve_refuses_bad_settings_with_exit_code_2(tmp_path):
    import os
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("ANOMALY_AE_")}
    base = [sys.executable, "-m", "anomaly_ae.service.command"]
    no_model = subprocess.run(base, env=env, capture_output=True, text=True, timeout=120)
    assert no_model.returncode == 2 and "--model" in no_model.stderr
    short_key = subprocess.run(base + ["--model", str(tmp_path)], env={**env, "ANOMALY_AE_API_KEYS": "short"},
                               capture_output=True, text=True, timeout=120)
    assert short_key.returncode == 2 and "at least 16 characters" in short_key.stderr
    assert "short" not in short_key.stderr  # the key itself is never echoed
    (tmp_path / "a-file").write_text("")
    unwritable = subprocess.run(base + ["--model", str(tmp_path)], capture_output=True, text=True, timeout=120,
                                env={**env, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "a-file" / "metrics")})
    assert unwritable.returncode == 2 and "Traceback" not in unwritable.stderr
    assert "PROMETHEUS_MULTIPROC_DIR" in unwritable.stderr and "fsGroup" in unwritable.stderr
