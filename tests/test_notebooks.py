"""notebooks/latent_space.ipynb and augmentation.ipynb run top to bottom (tests/test_notebooks_ops.py
runs the quickstart and checks that no notebook is committed with outputs).

As papermill does, the test injects its own values after the cell tagged `parameters`: a few epochs
prove every cell runs; the pictures and figures at the notebook's own epochs are for readers."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).parent.parent / "notebooks"


def with_parameters(nb, source: str):
    tagged = [i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, "a walkthrough notebook has one cell tagged 'parameters'"
    nb.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell(source))
    return nb


@pytest.mark.parametrize("name", ["latent_space.ipynb", "augmentation.ipynb"])
def test_walkthrough_notebook_runs(name, tmp_path):
    nb = with_parameters(nbformat.read(NOTEBOOKS / name, as_version=4), "EPOCHS = 3")
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
