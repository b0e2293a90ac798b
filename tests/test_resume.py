"""Training resumes from checkpoints and ends with exactly the weights of an uninterrupted run."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch
from typer.testing import CliRunner

from anomaly_ae import Detector
from anomaly_ae import detector as detector_module
from anomaly_ae.cli import app
from anomaly_ae.data.io import read_table, write_table
from anomaly_ae.data.synthetic import LABEL_COLUMNS, make_telemetry
from anomaly_ae.exceptions import DataError
from anomaly_ae.training import Checkpointing


class Interrupted(Exception):
    """Stands in for a kill: raised from the epoch callback."""


@pytest.fixture(scope="module")
def data():
    return make_telemetry(300, 0.0, seed=5).drop(columns=list(LABEL_COLUMNS))


def _params(model: str) -> dict:
    return dict(model=model, epochs=8, patience=4, random_state=3)


def _assert_same_weights(a: Detector, b: Detector) -> None:
    assert len(a.members_) == len(b.members_)
    for x, y in zip(a.members_, b.members_):
        sx, sy = x.state_dict(), y.state_dict()
        assert sx.keys() == sy.keys()
        for k in sx:
            assert torch.equal(sx[k], sy[k]), k
    assert a.threshold_ == b.threshold_
    assert [h.val_loss for h in a.history_] == [h.val_loss for h in b.history_]


def _watch_training(monkeypatch, stop_in_member: int | None, stop_at_epoch: int) -> list[tuple[str, int]]:
    """Record (member, epoch) of every trained epoch; raise Interrupted at the given point."""
    seen: list[tuple[str, int]] = []
    from anomaly_ae.training import train as original

    def train(*args, checkpoint_name="model", on_epoch=None, **kwargs):
        def callback(epoch, train_loss, val_loss):
            seen.append((checkpoint_name, epoch))
            if checkpoint_name == f"member{stop_in_member}" and epoch == stop_at_epoch:
                raise Interrupted

        return original(*args, checkpoint_name=checkpoint_name, on_epoch=callback, **kwargs)

    monkeypatch.setattr(detector_module, "train", train)
    return seen


@pytest.mark.parametrize("model, every, stop", [("hybrid", 2, 5), ("aae", 1, 3), ("vae", 3, 7), ("dae", 2, 3)])
def test_resumed_fit_equals_uninterrupted_fit(data, tmp_path, monkeypatch, model, every, stop):
    reference = Detector(**_params(model)).fit(data)
    n_members = len(reference.members_)
    stop_member = n_members - 1  # in the last network: the ones before it are finished
    checkpoint = Checkpointing(tmp_path / "ck", every=every)
    _watch_training(monkeypatch, stop_member, stop)
    with pytest.raises(Interrupted):
        Detector(**_params(model)).fit(data, checkpoint=checkpoint)
    assert sorted(p.name for p in checkpoint.existing()) == [f"member{i}.safetensors" for i in range(n_members)]

    seen = _watch_training(monkeypatch, None, 0)
    resumed = Detector(**_params(model)).fit(data, checkpoint=Checkpointing(tmp_path / "ck", every=every, resume=True))
    _assert_same_weights(reference, resumed)
    last_saved = stop - 1 - (stop - 1) % every  # the epoch of the newest checkpoint before the stop
    assert seen[0] == (f"member{stop_member}", last_saved + 1)  # finished networks are not retrained
    assert {name for name, _ in seen} == {f"member{stop_member}"}


def test_resuming_a_finished_fit_trains_nothing(data, tmp_path, monkeypatch):
    checkpoint = Checkpointing(tmp_path / "ck", every=2)
    first = Detector(**_params("ae")).fit(data, checkpoint=checkpoint)
    seen = _watch_training(monkeypatch, None, 0)
    again = Detector(**_params("ae")).fit(data, checkpoint=Checkpointing(tmp_path / "ck", resume=True))
    assert seen == []
    _assert_same_weights(first, again)


def test_checkpoints_are_not_mixed_up_or_overwritten(data, tmp_path, monkeypatch):
    _watch_training(monkeypatch, 0, 2)
    with pytest.raises(Interrupted):
        Detector(**_params("ae")).fit(data, checkpoint=Checkpointing(tmp_path / "ck"))
    monkeypatch.undo()
    before = (tmp_path / "ck" / "member0.safetensors").read_bytes()
    with pytest.raises(DataError, match="already holds checkpoints .* add --resume"):
        Detector(**_params("ae")).fit(data, checkpoint=Checkpointing(tmp_path / "ck"))
    with pytest.raises(DataError, match="made by a training with other data, settings or seed"):
        Detector(**{**_params("ae"), "random_state": 4}).fit(data, checkpoint=Checkpointing(tmp_path / "ck", resume=True))
    with pytest.raises(DataError, match="other data"):
        Detector(**_params("ae")).fit(data.iloc[1:], checkpoint=Checkpointing(tmp_path / "ck", resume=True))
    assert (tmp_path / "ck" / "member0.safetensors").read_bytes() == before
    (tmp_path / "ck" / "member0.safetensors").write_bytes(before[:50])
    with pytest.raises(DataError, match="cannot be read .* delete it"):
        Detector(**_params("ae")).fit(data, checkpoint=Checkpointing(tmp_path / "ck", resume=True))
    with pytest.raises(DataError, match="every must be an integer >= 1"):
        Checkpointing(tmp_path / "ck", every=0)


def test_checkpoint_holds_no_pickle(data, tmp_path):
    Detector(**_params("aae")).fit(data, checkpoint=Checkpointing(tmp_path / "ck"))
    raw = (tmp_path / "ck" / "member0.safetensors").read_bytes()
    assert raw[8:9] == b"{" and b"\x80\x02" not in raw[:200]


def test_cli_train_killed_with_sigkill_resumes_to_the_same_model(data, tmp_path):
    write_table(data, tmp_path / "train.csv")
    args = ["train", str(tmp_path / "train.csv"), "--model", "ae", "--epochs", "40", "--seed", "3",
            "--threads", "1", "--device", "cpu", "--no-progress", "--checkpoint-dir", str(tmp_path / "ck")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen([sys.executable, "-m", "anomaly_ae.cli", *args, "--out", str(tmp_path / "m")],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    checkpoint = tmp_path / "ck" / "member0.safetensors"
    try:
        deadline = time.monotonic() + 120
        while not checkpoint.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert checkpoint.exists(), child.stdout.read().decode() if child.poll() is not None else "no checkpoint"
    finally:
        child.kill()
        child.wait()
    assert not (tmp_path / "m").exists()

    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "m"), "--resume"])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "ck").exists()  # the checkpoints are removed once the model is saved
    torch.set_num_threads(1)
    reference = Detector(model="ae", epochs=40, random_state=3, device="cpu").fit(read_table(tmp_path / "train.csv"))
    _assert_same_weights(reference, Detector.load(tmp_path / "m"))


def test_cli_checkpoint_options_are_checked(tmp_path):
    write_table(make_telemetry(50, seed=1), tmp_path / "t.csv")
    result = CliRunner().invoke(app, ["train", str(tmp_path / "t.csv"), "--out", str(tmp_path / "m"), "--resume"])
    assert result.exit_code == 2 and "--checkpoint-dir" in result.output
    (tmp_path / "file").write_text("x")
    result = CliRunner().invoke(app, ["train", str(tmp_path / "t.csv"), "--out", str(tmp_path / "m"),
                                      "--checkpoint-dir", str(tmp_path / "file")])
    assert result.exit_code == 2 and "is a file" in result.output and "Traceback" not in result.output
