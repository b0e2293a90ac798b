"""Saving a model recovers from whatever an interrupted save left beside it, and `train --out`
refuses an unusable location before training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from anomaly_ae.cli import app
from anomaly_ae.data.io import HOST_TAG, write_table
from anomaly_ae.data.synthetic import LABEL_COLUMNS, make_telemetry
from anomaly_ae.persistence import MANIFEST, check_writable, recover_directory, sha256, write_directory

runner = CliRunner()


def _contents(tag: str) -> dict[str, bytes]:
    files = {"a.json": json.dumps({"tag": tag}).encode(), "b.bin": tag.encode() * 10}
    manifest = {"files": {n: {"sha256": sha256(d), "bytes": len(d)} for n, d in files.items()}}
    return {**files, MANIFEST: json.dumps(manifest).encode()}


def _tag(path: Path) -> str:
    return json.loads((path / "a.json").read_text())["tag"]


def _dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout)


def _hidden(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


def test_leftover_old_beside_the_model_is_removed(tmp_path):
    path = write_directory(tmp_path / "m", _contents("current"), kind="model")
    old = tmp_path / ".m.old"
    old.mkdir()  # killed while deleting the replaced model: part of it is still there
    (old / "b.bin").write_bytes(b"half deleted")
    write_directory(path, _contents("new"), kind="model")
    assert _tag(path) == "new" and _hidden(tmp_path) == []


def test_complete_old_without_the_model_is_the_last_good_one(tmp_path):
    write_directory(tmp_path / ".m.old", _contents("last good"), kind="model")  # killed between the renames
    recover_directory(tmp_path / "m")
    assert _tag(tmp_path / "m") == "last good" and _hidden(tmp_path) == []
    os.replace(tmp_path / "m", tmp_path / ".m.old")
    write_directory(tmp_path / "m", _contents("new"), kind="model")
    assert _tag(tmp_path / "m") == "new" and _hidden(tmp_path) == []


def test_incomplete_old_without_the_model_is_removed(tmp_path):
    write_directory(tmp_path / ".m.old", _contents("partial"), kind="model")
    (tmp_path / ".m.old" / "b.bin").unlink()
    recover_directory(tmp_path / "m")
    assert not (tmp_path / "m").exists() and _hidden(tmp_path) == []


def test_stale_staging_dirs_are_removed_and_live_ones_kept(tmp_path):
    dead, live = tmp_path / f".m.{HOST_TAG}.{_dead_pid()}.abcd1234", tmp_path / f".m.{HOST_TAG}.{os.getpid()}.abcd1234"
    legacy_old, legacy_new = tmp_path / ".m.zzzz9999", tmp_path / ".m.yyyy8888"  # earlier versions: no pid
    other = tmp_path / f".mm.{HOST_TAG}.{_dead_pid()}.abcd1234"  # another model's
    for d in (dead, live, legacy_old, legacy_new, other):
        d.mkdir()
        (d / "weights.safetensors").write_bytes(b"new model, never moved into place")
    os.utime(legacy_old, (time.time() - 7200, time.time() - 7200))
    write_directory(tmp_path / "m", _contents("new"), kind="model")
    assert _hidden(tmp_path) == sorted(p.name for p in (live, legacy_new, other))


def test_something_else_named_like_old_is_not_deleted(tmp_path):
    (tmp_path / ".m.old").write_text("a user's file")
    with pytest.raises(FileExistsError, match=r"\.m\.old is in the way"):
        write_directory(tmp_path / "m", _contents("new"), kind="model")
    assert (tmp_path / ".m.old").read_text() == "a user's file"


def test_check_writable_fails_before_anything_is_written(tmp_path):
    (tmp_path / "file").write_text("x")
    from anomaly_ae.exceptions import ConfigurationError

    with pytest.raises(ConfigurationError, match="cannot save the model to"):
        check_writable(tmp_path / "file" / "m")
    with pytest.raises(FileExistsError, match="not a directory"):
        check_writable(tmp_path / "file")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not a saved model"):
        check_writable(tmp_path / "docs")
    assert check_writable(tmp_path / "new" / "m") == tmp_path / "new" / "m"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs", "file", "new"]
    assert list((tmp_path / "new").iterdir()) == []  # the probe is gone


@pytest.fixture
def train_csv(tmp_path):
    write_table(make_telemetry(200, seed=1).drop(columns=list(LABEL_COLUMNS)), tmp_path / "train.csv")
    return tmp_path / "train.csv"


def test_train_fails_fast_on_an_unusable_out(train_csv, tmp_path, monkeypatch):
    from anomaly_ae.detector import Detector

    def must_not_train(*args, **kwargs):
        raise AssertionError("training started although the model could not be saved")

    monkeypatch.setattr(Detector, "fit", must_not_train)
    (tmp_path / "file").write_text("x")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("keep")
    for out, message in ((tmp_path / "file" / "m", "cannot save the model"), (tmp_path / "docs", "not a saved model")):
        result = runner.invoke(app, ["train", str(train_csv), "--out", str(out), "--model", "pca"])
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output


def test_train_over_a_leftover_old_succeeds(train_csv, tmp_path):
    """The reported crash: a leftover .NAME.old made `train --out NAME` fail after training."""
    out = tmp_path / "model"
    args = ["train", str(train_csv), "--out", str(out), "--model", "pca", "--no-progress"]
    assert runner.invoke(app, args).exit_code == 0
    (tmp_path / ".model.old").mkdir()
    (tmp_path / ".model.old" / "config.json").write_text("{}")
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (out / MANIFEST).exists() and _hidden(tmp_path) == []
