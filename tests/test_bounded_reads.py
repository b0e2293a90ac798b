"""Reads of user files are bounded: a file without newlines, a huge line, or data bigger than the
memory available fails at once with one DataError line instead of exhausting memory."""

from __future__ import annotations

import gzip
import os
import random
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from anomaly_ae.cli import app
from anomaly_ae.data import io as dio
from anomaly_ae.data.io import iter_table_chunks, read_array, read_table, write_table
from anomaly_ae.exceptions import DataError

runner = CliRunner()
MiB = 1 << 20


# Measures in a small exec'd parent: a child forked straight from pytest would count pytest's own
# memory (torch is loaded here) in its peak RSS.
_MEASURE = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
output = child.stdout.read()
_, status, usage = os.wait4(child.pid, 0)
sys.stdout.buffer.write(output)
print(f"@@ {os.waitstatus_to_exitcode(status)} {usage.ru_maxrss}")
"""


def _run_measured(args: list[str], env: dict[str, str]) -> tuple[int, str, float]:
    """Exit code, combined output and peak RSS (MiB) of one child process."""
    done = subprocess.run([sys.executable, "-c", _MEASURE, *args], capture_output=True, text=True, env=env,
                          timeout=300)
    output, _, tail = done.stdout.rpartition("@@ ")
    code, peak_kib = tail.split()
    return int(code), output, int(peak_kib) / 1024  # ru_maxrss is in KiB on Linux


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sparse files and ru_maxrss in KiB are Linux's")
def test_file_without_newlines_fails_fast_with_one_line_and_bounded_memory(fitted, tmp_path):
    model = fitted("pca").save(tmp_path / "model")
    huge = tmp_path / "huge.csv"
    with open(huge, "wb") as f:  # sparse: 512 MiB of NUL bytes that take no disk space
        f.truncate(512 * MiB)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    code, output, peak = _run_measured(
        [sys.executable, "-m", "anomaly_ae.cli", "score", str(model), str(huge), "-o", str(tmp_path / "o.parquet")],
        env)
    assert code == 2, output
    lines = output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in output, output
    assert f"the first line of '{huge}' is longer than 1 MiB: not a CSV with a header row?" in lines[0]
    assert "--max-line-bytes" in lines[0]  # says what to do if the lines really are that long
    assert peak < 300, f"peak RSS {peak:.0f} MiB for a 512 MiB file"  # unbounded reading took ~5x the file
    assert not (tmp_path / "o.parquet").exists()

    result = runner.invoke(app, ["train", str(huge), "--out", str(tmp_path / "m")])
    assert result.exit_code == 2 and "the first line of" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("suffix", ["csv", "csv.gz"])
def test_a_long_line_later_in_the_file_names_its_line(tmp_path, suffix):
    text = "a,b\n" + "1,2\n" * 5 + "3," + "4" * 300 + "\n" + "5,6\n" * 3
    path = tmp_path / f"long.{suffix}"
    path.write_bytes(gzip.compress(text.encode()) if suffix.endswith("gz") else text.encode())
    with pytest.raises(DataError, match=r"line 7 of .* is longer than 200 bytes: not a CSV with one record per line"):
        read_table(path, max_line_bytes=200)
    with pytest.raises(DataError, match="line 7 of"):
        list(iter_table_chunks(path, chunk_rows=2, max_line_bytes=200))
    assert len(read_table(path, max_line_bytes=400)) == 9


def test_the_cli_default_line_limit_is_the_library_default():
    from anomaly_ae import cli
    from anomaly_ae.data import io as table_io

    assert cli.DEFAULT_MAX_LINE_BYTES == table_io.DEFAULT_MAX_LINE_BYTES


def test_max_line_bytes_argument_is_checked(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a\n1\n")
    with pytest.raises(ValueError, match="max_line_bytes must be a positive number of bytes"):
        read_table(path, max_line_bytes=0)


@pytest.mark.parametrize("seed", range(20))
def test_line_check_agrees_with_a_naive_one_across_buffer_boundaries(tmp_path, seed):
    rng = random.Random(seed)
    limit = rng.randint(1, 40)
    data = b"".join(b"x" * rng.choice([0, 1, limit - 1, limit, limit + 1, rng.randint(0, 3 * limit)]) + b"\n"
                    for _ in range(rng.randint(1, 30)))
    if rng.random() < 0.5:
        data += b"y" * rng.randint(0, 2 * limit)  # no final newline
    path = tmp_path / "t.csv"
    path.write_bytes(data)
    lengths = [len(line) for line in data.split(b"\n")]
    expected = next((i + 1 for i, n in enumerate(lengths) if n > limit), None)
    reader = dio._LineBoundedReader(path, limit)
    size = rng.choice([1, 3, limit, 4 * limit, 1000])
    try:
        while reader.readinto(bytearray(size)):
            pass
    except DataError as exc:
        assert expected is not None, "no line is too long"
        assert (f"line {expected} of" if expected > 1 else "the first line of") in str(exc)
    else:
        assert expected is None
    finally:
        reader.close()


@pytest.mark.parametrize("suffix", ["csv", "csv.gz", "parquet"])
def test_whole_file_read_is_refused_when_it_cannot_fit_in_memory(tmp_path, monkeypatch, suffix):
    path = tmp_path / f"t.{suffix}"
    write_table(pd.DataFrame({"a": np.arange(2000.0), "b": np.arange(2000.0)}), path)
    monkeypatch.setattr(dio, "available_memory", lambda: 1000)
    with pytest.raises(DataError, match=r"too big for this machine: .* needs at least .* only 1000 bytes is available"):
        read_table(path)
    assert len(next(iter_table_chunks(path, 100))) == 100  # streaming does not need it all at once
    monkeypatch.setattr(dio, "available_memory", lambda: None)  # unknown: read it
    assert len(read_table(path)) == 2000


def test_arrays_are_read_safely(tmp_path, monkeypatch):
    X = np.arange(60, dtype=np.float32).reshape(20, 3)
    np.save(tmp_path / "x.npy", X)
    np.savez(tmp_path / "x.npz", X=X)
    np.savez(tmp_path / "other.npz", images=X)
    assert np.array_equal(read_array(tmp_path / "x.npy"), X)
    assert np.array_equal(read_array(tmp_path / "x.npz"), X)
    with pytest.raises(DataError, match=r"has no array named 'X' \(it has images\)"):
        read_array(tmp_path / "other.npz")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "garbage.npy").write_bytes(b"\x93NUMPY garbage")
    (tmp_path / "garbage.npz").write_bytes(b"PK not a zip")
    for name in ("objects.npy", "garbage.npy", "garbage.npz"):
        with pytest.raises(DataError, match="could not read"):
            read_array(tmp_path / name)
    with pytest.raises(DataError, match="does not exist"):
        read_array(tmp_path / "missing.npy")
    monkeypatch.setattr(dio, "available_memory", lambda: 100)
    for name in ("x.npy", "x.npz"):
        with pytest.raises(DataError, match=r"too big for this machine: reading it needs at least (240|368) bytes"):
            read_array(tmp_path / name)


def test_cli_train_on_a_bad_array_is_one_line(tmp_path):
    (tmp_path / "garbage.npy").write_bytes(b"not numpy")
    result = runner.invoke(app, ["train", str(tmp_path / "garbage.npy"), "--out", str(tmp_path / "m")])
    assert result.exit_code == 2 and "could not read" in result.output and "Traceback" not in result.output
