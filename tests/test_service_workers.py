"""Two uvicorn workers behind one port: metrics merged exactly (prometheus multiprocess mode), and a
property-based fuzz of the OpenAPI schema (schemathesis, positive and negative cases) finding no 5xx."""

from __future__ import annotations

import concurrent.futures
import json
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from service_support import ADMIN, SCORE, Service, free_port, fuzz_openapi, metric_value, train_model, wait_for

from anomaly_ae.data.synthetic import LABEL_COLUMNS, make_telemetry

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    root = tmp_path_factory.mktemp("workers")
    train_model(root / "model", seed=1)
    prom = root / "prom"
    prom.mkdir()
    service = Service(root / "model", workers=2, env={"PROMETHEUS_MULTIPROC_DIR": str(prom)}, log=root / "log")
    try:
        service.wait_ready()
        # /readyz answers from whichever worker accepts: wait until every live worker has its model
        deadline_ok = wait_for(lambda: metric_value(httpx.get(f"{service.url}/metrics").text,
                                                 "anomaly_ae_model_ready") == 1
                            and len(list(prom.glob("gauge_livemin_*.db"))) == 2)
        assert deadline_ok, service.output()[-2000:]
        yield service, prom
    finally:
        service.stop()


def test_metrics_are_counted_exactly_across_two_workers(two_workers):
    service, prom = two_workers
    frame = make_telemetry(5, seed=9).drop(columns=list(LABEL_COLUMNS))
    rows = json.loads(frame.to_json(orient="records"))
    before = httpx.get(f"{service.url}/metrics").text
    sizes = [1 + i % 5 for i in range(60)]

    def one(n: int) -> int:  # a new connection each time, so the kernel spreads them over both workers
        with httpx.Client(timeout=30) as client:
            return client.post(f"{service.url}/v1/score", json={"records": rows[:n]}, headers=SCORE).status_code

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(one, sizes))
    bad = [httpx.post(f"{service.url}/v1/score", json={"records": [{}]}, headers=SCORE).status_code
           for _ in range(3)]
    assert statuses == [200] * 60 and bad == [422] * 3
    after = httpx.get(f"{service.url}/metrics").text

    def delta(name, **labels):
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    assert delta("anomaly_ae_rows_scored_total") == sum(sizes)
    assert delta("anomaly_ae_http_requests_total", route="/v1/score", method="POST", status="2xx") == 60
    assert delta("anomaly_ae_http_requests_total", route="/v1/score", method="POST", status="4xx") == 3
    assert delta("anomaly_ae_validation_errors_total", reason="missing_column") == 3
    assert delta("anomaly_ae_score_count") == sum(sizes)
    assert metric_value(after, "anomaly_ae_model_info", name="model") == 1
    assert metric_value(after, "anomaly_ae_http_requests_in_flight") == 1  # this scrape, in one worker
    # both workers scored: each pid's own counter file holds part of the total
    per_worker = _rows_per_worker(prom)
    assert len([v for v in per_worker.values() if v > 0]) == 2, per_worker
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian: apt-get install prometheus)")
    result = subprocess.run([promtool, "check", "metrics"], input=after.encode(), capture_output=True, timeout=60)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def _rows_per_worker(prom: Path) -> dict[str, float]:
    """anomaly_ae_rows_scored_total as each worker's own file holds it."""
    from prometheus_client.mmap_dict import MmapedDict

    totals = {}
    for path in prom.glob("counter_*.db"):
        totals[path.stem] = sum(entry[1] for entry in MmapedDict.read_all_values_from_file(str(path))
                                if json.loads(entry[0])[1] == "anomaly_ae_rows_scored_total")
    return totals


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/PID/maps (Linux)")
def test_workers_leave_pyarrow_and_scikit_learn_out(two_workers):
    """pandas imports pyarrow when installed, and scikit-learn imports scipy's linear algebra and sparse
    matrices: each worker held 35-60 MiB of pyarrow's libraries and ~70 MiB of scikit-learn's and scipy's
    that scoring never uses (the reliability suite's RSS per worker); the workers load a model and score
    without loading them. scipy.special (erf, for small batches: models/stacked.py) is ~12 MiB."""
    service, prom = two_workers
    pids = _worker_pids(prom)
    assert len(pids) == 2
    for pid in pids:
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "torch" in maps
        # (numpy's own OpenBLAS is called libscipy_openblas: match the packages' folders)
        assert [lib for lib in ("pyarrow", "sklearn", "scipy/linalg", "scipy/sparse")
                if f"site-packages/{lib}/" in maps] == []


def test_a_serving_process_imports_pandas_without_pyarrow_unless_asked():
    import os
    import sys

    code = ("import sys; from anomaly_ae.service.server import worker_app; worker_app(); "
            "print('pandas' in sys.modules, sys.modules.get('pyarrow') is not None)")
    for load, expected in (("false", "True False"), ("true", "True True")):
        env = {**os.environ, "ANOMALY_AE_MODEL_URI": "/nowhere", "ANOMALY_AE_LOAD_PYARROW": load}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
        assert out.stdout.strip() == expected, out.stderr[-2000:]


