"""The scoring service through real HTTP: real uvicorn processes, real saved models, real requests.

What only a real server shows: the event loop answering while a large batch scores, slow clients on
real sockets, keys kept out of the logs, metrics over HTTP, /metrics on its own port, hot reload
under concurrent requests, graceful shutdown, the command's exit codes. The service's logic (auth,
error codes, bounds, reload decisions) is tested in process in test_service_app.py.

Three services start at once (they take a few seconds each to import torch): `api` (auth on,
small limits, no polling), `reload` (polls its model directory every 0.2 s), `open` (no keys,
one scoring request at a time, /metrics on a port of its own). Model directories stand in for
registry aliases here (a new manifest = a moved alias); test_service_registry.py does the same
against a real MLflow server.
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

from service_support import (ADMIN_KEY, SCORE, SCORE_KEY, Service, assert_error, free_port, metric_value, train_model,
                             wait_for)

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
        "open": Service(root / "v1", keys=False, log=logs / "open.log", max_concurrency=1,
                        metrics_port=free_port()),
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
    body = spec["paths"]["/v1/score"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    records = spec["components"]["schemas"]["RecordsScoreRequest"]["properties"]["records"]
    assert len(body["oneOf"]) == 2 and records["maxItems"] == 100  # this service's max_rows
    assert "cpu_util_pct" in records["items"]["required"]  # the served model's columns


def test_probes_and_metrics_need_no_key(api):
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert api.get(path).status_code == 200


def test_keys_never_reach_the_logs(services, api):
    api.get("/v1/model", headers={"Authorization": "Bearer wrong-key-which-must-not-be-logged"})
    text = services["api"].output() + services["reload"].output()
    assert SCORE_KEY not in text and ADMIN_KEY not in text and "wrong-key-which" not in text



def test_a_body_that_never_arrives_times_out(services):
    """A client that declares a body and stalls gets 408 after body_timeout_s."""
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


def test_oversized_headers_are_refused_with_431(services):
    """uvicorn's httptools parser buffers a header of any size (a 64 MiB one was accepted); the service
    answers 431 once the request line and headers pass 64 KiB, before any authentication, and closes
    the connection. A large but reasonable header (32 KiB) still goes through."""
    port = services["api"].port
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 32 * 1024 + b"\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        sent, reply = 0, b""
        with contextlib.suppress(OSError):  # the server closes while we still send
            while sent < 16 * 1024 * 1024:
                sock.sendall(b"a" * 65536)
                sent += 65536
        with contextlib.suppress(OSError):
            reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 431") and b'"headers_too_large"' in reply, reply[:200]
    assert sent < 16 * 1024 * 1024  # cut off long before the client gave up
    assert httpx.get(f"{services['api'].url}/healthz").status_code == 200


def test_a_head_that_arrives_too_slowly_is_cut_off(services):
    """A request line and headers sent a few bytes at a time (slowloris) held a connection for as long as
    the client liked: 3,000 of them held 3,000 file descriptors. They get body_timeout_s (2 s here)."""
    port = services["api"].port
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        with contextlib.suppress(OSError):
            for _ in range(8):  # a header line a second: slower than the head's deadline allows
                time.sleep(1)
                sock.sendall(b"X-Slow: 1\r\n")
        reply = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(4096):
                reply += chunk
    assert reply.startswith(b"HTTP/1.1 408") and b'"head_timeout"' in reply, reply[:200]
    assert time.monotonic() - started < 10
    with socket.create_connection(("127.0.0.1", port), timeout=15) as silent:  # connected, sends nothing
        started = time.monotonic()
        assert silent.recv(4096) == b"" and time.monotonic() - started < 10  # closed, nothing said
    assert httpx.get(f"{services['api'].url}/healthz").status_code == 200


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


@pytest.mark.serial
def test_healthz_answers_while_a_large_batch_scores(services):
    """Scoring runs in a worker thread: while one worker scores a 10,000-row explained batch, its event
    loop answers /healthz within 50 ms, probe after probe."""
    service = services["open"]  # one worker, max_rows 10,000 (the default), metrics on their own port
    metrics_url = f"http://127.0.0.1:{service.metrics_port}/metrics"
    frame = make_telemetry(10_000, anomaly_fraction=0.05, seed=4).drop(columns=list(LABEL_COLUMNS))
    body = orjson_body({"columns": list(frame.columns), "data": frame.to_numpy(dtype=object).tolist(),
                        "explain": True, "top_k": 5})

    def scoring() -> float:
        return metric_value(httpx.get(metrics_url, timeout=10).text, "anomaly_ae_scoring_in_flight")

    def batches() -> list[httpx.Response]:  # four in a row: one alone can finish before the probes start
        with httpx.Client(base_url=service.url, timeout=120) as client:
            return [client.post("/v1/score", content=body, headers={"Content-Type": "application/json"})
                    for _ in range(4)]

    with concurrent.futures.ThreadPoolExecutor(1) as pool, httpx.Client(base_url=service.url, timeout=10) as probe:
        probe.get("/healthz")  # the connection is open before the measurement
        sent = time.perf_counter()
        sending = pool.submit(batches)
        assert wait_for(lambda: scoring() == 1 or sending.done(), timeout=60, step=0.005)
        latencies = []  # of the probes that returned while the batches were still being sent and scored
        while not sending.done():
            started = time.perf_counter()
            assert probe.get("/healthz").status_code == 200
            if not sending.done():
                latencies.append(time.perf_counter() - started)
        responses = sending.result()
        took = time.perf_counter() - sent
    for response in responses:
        assert response.status_code == 200 and response.json()["n_rows"] == 10_000, response.text[:500]
    shown = f"{len(latencies)} probes in {took:.2f}s: {[round(t * 1000, 1) for t in latencies]} ms"
    assert len(latencies) >= 5, f"too few probes while the batch scored to measure anything; {shown}"
    assert max(latencies) < 0.05, shown


def orjson_body(payload: dict) -> bytes:
    import orjson

    return orjson.dumps(payload)


def test_stalled_clients_take_no_scoring_place(services, incoming):
    """Clients that send headers and then stall hold no scoring place: with one scoring place and more
    stalled connections than that, every request whose body arrives is scored."""
    service = services["open"]  # max_concurrency=1
    body = json.dumps({"records": records(incoming.head(2))}).encode()
    stalled = []
    try:
        for _ in range(6):
            sock = socket.create_connection(("127.0.0.1", service.port), timeout=30)
            sock.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000\r\n\r\n{")
            stalled.append(sock)
        metrics_url = f"http://127.0.0.1:{service.metrics_port}/metrics"
        assert wait_for(lambda: metric_value(httpx.get(metrics_url).text, "anomaly_ae_http_requests_in_flight") >= 6,
                        timeout=30)
        with httpx.Client(base_url=service.url, timeout=30) as client:
            statuses = [client.post("/v1/score", content=body, headers={"Content-Type": "application/json"}).status_code
                        for _ in range(10)]
        assert statuses == [200] * 10
    finally:
        for sock in stalled:
            sock.close()


def test_metrics_can_have_a_port_of_their_own(services):
    service = services["open"]
    assert_error(httpx.get(f"{service.url}/metrics"), 404, "not_found")
    text = httpx.get(f"http://127.0.0.1:{service.metrics_port}/metrics").text
    assert metric_value(text, "anomaly_ae_model_ready") == 1
    assert metric_value(text, "anomaly_ae_model_info", name="v1", model_type="ae") == 1


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
            assert wait_for(lambda: metric_value(httpx.get(f"{url}/metrics").text,
                                                 "anomaly_ae_http_requests_in_flight") >= 2, timeout=30)  # + this scrape
            yield finish
        finally:
            release.set()


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
    try:
        assert wait_for(lambda: all(len(out) >= 5 for out in seen), timeout=60)
        Detector.load(root / "v2").save(root / "served")  # the atomic replace a new alias target amounts to
        assert wait_for(lambda: current_version(url) != old)
        new = current_version(url)
        assert wait_for(lambda: all(sum(v == new for _, v in out) >= 5 for out in seen), timeout=60)
    finally:
        stop.set()
    for t in threads:
        t.join()
    flat = [s for out in seen for s in out]
    assert len(flat) > 20 and all(status == 200 for status, _ in flat)
    for out in seen:  # each client sees the old version, then only the new one
        versions = [v for _, v in out]
        assert set(versions) <= {old, new}
        assert versions == sorted(versions, key=lambda v: v == new)
    assert any(v == new for _, v in flat) and any(v == old for _, v in flat)
    metrics = httpx.get(f"{url}/metrics").text
    assert metric_value(metrics, "anomaly_ae_model_reload_attempts_total", trigger="poll") >= 1
    assert metric_value(metrics, "anomaly_ae_model_info", version=new) == 1
    assert metric_value(metrics, "anomaly_ae_model_info", version=old) == 0


# ---------------------------------------------------------------------------- shutdown
def test_graceful_shutdown_finishes_in_flight_requests(models, incoming, tmp_path):
    root, _, _ = models
    service = Service(root / "v1", keys=False, log=tmp_path / "service.log").wait_ready()  # this test stops it
    try:
        body = json.dumps({"records": records(incoming.head(2))}).encode()
        with request_in_flight(service.url, body) as finish:
            service.proc.send_signal(signal.SIGTERM)
            assert not wait_for(lambda: service.proc.poll() is not None, timeout=0.5)  # waiting for the request
            response = finish()
        assert response.status_code == 200 and len(response.json()["results"]) == 2
        # uvicorn re-raises the SIGTERM it handled once shutdown is complete
        assert service.proc.wait(30) in (0, -signal.SIGTERM)
    finally:
        service.stop()


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
    same_port = subprocess.run(base + ["--model", str(tmp_path), "--port", "9000", "--metrics-port", "9000"],
                               env=env, capture_output=True, text=True, timeout=120)
    assert same_port.returncode == 2 and "metrics_port 9000 is the port the API listens on" in same_port.stderr
    endless = subprocess.run(base + ["--model", str(tmp_path)], env={**env, "ANOMALY_AE_LOAD_TIMEOUT_S": "inf"},
                             capture_output=True, text=True, timeout=120)
    assert endless.returncode == 2 and "finite number" in endless.stderr
    for keys, says in ((", ,", "names no key"), ('["aaaaaaaaaaaaaaaaaaaa"]', "not JSON")):  # auth off / a key of "[
        refused = subprocess.run(base + ["--model", str(tmp_path)], env={**env, "ANOMALY_AE_API_KEYS": keys},
                                 capture_output=True, text=True, timeout=120)
        assert refused.returncode == 2 and says in refused.stderr and "aaaaaaaa" not in refused.stderr
    (tmp_path / "a-file").write_text("")
    unwritable = subprocess.run(base + ["--model", str(tmp_path)], capture_output=True, text=True, timeout=120,
                                env={**env, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "a-file" / "metrics")})
    assert unwritable.returncode == 2 and "Traceback" not in unwritable.stderr
    assert "PROMETHEUS_MULTIPROC_DIR" in unwritable.stderr and "fsGroup" in unwritable.stderr
