"""The shared set-up of the reliability suite (benchmarks/reliability.py): the plan (how long and how
big each check is), result records, and the lab: two trained models, a real `mlflow server` holding
good and broken versions, and the service under test (`anomaly-ae serve --workers 2` of
models:/NAME@champion), each created on first use and stopped by `Lab.close()`.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO / "benchmarks", REPO / "tests", REPO):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
# the CLI and service processes the checks start import this checkout's package
os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])

import httpx  # noqa: E402
import orjson  # noqa: E402

import reliability_support as rs  # noqa: E402
from mlflow_server import start_server, stop_server  # noqa: E402
from service_support import SCORE, Service, metric_value, train_model, wait_for  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
NAME = "reliability-detector"
SCORE_JSON = {**SCORE, "Content-Type": "application/json"}


@dataclass(frozen=True)
class Plan:
    """How long and how big each check is; --quick is a smoke run of the same checks."""

    soak_s: float = 150.0
    fuzz_examples: int = 40
    body_timeout_s: float = 30.0
    liveness_requests: int = 64
    stalled_connections: int = 64
    registry_pause_s: float = 20.0
    after_kill_s: float = 10.0
    cpu_s: float = 20.0
    score_rows: int = 120_000
    train_rows: int = 3000
    train_epochs: int = 12
    switch_within_s: float = 30.0
    refuse_within_s: float = 30.0
    recover_within_s: float = 120.0
    poll_interval_s: float = 2.0


QUICK = Plan(soak_s=30.0, fuzz_examples=10, body_timeout_s=10.0, registry_pause_s=12.0, after_kill_s=4.0, cpu_s=6.0,
             score_rows=40_000, train_rows=1500, train_epochs=6)


@dataclass
class Result:
    key: str
    title: str
    criterion: str
    passed: bool | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None


@dataclass
class Measurement:
    key: str
    title: str
    goal: str
    met: bool | None = None
    value: str = ""
    figures: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None


def expect(condition: bool, message: str, failures: list[str]) -> None:
    if not condition:
        failures.append(message)


# ============================================================================ the lab: models, registry, service
class Lab:
    """Everything the checks share, created on first use and stopped by `close()`."""

    def __init__(self, plan: Plan, work: Path) -> None:
        self.plan, self.work = plan, work
        self.stack = contextlib.ExitStack()
        self._models: dict[str, Path] | None = None
        self._registry: tuple[Any, subprocess.Popen] | None = None
        self.versions: dict[str, str] = {}
        self.broken: list[tuple[str, str, str]] = []  # (kind, version, expected refusal reason)
        self._service: Service | None = None
        self.prom = work / "prom"
        self.rss_at_start: dict[str, float] = {}
        self.cpu_results: dict[str, dict] = {}

    def close(self) -> None:
        rs.stop_children()  # load generators, probes, CLI runs
        self.stack.close()  # services, the registry

    # -------------------------------------------------------------- data
    @staticmethod
    def frame(n: int, seed: int, anomaly_fraction: float = 0.0):
        from anomaly_ae.data.synthetic import LABEL_COLUMNS, make_telemetry

        return make_telemetry(n, anomaly_fraction=anomaly_fraction, seed=seed).drop(columns=list(LABEL_COLUMNS))

    def records_body(self, n: int, seed: int = 11, **extra: Any) -> bytes:
        return orjson.dumps({"records": self.frame(n, seed).to_dict("records"), **extra})

    def columns_body(self, n: int, seed: int = 4, **extra: Any) -> bytes:
        frame = self.frame(n, seed, anomaly_fraction=0.05)
        return orjson.dumps({"columns": list(frame.columns), "data": frame.to_numpy(dtype=object).tolist(), **extra})

    # -------------------------------------------------------------- models
    def models(self) -> dict[str, Path]:
        if self._models is None:
            import torch

            from anomaly_ae import Detector

            root = self.work / "models"
            log(f"training two telemetry autoencoders in {root}")
            train_model(root / "v1", seed=1, epochs=15)
            train_model(root / "v2", seed=3, epochs=15, random_state=1)
            broken = Detector.load(root / "v1")  # loads (hashes match) but scores NaN: the smoke test refuses it
            with torch.no_grad():
                for p in broken.members_[0].parameters():
                    p.fill_(float("nan"))
            broken.save(root / "nan")
            self._models = {"v1": root / "v1", "v2": root / "v2", "nan": root / "nan"}
        return self._models

    # -------------------------------------------------------------- registry
    def registry(self) -> tuple[Any, subprocess.Popen]:
        if self._registry is None:
            models = self.models()
            root = self.work / "mlflow"
            root.mkdir()
            log("starting mlflow server")
            info, process = start_server(root)
            self.stack.callback(stop_server, process)
            self._registry = (info, process)
            from anomaly_ae import Detector

            log("registering versions (two good ones, five broken ones)")
            self.versions["v1"] = self.register(models["v1"], Detector.load(models["v1"]))
            self.versions["v2"] = self.register(models["v2"], Detector.load(models["v2"]))
            self.promote(self.versions["v1"])
            nan = self.register(models["nan"], Detector.load(models["v1"]), foreign=True)
            self.broken.append(("weights are NaN (loads, fails the smoke batch)", nan, "smoke_test_failed"))
            for kind, damage in (("weights file altered after registration (same size)", _flip_bytes),
                                 ("weights file truncated", _truncate),
                                 ("a model file deleted from the artifact store", _delete),
                                 ("manifest.json edited (not the registered SHA-256)", _edit_manifest)):
                version = self.register(models["v1"], Detector.load(models["v1"]))
                run_id = self.run_id(version)
                damaged = damage(info.artifacts, run_id)
                assert damaged, f"no stored files of run {run_id} under {info.artifacts}"
                self.broken.append((kind, version, "load_error"))
        return self._registry

    @property
    def tracking_uri(self) -> str:
        return self.registry()[0].uri

    def register(self, model_dir: Path, detector: Any, *, foreign: bool = False) -> str:
        """A new version of model_dir's files with `detector`'s tags; `foreign`: files that are not that
        detector's save (the NaN weights), which log_training_run refuses and another tool could register."""
        from unittest import mock

        from anomaly_ae.registry import log_training_run, tracking

        with mock.patch.object(tracking, "_check_saved_from", lambda detector, model_dir: None) if foreign \
                else contextlib.nullcontext():
            run = log_training_run(detector, self.frame(300, seed=1), register=NAME, tracking_uri=self.tracking_uri,
                                   model_dir=model_dir, experiment="reliability")
        return str(run.registered.version)

    def promote(self, version: str) -> None:
        from anomaly_ae.registry import promote

        promote(NAME, version, "champion", tracking_uri=self.tracking_uri)

    def set_alias(self, version: str) -> None:
        """Move the alias without anomaly-ae's checks (as the MLflow UI or client would)."""
        import mlflow

        mlflow.MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri) \
            .set_registered_model_alias(NAME, "champion", version)

    def run_id(self, version: str) -> str:
        from anomaly_ae.registry import resolve_model

        return str(resolve_model(f"models:/{NAME}/{version}", tracking_uri=self.tracking_uri).run_id)

    # -------------------------------------------------------------- the service under test
    def service(self) -> Service:
        """`anomaly-ae serve --workers 2` of models:/NAME@champion, both workers serving."""
        if self._service is not None and self._service.proc.poll() is None:
            return self._service
        self.registry()
        self.prom.mkdir(exist_ok=True)
        log("starting anomaly-ae serve --workers 2")
        service = Service(f"models:/{NAME}@champion", workers=2, log=self.work / "service.log",
                          poll_interval=self.plan.poll_interval_s,
                          env={"MLFLOW_TRACKING_URI": self.tracking_uri, "PROMETHEUS_MULTIPROC_DIR": str(self.prom),
                               "ANOMALY_AE_BODY_TIMEOUT_S": str(self.plan.body_timeout_s)})
        self.stack.callback(stop_service, service)
        self._service = service
        service.wait_ready(timeout=300)
        if not wait_for(lambda: all_workers_serving(service, self.prom), timeout=300):
            raise RuntimeError(f"both workers did not load the model: {service.output()[-2000:]}")
        self.rss_at_start = worker_rss(service)
        return service