def test_responses_are_not_held_back_by_nagle(two_workers):
    """uvicorn's multi-worker sockets lose TCP_NODELAY on the asyncio loop: each keep-alive response
    then waits ~40 ms for a delayed ACK. The service sets it on every connection."""
    service, _ = two_workers
    body = {"records": json.loads(make_telemetry(1, seed=2).drop(columns=list(LABEL_COLUMNS)).to_json(
        orient="records"))}
    with httpx.Client(base_url=service.url, timeout=30) as client:
        latencies = []
        for _ in range(25):
            t0 = time.perf_counter()
            assert client.post("/v1/score", json=body, headers=SCORE).status_code == 200
            latencies.append(time.perf_counter() - t0)
    assert sorted(latencies)[len(latencies) // 2] < 0.03, latencies


def test_an_admin_reload_reaches_every_worker(two_workers):
    service, _ = two_workers

    def attempts():
        return metric_value(httpx.get(f"{service.url}/metrics").text, "anomaly_ae_model_reload_attempts_total",
                            trigger="admin")

    before = attempts()
    response = httpx.post(f"{service.url}/v1/admin/reload?force=true", headers=ADMIN, timeout=60)
    assert response.status_code == 200 and response.json()["status"] == "loaded"
    assert wait_for(lambda: attempts() - before == 2, timeout=30)  # the worker asked, then the other one
    assert not wait_for(lambda: attempts() - before > 2, timeout=1.5)  # and no more
    text = httpx.get(f"{service.url}/metrics").text
    assert metric_value(text, "anomaly_ae_model_ready") == 1
    assert metric_value(text, "anomaly_ae_model_info", name="model") == 1


# ---------------------------------------------------------------------------- fuzzing the OpenAPI schema
def test_openapi_fuzz_passes_every_check(two_workers):
    """schemathesis generates valid and invalid requests (bodies, query strings, headers) for every
    operation in /openapi.json and runs all its checks on every response (see `fuzz_openapi`)."""
    service, _ = two_workers
    calls, errors = fuzz_openapi(service.url, max_examples=25)
    assert not errors, "\n".join(errors)
    assert calls > 100


# ---------------------------------------------------------------------------- a worker killed outright
def _model_info(text: str) -> dict[str, float]:
    """version -> value of every anomaly_ae_model_info sample."""
    found = {}
    for line in text.splitlines():
        if line.startswith("anomaly_ae_model_info{"):
            head, _, value = line.rpartition(" ")
            labels = dict(part.split("=", 1) for part in head.partition("{")[2].rstrip("}").split(","))
            found[labels["version"].strip('"')] = float(value)
    return found


def _worker_pids(prom: Path) -> set[int]:
    return {int(path.stem.rsplit("_", 1)[1]) for path in prom.glob("gauge_livemin_*.db")}


@pytest.mark.parametrize("own_port", [False, True], ids=["public-port", "metrics-port"])
def test_a_killed_worker_leaves_no_gauges_behind(tmp_path, own_port):
    """SIGKILL gives a worker no chance to remove its live gauges: the service must notice it died,
    or model_info keeps the old version at 1 next to the new one and in-flight stays too high. With
    --metrics-port the supervisor serves the merged metrics (and the scrape is not a request)."""
    import os
    import signal
    import socket

    train_model(tmp_path / "v1", seed=1)
    train_model(tmp_path / "v2", seed=2, random_state=1)
    model = tmp_path / "model"
    shutil.copytree(tmp_path / "v1", model)
    prom = tmp_path / "prom"
    prom.mkdir()
    flags = {"metrics_port": free_port()} if own_port else {}
    service = Service(model, workers=2, env={"PROMETHEUS_MULTIPROC_DIR": str(prom)}, log=tmp_path / "log", **flags)
    metrics_url = f"http://127.0.0.1:{flags['metrics_port']}/metrics" if own_port else f"{service.url}/metrics"
    scrape = 0 if own_port else 1  # a scrape through the app is a request in flight itself
    held = []

    def metrics_text() -> str:
        return httpx.get(metrics_url, timeout=10).text

    try:
        service.wait_ready()
        assert wait_for(lambda: len(_worker_pids(prom)) == 2 and metric_value(metrics_text(),
                                                                               "anomaly_ae_model_ready") == 1)
        old_pids = _worker_pids(prom)
        (v1,) = [v for v, value in _model_info(metrics_text()).items() if value == 1]
        # requests held in flight (headers sent, body never): whichever worker took them is killed below
        for _ in range(4):
            sock = socket.create_connection(("127.0.0.1", service.port))
            sock.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\nAuthorization: Bearer " + SCORE["Authorization"].split()[1].encode()
                         + b"\r\n\r\n{")
            held.append(sock)
        assert wait_for(lambda: metric_value(metrics_text(), "anomaly_ae_http_requests_in_flight") == 4 + scrape,
                        timeout=30)
        # the model changes; the workers do not poll (interval 0), so only a restarted worker loads it
        shutil.rmtree(model)
        shutil.copytree(tmp_path / "v2", model)
        for pid in old_pids:
            os.kill(pid, signal.SIGKILL)

        def replaced() -> bool:
            pids = _worker_pids(prom)
            try:  # through the public port, a scrape can hang until a replacement worker accepts it
                return len(pids - old_pids) == 2 and metric_value(metrics_text(), "anomaly_ae_model_ready") == 1
            except httpx.TransportError:
                return False

        assert wait_for(replaced, timeout=180), service.output()[-3000:]
        text = metrics_text()
        info = _model_info(text)
        served = [v for v, value in info.items() if value > 0]
        assert len(served) == 1 and served[0] != v1 and sum(info.values()) == 1, info
        assert metric_value(text, "anomaly_ae_http_requests_in_flight") == scrape
        assert "ended without shutting down" in service.output()
    finally:
        for sock in held:
            sock.close()
        service.stop()


