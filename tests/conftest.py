"""Shared fixtures: small synthetic telemetry and quickly trained detectors, built once per session."""

from __future__ import annotations

import os

import pytest
import torch

from anomaly_ae import Detector
from anomaly_ae.data.synthetic import LABEL_COLUMNS, make_telemetry

# Two cores are shared by the whole suite; one intra-op thread keeps parallel work predictable.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")  # for the processes tests start (this one has torch already)

# Session fixtures `mlflow_server` / `mlflow_server_info`: a real MLflow tracking server (tests/mlflow_server.py).
pytest_plugins = ["mlflow_server"]

FAST = dict(epochs=60, patience=10, random_state=0)


@pytest.fixture(scope="session")
def telemetry_train():
    return make_telemetry(2000, 0.0, seed=1).drop(columns=list(LABEL_COLUMNS))


@pytest.fixture(scope="session")
def telemetry_test():
    return make_telemetry(1500, 0.1, seed=2)


@pytest.fixture(scope="session")
def fitted(telemetry_train):
    """One fitted detector per model type, shared by tests that only read from it."""
    cache: dict[str, Detector] = {}

    def get(model: str) -> Detector:
        if model not in cache:
            cache[model] = Detector(model=model, **FAST).fit(telemetry_train)
        return cache[model]

    return get


@pytest.fixture
def scored_windows(monkeypatch) -> list[int]:
    """A list that gets, for every call of InferencePath.score_windows, the number of windows it scored."""
    from anomaly_ae.inference import InferencePath

    scored: list[int] = []
    original = InferencePath.score_windows

    def counting(self, x, layout, chunk=2048, keep_steps=False, rows=None):
        scored.append(len(layout.position) if rows is None else len(rows))
        return original(self, x, layout, chunk, keep_steps, rows)

    monkeypatch.setattr(InferencePath, "score_windows", counting)
    return scored