def stop_service(service: Service) -> None:
    with contextlib.suppress(Exception):
        service.stop(timeout=40)
    rs.kill_group(service.proc)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _stored(artifacts: Path, run_id: str, name: str) -> list[Path]:
    return [p for p in artifacts.rglob(name) if run_id in str(p)]


def _flip_bytes(artifacts: Path, run_id: str) -> list[Path]:
    files = _stored(artifacts, run_id, "weights.safetensors")
    for path in files:
        raw = bytearray(path.read_bytes())
        raw[-16:] = bytes(b ^ 0xFF for b in raw[-16:])
        path.write_bytes(bytes(raw))
    return files


def _truncate(artifacts: Path, run_id: str) -> list[Path]:
    files = _stored(artifacts, run_id, "weights.safetensors")
    for path in files:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return files


def _delete(artifacts: Path, run_id: str) -> list[Path]:
    files = _stored(artifacts, run_id, "preprocess.json")
    for path in files:
        path.unlink()
    return files


def _edit_manifest(artifacts: Path, run_id: str) -> list[Path]:
    files = _stored(artifacts, run_id, "manifest.json")
    for path in files:
        path.write_text(path.read_text().replace('"files"', '"files" ', 1))
    return files


# ---------------------------------------------------------------------------- service figures
def metrics_text(service: Service) -> str:
    return httpx.get(f"{service.url}/metrics", timeout=10).text


def served_version(service: Service) -> str:
    return httpx.get(f"{service.url}/readyz", timeout=10).json()["model"]["version"]


def live_gauge_pids(prom: Path) -> set[int]:
    return {int(p.stem.rsplit("_", 1)[1]) for p in prom.glob("gauge_livemin_*.db")}


def all_workers_serving(service: Service, prom: Path) -> bool:
    workers = rs.worker_pids(service.proc.pid)
    with contextlib.suppress(httpx.HTTPError):
        return (len(workers) == service_workers(service) and set(workers) <= live_gauge_pids(prom)
                and metric_value(metrics_text(service), "anomaly_ae_model_ready") == 1)
    return False


def service_workers(service: Service) -> int:
    return int(service.proc.args[service.proc.args.index("--workers") + 1])


def model_info(text: str) -> dict[str, float]:
    """version -> value of each anomaly_ae_model_info sample."""
    found = {}
    for line in text.splitlines():
        if line.startswith("anomaly_ae_model_info{"):
            head, _, value = line.rpartition(" ")
            match = re.search(r'version="([^"]*)"', head)
            version = match.group(1) if match else ""
            found[version] = found.get(version, 0) + float(value)
    return found


def worker_rss(service: Service) -> dict[str, float]:
    return {str(pid): rs.rss_mib(pid) for pid in rs.worker_pids(service.proc.pid)}


def log_since(service: Service, offset: int) -> str:
    return service.output()[offset:]


def bad_log_lines(text: str) -> list[str]:
    pattern = re.compile(r"Traceback|RuntimeWarning|Exception in ASGI|overflow encountered|invalid value encountered")
    return [line for line in text.splitlines() if pattern.search(line)]
