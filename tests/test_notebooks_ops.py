"""notebooks/quickstart.ipynb runs headless top to bottom (nbclient), and no notebook is committed with outputs.

The quickstart trains a small model, registers it in an embedded MLflow store in a temporary folder,
starts the scoring service on a free loopback port, scores through the API and stops the service.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="pip install -e '.[test]'")
nbclient = pytest.importorskip("nbclient", reason="pip install -e '.[test]'")
pytest.importorskip("ipykernel", reason="pip install -e '.[test]'")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
QUICKSTART = NOTEBOOKS / "quickstart.ipynb"


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_notebooks_are_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert not cell.get("outputs"), f"{path.name} cell {i} has outputs: clear them before committing"
            assert cell.get("execution_count") is None, f"{path.name} cell {i} has an execution count"
    assert "widgets" not in nb.metadata, f"{path.name} carries widget state"


@pytest.mark.slow
def test_quickstart_runs_end_to_end(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="the quickstart registers the model in MLflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for name in ("ANOMALY_AE_API_KEYS", "ANOMALY_AE_ADMIN_KEYS", "ANOMALY_AE_MODEL_URI", "PROMETHEUS_MULTIPROC_DIR"):
        monkeypatch.delenv(name, raising=False)
    nb = nbformat.read(QUICKSTART, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()

    text = "\n".join(output.get("text", "") or json.dumps(output.get("data", {}).get("text/plain", ""))
                     for cell in nb.cells if cell.cell_type == "code" for output in cell.get("outputs", []))
    assert "@champion -> telemetry v1" in text, "registered and promoted"
    assert "'status': 'ready'" in text, "the service became ready"
    assert "API scores == local scores" in text
    assert "anomaly_ae_rows_scored_total 10.0" in text, "the 10 rows scored through the API were counted"
    assert "service stopped" in text
    images = [o for cell in nb.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 3, "score histogram, ROC and PR plots are shown"