def test_a_worker_killed_while_being_health_checked_is_replaced_at_once(tmp_path):
    """uvicorn's supervisor pings each worker over a pipe and waits up to 60 s for the answer; it kept
    its copy of the worker's end, so a worker that died during a ping was replaced only after 60 s
    (the reliability suite's worker kill under load). A stopped worker holds the supervisor in a ping;
    killed then, it is replaced within seconds, and the replacement serves before it accepts."""
    import os
    import signal

    train_model(tmp_path / "model", seed=1)
    prom = tmp_path / "prom"
    prom.mkdir()
    service = Service(tmp_path / "model", workers=2, env={"PROMETHEUS_MULTIPROC_DIR": str(prom)},
                      log=tmp_path / "log")
    try:
        service.wait_ready()
        assert wait_for(lambda: len(_worker_pids(prom)) == 2, timeout=120)
        victim = min(_worker_pids(prom))
        os.kill(victim, signal.SIGSTOP)  # the supervisor's next ping of it waits for an answer
        time.sleep(2)  # not a wait for a condition: the worker must stay stopped across a ping (every 0.5 s)
        os.kill(victim, signal.SIGKILL)
        started = time.monotonic()
        assert wait_for(lambda: len(_worker_pids(prom) - {victim}) == 2, timeout=120), service.output()[-2000:]
        assert time.monotonic() - started < 30, "the supervisor waited out its health-check timeout"
        # the replacement starts (accepts) only after it has loaded its model
        waiting = "another worker is serving: loading the model before accepting connections"
        assert wait_for(lambda: waiting in service.output() and "Application startup complete" in
                        service.output().rpartition(waiting)[2], timeout=120), service.output()[-3000:]
        replacement = service.output().rpartition(waiting)[2]
        assert replacement.index("serving model") < replacement.index("Application startup complete")
    finally:
        service.stop()


def test_after_sigterm_new_connections_are_refused_while_a_request_in_flight_finishes(tmp_path):
    """On SIGTERM the workers stop accepting and finish their requests, but uvicorn's supervisor kept
    the listening socket open until they had exited: new connections then waited unanswered in the
    backlog for the whole graceful shutdown and were reset at the end (the reliability suite's SIGTERM
    check). Now they are refused at once, while the request in flight still gets its answer."""
    import signal
    import socket

    train_model(tmp_path / "model", seed=1)
    service = Service(tmp_path / "model", workers=2, log=tmp_path / "log")
    try:
        service.wait_ready()
        assert wait_for(lambda: service.output().count("serving model") >= 2, timeout=120)
        rows = json.loads(make_telemetry(3, seed=2).drop(columns=list(LABEL_COLUMNS)).to_json(orient="records"))
        body = json.dumps({"records": rows}).encode()
        held = socket.create_connection(("127.0.0.1", service.port), timeout=30)
        held.sendall(f"POST /v1/score HTTP/1.1\r\nHost: x\r\nAuthorization: {SCORE['Authorization']}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body[:-1])
        assert wait_for(lambda: metric_value(httpx.get(f"{service.url}/metrics").text,
                                             "anomaly_ae_http_requests_in_flight") == 2, timeout=30)
        service.proc.send_signal(signal.SIGTERM)

        def refused() -> bool:
            try:  # a connection left in the backlog gets no answer: not refused yet
                httpx.get(f"{service.url}/healthz", timeout=1)
            except httpx.ConnectError:
                return True
            except httpx.HTTPError:
                pass
            return False

        # the supervisor acts on signals every 0.5 s; the held request keeps the workers alive meanwhile
        assert wait_for(refused, timeout=10, step=0.1), "new connections were not refused during the shutdown"
        held.sendall(body[-1:])
        reply = held.recv(65536)
        assert reply.startswith(b"HTTP/1.1 200"), reply[:300]
        assert service.proc.wait(30) in (0, -signal.SIGTERM)
    finally:
        service.stop()
