"""Helpers for the service tests: real `anomaly-ae serve` processes on free loopback ports."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator

import httpx

SCORE_KEY = "score-key-0123456789abcdef"
ADMIN_KEY = "admin-key-0123456789abcdef"
SCORE = {"Authorization": f"Bearer {SCORE_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_model(path: Path, seed: int = 1, n: int = 2000, epochs: int = 20, random_state: int = 0):
    import torch

    from anomaly_ae import Detector
    from anomaly_ae.data.synthetic import LABEL_COLUMNS, make_telemetry

    torch.set_num_threads(1)
    X = make_telemetry(n, seed=seed).drop(columns=list(LABEL_COLUMNS))
    det = Detector(model="ae", epochs=epochs, random_state=random_state).fit(X)
    det.save(path)
    return det


class Service:
    """`python -m anomaly_ae.service.command` in a subprocess, stopped at the end."""

    def __init__(self, model: str | Path, *, keys: bool = True, workers: int = 1, env: dict[str, str] | None = None,
                 log: Path | None = None, **flags: object) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("ANOMALY_AE_", "PROMETHEUS_MULTIPROC"))}
        full_env.update({"ANOMALY_AE_POLL_INTERVAL_S": "0", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
        if keys:
            full_env.update({"ANOMALY_AE_API_KEYS": SCORE_KEY, "ANOMALY_AE_ADMIN_KEYS": ADMIN_KEY})
        full_env.update(env or {})
        args = [sys.executable, "-m", "anomaly_ae.service.command", "--model", str(model), "--port", str(self.port),
                "--workers", str(workers)]
        for name, value in flags.items():
            args += [f"--{name.replace('_', '-')}", str(value)]
        self.metrics_port = flags.get("metrics_port")
        self.log_path = log
        self._log = open(log, "wb") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen(args, cwd=REPO, env=full_env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_ready(self, timeout: float = 120.0) -> "Service":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited with {self.proc.returncode}: {self.output()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"service not ready after {timeout}s: {self.output()[-2000:]}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self._log is not subprocess.DEVNULL:
            self._log.close()
        return self.proc.returncode


def metric_value(text: str, metric_name: str, /, **labels: str) -> float:
    """The value of one sample in Prometheus exposition text (0 when absent)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(metric_name):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, label_text = head.partition("{")
        if metric != metric_name:
            continue
        found = dict(part.split("=", 1) for part in label_text.rstrip("}").split(",") if part) if label_text else {}
        found = {k: v.strip('"') for k, v in found.items()}
        if all(found.get(k) == v for k, v in labels.items()) and (labels or not found):
            return float(value)
    return 0.0


def wait_for(predicate, timeout: float = 120.0, step: float = 0.2) -> bool:
    """Poll `predicate` until it is true (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


@contextlib.asynccontextmanager
async def in_process(settings, **factory) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    """(app, client): `create_app(settings, **factory)` with its lifespan running, called through
    httpx's ASGI transport (no server, no sockets)."""
    from anomaly_ae.service.app import create_app

    app = create_app(settings, **factory)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://service",
                                     timeout=60) as client:
            yield app, client


async def until(predicate, timeout: float = 60.0, step: float = 0.02) -> None:
    """Await (async) `predicate()` until it is true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, f"condition not met within {timeout}s"
        await asyncio.sleep(step)


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["status"] == status and error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error


def one_id_per_sample(case):
    """`ids` must hold one id per sample, which JSON Schema cannot say (the document says it in
    words): a generated valid body's ids are repeated or cut to its number of samples."""
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("ids"), list):
        ids, n = body["ids"] or [0], len(body.get("records") or body.get("data") or [])
        body["ids"] = [ids[i % len(ids)] for i in range(n)]
    return case


