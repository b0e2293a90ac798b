"""A real MLflow tracking server for tests (a pytest plugin: tests/conftest.py lists it in ``pytest_plugins``).

Fixtures:

``mlflow_server`` (session): the tracking URI (``http://127.0.0.1:PORT``) of a real ``mlflow server``
    process with a SQLite backend store in a temporary folder, serving artifacts over HTTP
    (``--serve-artifacts``, stored under a temporary ``artifacts/``), so clients upload and download
    through the server as they would in production. Started once per test session on a free port,
    waited for on ``/health`` (bounded), and killed (whole process group) at the end.

``mlflow_server_info`` (session): the same server as an ``MlflowServer`` (uri, artifacts folder,
    database path, log file), for tests that inspect or tamper with what the server stored.

Use: ``def test_x(mlflow_server, monkeypatch): monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)``.
Outside pytest (benchmarks/reliability.py): ``start_server(folder)`` and ``stop_server(process)``.
Nothing here imports mlflow, so collecting tests stays fast.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

STARTUP_TIMEOUT_S = 180  # a cold start (imports, DB migrations) takes ~25 s on a busy 2-core machine


@dataclass(frozen=True)
class MlflowServer:
    uri: str
    artifacts: Path
    db: Path
    log: Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mlflow_executable() -> str:
    local = Path(sys.executable).with_name("mlflow")
    return str(local) if local.exists() else (shutil.which("mlflow") or "mlflow")


def healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def start_server(root: Path, port: int | None = None,
                 timeout_s: float = STARTUP_TIMEOUT_S) -> tuple[MlflowServer, subprocess.Popen]:
    """Start `mlflow server` with its store, artifacts and log in `root` (on `port`, default a free
    one) in its own process group and wait until /health answers; RuntimeError (with the log's tail)
    if it exits or is not healthy within `timeout_s`. Stop it with `stop_server`. Also used by
    benchmarks/reliability.py."""
    port = port or free_port()
    info = MlflowServer(uri=f"http://127.0.0.1:{port}", artifacts=root / "artifacts", db=root / "mlflow.db",
                        log=root / "server.log")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    # The server runs uvicorn from the virtualenv's bin folder.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    command = [_mlflow_executable(), "server", "--backend-store-uri", f"sqlite:///{info.db}",
               "--default-artifact-root", "mlflow-artifacts:/", "--serve-artifacts",
               "--artifacts-destination", str(info.artifacts), "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1"]
    with open(info.log, "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root,
                                   start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while not healthy(info.uri):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_server(process)
            tail = info.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"mlflow server did not become healthy at {info.uri} "
                               f"(exit code {process.poll()}); log tail:\n{tail}")
        time.sleep(0.5)
    return info, process


@pytest.fixture(scope="session")
def mlflow_server_info(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    try:
        info, process = start_server(tmp_path_factory.mktemp("mlflow-server"))
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield info
    finally:
        stop_server(process)


def stop_server(process: subprocess.Popen) -> None:
    """SIGTERM the server's process group (it runs uvicorn workers), then SIGKILL whatever is left
    (SIGCONT first, in case it was stopped)."""
    # uvicorn stops at once on SIGTERM, but the `mlflow server` wrapper can linger ~20 s: do not wait for it.
    for sig, wait in ((signal.SIGCONT, 0), (signal.SIGTERM, 3), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            pass


@pytest.fixture(scope="session")
def mlflow_server(mlflow_server_info: MlflowServer) -> str:
    """Tracking URI of a real, session-wide `mlflow server` (see the module docstring)."""
    return mlflow_server_info.uri
