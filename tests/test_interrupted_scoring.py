"""`anomaly-ae score` killed mid-write: SIGTERM/SIGINT remove the hidden temporary output and exit
143/130; after kill -9 the next run to the same output removes the stale temporary file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from anomaly_ae.data.io import HOST_TAG, remove_stale_temp_files, temp_file_pattern, write_table
from anomaly_ae.data.synthetic import LABEL_COLUMNS, make_telemetry


def _temp_files(output: Path) -> list[Path]:
    pattern = temp_file_pattern(output)
    return [p for p in output.parent.iterdir() if pattern.fullmatch(p.name)]


def _wait_for(condition, deadline_s: float, what: str):
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {deadline_s} s waiting for {what}")


@pytest.fixture(scope="module")
def scoring_job(tmp_path_factory):
    """A saved model and an input big enough (200 chunks) that a run is still writing when signalled."""
    root = tmp_path_factory.mktemp("scoring")
    from anomaly_ae import Detector

    frame = make_telemetry(10_000, 0.0, seed=3).drop(columns=list(LABEL_COLUMNS))
    Detector(model="pca").fit(frame.head(500)).save(root / "model")
    write_table(frame, root / "big.csv")
    return root


# The child's writer pauses after each chunk, so that a signal sent once the temporary output exists lands
# mid-write however fast the scoring is (200 chunks: 10 s in all; the test signals within a poll of 0.05 s).
_SLOW_WRITER = ("import sys, time; from anomaly_ae.data import io; write = io.AtomicTableWriter.write; "
                "io.AtomicTableWriter.write = lambda self, frame: (write(self, frame), time.sleep(0.05))[0]; "
                "from anomaly_ae.cli import main; sys.argv[0] = 'anomaly-ae'; sys.exit(main())")


def _start(job: Path, output: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, "score", str(job / "model"), str(job / "big.csv"),
                             "-o", str(output), "--chunk-rows", "50"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)


def test_sigterm_mid_write_removes_the_temporary_file(scoring_job, tmp_path):
    output = tmp_path / "scores.csv"
    child = _start(scoring_job, output)
    try:
        _wait_for(lambda: _temp_files(output) or child.poll() is not None, 120, "the temporary output")
        assert child.poll() is None, child.stdout.read().decode()
        child.send_signal(signal.SIGTERM)
        out, _ = child.communicate(timeout=60)
    finally:
        child.kill()
        child.wait()
    text = out.decode()
    assert child.returncode == 143, text
    assert "stopped by SIGTERM" in text and "Traceback" not in text
    assert list(tmp_path.iterdir()) == []  # no temporary file, no output


def test_sigint_mid_write_exits_130_and_removes_the_temporary_file(scoring_job, tmp_path, monkeypatch):
    """In-process (the handler runs in the main thread, the signal comes from a watcher thread), with
    SIGINT handled as in an interactive shell (a runner started in the background inherits it ignored)."""
    from typer.testing import CliRunner

    from anomaly_ae.cli import app
    from anomaly_ae.data import io as data_io

    output = tmp_path / "scores.csv"
    # after its first chunk the writer waits for the signal: it lands mid-write however fast the scoring is
    # (on a quiet machine all 200 chunks were written between two polls of the watcher)
    sent = threading.Event()
    write = data_io.AtomicTableWriter.write

    def write_then_wait(self, frame):
        write(self, frame)
        sent.wait(60)

    monkeypatch.setattr(data_io.AtomicTableWriter, "write", write_then_wait)

    def interrupt_when_writing() -> None:
        _wait_for(lambda: _temp_files(output), 60, "the temporary output")
        os.kill(os.getpid(), signal.SIGINT)
        sent.set()

    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        watcher = threading.Thread(target=interrupt_when_writing, daemon=True)
        watcher.start()
        result = CliRunner().invoke(app, ["score", str(scoring_job / "model"), str(scoring_job / "big.csv"),
                                          "-o", str(output), "--chunk-rows", "50"])
        watcher.join(timeout=60)
        assert result.exit_code == 130, result.output
        assert "stopped by SIGINT" in result.output
        assert list(tmp_path.iterdir()) == []
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    finally:
        signal.signal(signal.SIGINT, inherited)


def test_an_ignored_sigint_stays_ignored(scoring_job, tmp_path):
    """A command started with SIGINT ignored (nohup, a background job) does not take it over."""
    from typer.testing import CliRunner

    from anomaly_ae.cli import app

    inherited = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        result = CliRunner().invoke(app, ["score", str(scoring_job / "model"), str(scoring_job / "big.csv"),
                                          "-o", str(tmp_path / "scores.csv"), "--chunk-rows", "5000"])
        assert result.exit_code == 0, result.output
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, inherited)


def test_kill_9_leaves_a_temp_file_that_the_next_run_removes(scoring_job, tmp_path):
    output = tmp_path / "scores.csv"
    child = _start(scoring_job, output)
    try:
        stale = _wait_for(lambda: _temp_files(output) or child.poll() is not None, 120, "the temporary output")
        assert child.poll() is None
    finally:
        child.kill()
        child.wait()  # reaped: its pid is gone, not a zombie
    assert _temp_files(output) == stale  # what a killed writer leaves
    live = tmp_path / f".scores.csv.{HOST_TAG}.{os.getpid()}.{'0' * 32}.tmp"  # a writer still running
    other = tmp_path / f".other.csv.{HOST_TAG}.{child.pid}.{'0' * 32}.tmp"  # another output's
    for path in (live, other):
        path.write_text("in progress")
    past = time.time() - 5
    for path in (*stale, live, other):
        os.utime(path, (past, past))

    from typer.testing import CliRunner

    from anomaly_ae.cli import app

    rerun = CliRunner().invoke(app, ["score", str(scoring_job / "model"), str(scoring_job / "big.csv"),
                                     "-o", str(output), "--chunk-rows", "10000"])
    assert rerun.exit_code == 0, rerun.output
    assert not any(p.exists() for p in stale)
    assert live.exists() and other.exists()
    assert len(output.read_text().splitlines()) == 10_001  # complete: header + every row


def test_sweep_spares_recent_files_and_foreign_names(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(finished.stdout)
    output = tmp_path / "out.parquet"
    old = tmp_path / f".out.parquet.{HOST_TAG}.{dead}.{'a' * 32}.tmp"
    new = tmp_path / f".out.parquet.{HOST_TAG}.{dead}.{'b' * 32}.tmp"
    other_host = tmp_path / f".out.parquet.{'f' * 8 if HOST_TAG != 'f' * 8 else 'e' * 8}.{dead}.{'c' * 32}.tmp"
    lookalike = tmp_path / f".out.parquet.{dead}.tmp"
    for path in (old, new, other_host, lookalike):
        path.write_text("x")
    os.utime(old, (time.time() - 60, time.time() - 60))
    assert remove_stale_temp_files(output, before=time.time() - 30) == [old]
    assert new.exists() and other_host.exists() and lookalike.exists()
