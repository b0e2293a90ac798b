"""The service on a real MLflow registry: alias moves under load, refused versions, a hung and a killed
registry. The module runs its own `mlflow server` (not the session-wide one) because it kills it; each
test starts it again if an earlier one (in any order) left it dead."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from mlflow_server import healthy
from service_support import ADMIN, SCORE, Service, free_port, metric_value, train_model, wait_for

from anomaly_ae.data.synthetic import LABEL_COLUMNS, make_telemetry

pytestmark = pytest.mark.slow
NAME = "svc-detector"


class Registry:
    """This module's own `mlflow server` (SQLite store, served artifacts), which a test may kill:
    `ensure_running` starts it again on the same port, store and artifacts."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def ensure_running(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGCONT)  # in case a test left it stopped
            return
        mlflow = Path(sys.executable).with_name("mlflow")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        with open(self.root / "server.log", "ab") as log:
            self.proc = subprocess.Popen(
                [str(mlflow if mlflow.exists() else "mlflow"), "server", "--backend-store-uri",
                 f"sqlite:///{self.root / 'mlflow.db'}", "--default-artifact-root", "mlflow-artifacts:/",
                 "--serve-artifacts", "--artifacts-destination", str(self.root / "artifacts"),
                 "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.root, start_new_session=True)
        assert wait_for(lambda: healthy(self.uri) or self.proc.poll() is not None, timeout=180, step=0.5)
        assert healthy(self.uri), (self.root / "server.log").read_text()[-2000:]

    def stop(self) -> None:
        if self.proc is None:
            return
        for sig in (signal.SIGCONT, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
        self.proc.wait(30)


@pytest.fixture(scope="module")
def registry_server(tmp_path_factory):
    pytest.importorskip("mlflow")
    pytest.importorskip("anomaly_ae.registry")
    server = Registry(tmp_path_factory.mktemp("registry"))
    try:
        server.ensure_running()
        yield server
    finally:
        server.stop()


@pytest.fixture
def registry(registry_server):
    """(uri, root, process) of a running registry, whatever an earlier test did to it."""
    registry_server.ensure_running()
    return registry_server.uri, registry_server.root, registry_server.proc


def register(uri: str, model_dir: Path, detector) -> str:
    from anomaly_ae.registry import log_training_run

    X = make_telemetry(200, seed=1).drop(columns=list(LABEL_COLUMNS))
    run = log_training_run(detector, X, register=NAME, tracking_uri=uri, model_dir=model_dir, experiment="svc")
    return str(run.registered.version)


def promote(uri: str, version: str) -> None:
    from anomaly_ae.registry import promote as move

    move(NAME, version, "champion", tracking_uri=uri)


@pytest.fixture(scope="module")
def served(registry_server, tmp_path_factory):
    registry_server.ensure_running()
    uri = registry_server.uri
    root = tmp_path_factory.mktemp("svc-models")
    first = register(uri, root / "m1", train_model(root / "m1", seed=1))
    promote(uri, first)
    service = Service(f"models:/{NAME}@champion", env={"MLFLOW_TRACKING_URI": uri}, log=root / "service.log",
                      poll_interval=0.5)
    try:
        service.wait_ready()
        yield service, root, first
    finally:
        service.stop()


def rows(n=5):
    return json.loads(make_telemetry(n, seed=11).drop(columns=list(LABEL_COLUMNS)).to_json(orient="records"))


def version(service) -> str:
    return httpx.get(f"{service.url}/readyz", timeout=10).json()["model"]["version"]


def failures(service, reason):
    return metric_value(httpx.get(f"{service.url}/metrics", timeout=10).text, "anomaly_ae_model_reload_failures_total",
                        reason=reason)


def champion(uri: str) -> str:
    from anomaly_ae.registry import resolve_model

    return str(resolve_model(f"models:/{NAME}@champion", tracking_uri=uri).version)


def test_serves_the_champion(served, registry):
    service, _, _ = served
    current = champion(registry[0])
    assert wait_for(lambda: version(service) == current, timeout=60)
    info = httpx.get(f"{service.url}/v1/model", headers=SCORE).json()
    assert (info["name"], info["version"], info["alias"]) == (NAME, current, "champion")
    response = httpx.post(f"{service.url}/v1/score", json={"records": rows()}, headers=SCORE).json()
    assert response["model"] == {"name": NAME, "version": current, "alias": "champion"}


def test_alias_move_under_concurrent_requests_fails_none(served, registry):
    service, root, _ = served
    uri = registry[0]
    assert wait_for(lambda: version(service) == champion(uri), timeout=60)
    first = version(service)
    model_dir = root / f"m2-{first}"
    second = register(uri, model_dir, train_model(model_dir, seed=3, random_state=1))
    body = {"records": rows(10)}
    stop = threading.Event()
    seen: list[list[tuple[int, str]]] = [[] for _ in range(4)]

    def client(out):
        with httpx.Client(base_url=service.url, timeout=30) as c:
            while not stop.is_set():
                r = c.post("/v1/score", json=body, headers=SCORE)
                out.append((r.status_code, r.json().get("model", {}).get("version")))

    threads = [threading.Thread(target=client, args=(out,)) for out in seen]
    for t in threads:
        t.start()
    try:
        assert wait_for(lambda: all(len(out) >= 5 for out in seen), timeout=60)
        promote(uri, second)
        assert wait_for(lambda: version(service) == second)
        assert wait_for(lambda: all(sum(v == second for _, v in out) >= 5 for out in seen), timeout=60)
    finally:
        stop.set()
        for t in threads:
            t.join()
    flat = [s for out in seen for s in out]
    assert flat and all(status == 200 for status, _ in flat)
    for out in seen:
        versions = [v for _, v in out]
        assert set(versions) <= {first, second} and versions == sorted(versions, key=lambda v: v == second)
    assert {v for _, v in flat} == {first, second}


def test_bad_versions_are_refused(served, registry):
    import torch

    from anomaly_ae import Detector

    service, root, _ = served
    uri, server_root, _ = registry
    assert wait_for(lambda: version(service) == champion(uri), timeout=60)
    good = version(service)
    smoke_failures, load_errors = failures(service, "smoke_test_failed"), failures(service, "load_error")
    # NaN weights: loads (hashes match) but fails the smoke batch
    broken = Detector.load(root / "m1")
    with torch.no_grad():
        for p in broken.members_[0].parameters():
            p.fill_(float("nan"))
    broken.save(root / "nan")
    # registered with a good detector's metrics (scoring the broken one fails), the broken one's files: what
    # log_training_run itself refuses (not the detector's save), as another tool could register it
    from anomaly_ae.registry import tracking

    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(tracking, "_check_saved_from", lambda detector, model_dir: None)
        nan_version = register(uri, root / "nan", Detector.load(root / "m1"))
    promote(uri, nan_version)
    assert wait_for(lambda: failures(service, "smoke_test_failed") > smoke_failures)
    assert version(service) == good
    # tampered after registration: the stored weights no longer match the manifest
    tampered_version = register(uri, root / "m3", train_model(root / "m3", seed=5, epochs=5))
    from anomaly_ae.registry import resolve_model

    run_id = resolve_model(f"models:/{NAME}/{tampered_version}", tracking_uri=uri).run_id
    weights = [p for p in (server_root / "artifacts").rglob("weights.safetensors") if run_id in str(p)]
    assert weights
    for path in weights:
        path.write_bytes(path.read_bytes()[:-4] + b"\0\0\0\0")
    # `anomaly-ae promote` verifies a version first and refuses this one; an alias moved some other way
    # (the MLflow UI, its client) reaches the service, which refuses it and says so
    from anomaly_ae.registry import PromotionRefused

    with pytest.raises(PromotionRefused, match="cannot be loaded"):
        promote(uri, tampered_version)
    assert champion(uri) == nan_version  # unchanged
    import mlflow

    mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri).set_registered_model_alias(NAME, "champion",
                                                                                       tampered_version)
    assert wait_for(lambda: failures(service, "load_error") > load_errors)
    text = httpx.get(f"{service.url}/metrics").text
    assert metric_value(text, "anomaly_ae_model_version_mismatch") == 1
    assert metric_value(text, "anomaly_ae_model_desired_info", name=NAME, version=tampered_version) == 1
    assert version(service) == good
    r = httpx.post(f"{service.url}/v1/score", json={"records": rows()}, headers=SCORE)
    assert r.status_code == 200 and r.json()["model"]["version"] == good
    # back to a good version
    promote(uri, good)
    assert wait_for(lambda: metric_value(httpx.get(f"{service.url}/metrics").text,
                                         "anomaly_ae_model_version_mismatch") == 0, timeout=60)


def _latencies(service, n=20, seconds=0.0):
    """Latencies of `n` scoring requests, and of more until `seconds` have passed."""
    out = []
    until = time.monotonic() + seconds
    with httpx.Client(base_url=service.url, timeout=30) as c:
        while len(out) < n or time.monotonic() < until:
            t0 = time.monotonic()
            r = c.post("/v1/score", json={"records": rows(3)}, headers=SCORE)
            assert r.status_code == 200
            out.append(time.monotonic() - t0)
    return out


def test_hung_then_killed_registry_never_fails_or_slows_scoring(served, registry):
    service, _, _ = served
    _, _, proc = registry
    good = version(service)
    os.killpg(proc.pid, signal.SIGSTOP)  # hung: accepts connections, never answers
    try:
        # scoring for 1.5 s, three poll intervals: polls are stuck waiting on the registry meanwhile
        assert max(_latencies(service, seconds=1.5)) < 2.0
        assert httpx.get(f"{service.url}/readyz").status_code == 200
        t0 = time.monotonic()
        reload = httpx.post(f"{service.url}/v1/admin/reload", headers=ADMIN, timeout=60)
        assert reload.status_code == 503 and time.monotonic() - t0 < 15
        # a reload waits for a poll still stuck on the registry (ADMIN_WAIT_S), then answers with it
        assert reload.json()["error"]["code"] in ("registry_timeout", "registry_unavailable", "reload_in_progress")
    finally:
        os.killpg(proc.pid, signal.SIGCONT)
    unavailable = failures(service, "registry_unavailable")
    os.killpg(proc.pid, signal.SIGKILL)  # killed: connections refused (the next test starts it again)
    proc.wait(30)
    assert wait_for(lambda: failures(service, "registry_unavailable") > unavailable, timeout=60)
    assert max(_latencies(service)) < 2.0
    assert httpx.get(f"{service.url}/readyz").status_code == 200 and version(service) == good
    reload = httpx.post(f"{service.url}/v1/admin/reload", headers=ADMIN, timeout=60)
    assert reload.status_code == 503 and reload.headers["retry-after"]