def series_in_time_order(time_col: str, series_col: str | None, step_seconds: float):
    """A series model's rows must be in time order within each series, at most one per step, which JSON
    Schema cannot say (the document says it in words): a generated valid body's timestamps are
    replaced by consecutive steps of each series, in the order its rows come."""
    import datetime as dt

    start = dt.datetime(2026, 1, 5, tzinfo=dt.timezone.utc)

    def fix(case):
        body = case.body
        if not isinstance(body, dict):
            return case
        if isinstance(body.get("records"), list):
            rows, time_key, series_key = body["records"], time_col, series_col
        elif isinstance(body.get("data"), list) and time_col in (body.get("columns") or []):
            columns = body["columns"]
            rows, time_key = body["data"], columns.index(time_col)
            series_key = columns.index(series_col) if series_col in columns else None
        else:
            return case
        steps: dict = {}
        for row in rows:
            series = row[series_key] if series_key is not None else None
            key = str(int(series) if isinstance(series, float) and series.is_integer() else series)  # the server's id
            steps[key] = steps.get(key, -1) + 1
            row[time_key] = (start + dt.timedelta(seconds=step_seconds * steps[key])).isoformat()
        return case

    return fix


def fuzz_openapi(url: str, max_examples: int = 25, series: dict | None = None) -> tuple[int, list[str]]:
    """schemathesis against the service at `url`: valid and invalid requests (bodies, query strings,
    headers) generated for every operation in /openapi.json, each response run through all of
    schemathesis' checks (no 5xx, only declared statuses, responses matching their schemas, valid
    data accepted and invalid data refused) and through one more: every scored row has a finite
    score. The document describes the served model's columns, so generated "valid" bodies are valid
    for the model too. Returns (requests sent, one line per failing operation and mode); hypothesis
    stops an operation at its first failure, after shrinking it. Derandomised: the same cases each run.
    `series`: a series model's contract (GET /v1/model's `series`): valid bodies get their timestamps
    in time order (`series_in_time_order`)."""
    import math

    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode
    from schemathesis.config import SchemathesisConfig
    from schemathesis.config._checks import NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES

    # 413 is how the service refuses a batch over max_rows (the schema's maxItems): a rejection too
    config = SchemathesisConfig.from_dict({"checks": {"negative_data_rejection": {
        "expected-statuses": [*NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES, "413"]}}})
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", config=config)

    def finite_scores(ctx, response, case):
        if response.status_code == 200 and case.path == "/v1/score":
            for row in response.json()["results"]:
                assert row["score"] is not None and math.isfinite(row["score"]), row
                assert math.isfinite(row["p_value"]), row

    errors, calls = [], 0
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(generation_mode=mode)
            if mode is GenerationMode.POSITIVE and operation.path == "/v1/score":
                strategy = strategy.map(one_id_per_sample)
                if series is not None and series.get("time_col") is not None:
                    strategy = strategy.map(series_in_time_order(series["time_col"], series["series_col"],
                                                                 series["step_seconds"]))

            @given(strategy)
            @settings(max_examples=max_examples, deadline=None, suppress_health_check=list(HealthCheck),
                      derandomize=True, database=None)
            def run(case):
                nonlocal calls
                calls += 1
                # a real key in place of the generated one; a case that leaves the header out on purpose
                # (a negative one) is sent without it
                sends_key = any(name.lower() == "authorization" for name in (case.headers or {}))
                headers = ADMIN if sends_key else None
                case.call_and_validate(headers=headers, additional_checks=[finite_scores], timeout=30)

            try:
                run()
            except Unsatisfiable:  # no parameters and no body: nothing to make invalid
                if mode is not GenerationMode.NEGATIVE:
                    errors.append(f"{mode.value} {operation.method.upper()} {operation.path}: no case generated")
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # report every operation's failure (a FailureGroup is a BaseExceptionGroup)
                errors.append(f"{mode.value} {operation.method.upper()} {operation.path}: {type(exc).__name__}: "
                              f"{str(exc)[:1500]}")
    return calls, errors


async def documented_request_bodies(client) -> list[dict]:
    """The request bodies the OpenAPI document gives as examples (what /docs pre-fills)."""
    schemas = (await client.get("/openapi.json")).json()["components"]["schemas"]
    return [example for schema in schemas.values() for example in schema.get("examples", [])
            if "records" in example or "data" in example]
