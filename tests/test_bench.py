"""Benchmark harness: protocol split, fingerprints, runner (resume / rerun), report, command.

Runs without /work/shared (the real ADBench data): everything uses generated .npz files;
the fingerprint check against the real data is skipped when that folder is missing.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from anomaly_ae.bench import detectors as det
from anomaly_ae.bench.protocol import (fingerprint_entry, fit_scaler, load, split, split_indices,
                                       split_sha256, verify_fingerprints)
from anomaly_ae.bench.report import write_report
from anomaly_ae.bench.runner import (COLUMNS, BenchmarkError, discover, evaluate, read_rows,
                                     run_benchmark)

SHARED = Path("/work/shared")
SHARED_FP = SHARED / "bench" / "protocol_fingerprint.json"
SHARED_DATA = SHARED / "data" / "adbench"


def _labels(n_normal: int, n_anom: int, seed: int = 7) -> np.ndarray:
    y = np.r_[np.zeros(n_normal, dtype=np.int32), np.ones(n_anom, dtype=np.int32)]
    return np.random.default_rng(seed).permutation(y)


def _reference_split(y: np.ndarray, seed: int):
    """PROTOCOL.md steps 1-7, written out independently of the implementation."""
    rng = np.random.default_rng(seed)
    normal = rng.permutation(np.flatnonzero(y == 0))
    anom = rng.permutation(np.flatnonzero(y == 1))
    n_train = min(int(np.floor(0.6 * len(normal))), 10000)
    return normal[:n_train], normal[n_train:n_train + 20000], anom[:min(len(anom), 5000)]


# ----------------------------------------------------------------------------- protocol

@pytest.mark.parametrize("n_normal,n_anom", [(50, 10), (7, 3), (40123, 6001)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_follows_protocol(n_normal, n_anom, seed):
    y = _labels(n_normal, n_anom)
    X = np.arange(len(y), dtype=np.int16 if len(y) < 30000 else np.int64)[:, None]  # X = row id
    X_train, X_test, y_test = split(X, y, seed)
    tr, tn, ta = _reference_split(y, seed)
    n_train = min((6 * n_normal) // 10, 10000)
    assert X_train.dtype == X_test.dtype == np.float64 and y_test.dtype == np.int64
    assert len(X_train) == n_train
    assert len(tn) == min(n_normal - n_train, 20000) and len(ta) == min(n_anom, 5000)
    # rows are exactly the reference indices, normals first, then anomalies
    np.testing.assert_array_equal(X_train[:, 0], tr)
    np.testing.assert_array_equal(X_test[:, 0], np.r_[tn, ta])
    np.testing.assert_array_equal(y_test, np.r_[np.zeros(len(tn)), np.ones(len(ta))])
    assert (y[X_train[:, 0].astype(int)] == 0).all()  # no anomaly in training
    assert (y[X_test[:, 0].astype(int)] == y_test).all()
    assert not set(X_train[:, 0]) & set(X_test[:, 0])
    # deterministic; other seeds give other orders
    X_train2, X_test2, _ = split(X, y, seed)
    np.testing.assert_array_equal(X_train, X_train2)
    np.testing.assert_array_equal(X_test, X_test2)
    if n_normal > 10:
        assert not np.array_equal(split(X, y, seed + 1)[0], X_train)


def test_split_known_answer():
    """Pinned values: guards against any change of the random stream or the slicing."""
    y = (np.arange(1000) % 10 == 0).astype(int)
    train, test_normal, test_anom = split_indices(y, 0)
    assert (len(train), len(test_normal), len(test_anom)) == (540, 360, 100)
    assert train[:3].tolist() == [642, 792, 856]
    assert test_normal[:3].tolist() == [649, 879, 388]
    assert test_anom[:3].tolist() == [610, 120, 620]
    blob = np.concatenate([train, test_normal, test_anom]).astype("<i8").tobytes()
    assert split_sha256(y, 0) == hashlib.sha256(blob).hexdigest() == (
        "ed2031b53974caaf37055ac9d52ce2e403b46bfa9a2a9624c6a633021a23fd81")


def test_load_converts_dtypes(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, X=np.arange(12, dtype=np.uint8).reshape(6, 2), y=np.array([[0], [1], [0], [0], [1], [0]], np.int32))
    X, y = load(p)
    assert X.dtype == np.float64 and X.shape == (6, 2)
    assert y.dtype == np.int64 and y.shape == (6,)


def test_scaler_zero_variance_guard():
    X_train = np.array([[1.0, 5.0, 0.0], [3.0, 5.0, 2.0]])
    X_test = np.array([[2.0, 7.0, 4.0]])
    s = fit_scaler(X_train)
    np.testing.assert_allclose(s.transform(X_test), [[0.0, 2.0, 3.0]])  # constant col: centred only


@pytest.mark.skipif(not (SHARED_FP.exists() and SHARED_DATA.is_dir()),
                    reason="shared ADBench data / fingerprints not available")
def test_real_fingerprints_match():
    assert verify_fingerprints(SHARED_DATA, SHARED_FP) == []


def test_verify_fingerprints_reports_mismatch(tmp_path):
    data = _make_data(tmp_path / "data")
    y = load(data / "a_blobs.npz")[1]
    good = {"dataset": "a_blobs", "seed": 0, **fingerprint_entry(y, 0)}
    bad = {**good, "seed": 1}  # seed-0 entry filed under seed 1
    fp = tmp_path / "fp.json"
    fp.write_text(json.dumps({"entries": [good]}))
    assert verify_fingerprints(data, fp) == []
    fp.write_text(json.dumps({"entries": [good, bad, {**good, "dataset": "missing"}]}))
    problems = verify_fingerprints(data, fp)
    assert any(p.startswith("a_blobs seed 1: ") for p in problems)
    assert any(p.startswith("missing: ") for p in problems)


# ----------------------------------------------------------------------------- runner

def _make_data(folder: Path) -> Path:
    """Two small ADBench-like files: normals along one direction (features that move together), anomalies
    off it and far out in every feature, so that each detector the runner tests finds them (a reconstruction
    baseline cannot on isotropic normals, where every direction is as normal as any other)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, n, a, d in [("a_blobs", 300, 30, 4), ("b_tiny", 60, 8, 3)]:
        normal = rng.normal(size=(n, 1)) * np.ones(d) + 0.3 * rng.normal(size=(n, d))
        across = np.where(np.arange(d) % 2 == 0, 4.0, -4.0)  # off the normals' direction
        X = np.r_[normal, across + 0.3 * rng.normal(size=(a, d))]
        y = np.r_[np.zeros(n, np.int64), np.ones(a, np.int64)]
        if name == "b_tiny":
            X, y = np.round(X * 10).astype(np.int16), y.astype(np.int32)
        np.savez(folder / f"{name}.npz", X=X, y=y)
    return folder


def _fast_detectors() -> list[str]:
    names = [n for n in ("ECOD", "IForest") if det.available(n)]
    if det.available("pca"):
        names.append("pca")
    if not names:
        pytest.skip("neither pyod nor anomaly_ae.Detector available")
    return names


def _read(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_discover_orders_small_first_and_errors(tmp_path):
    data = _make_data(tmp_path / "data")
    assert [i.name for i in discover(data)] == ["b_tiny", "a_blobs"]
    with pytest.raises(BenchmarkError, match="point --data-dir"):
        discover(tmp_path / "nope")
    with pytest.raises(BenchmarkError, match="not found"):
        discover(data, ["zzz"])


def test_runner_resume_rerun_and_report(tmp_path):
    data = _make_data(tmp_path / "data")
    names = _fast_detectors()
    out = tmp_path / "res" / "bench.csv"
    # a fingerprint file with an entry for one dataset only: checked there, skipped elsewhere
    y = load(data / "a_blobs.npz")[1]
    fp = tmp_path / "fp.json"
    fp.write_text(json.dumps({"entries": [{"dataset": "a_blobs", "seed": 0, **fingerprint_entry(y, 0)}]}))

    run_benchmark(data, out, seeds=(0, 1), detectors=names, progress=False, fingerprints=fp,
                  warm_up=False)
    rows = _read(out)
    assert list(rows[0]) == COLUMNS
    assert len(rows) == 2 * 2 * len(names)
    assert [r["dataset"] for r in rows[: 2 * len(names)]] == ["b_tiny"] * len(names) + ["a_blobs"] * len(names)
    assert {r["seed"] for r in rows[: 2 * len(names)]} == {"0"}  # seed 0 first, all datasets
    for r in rows:
        assert r["error"] == "", r
        assert float(r["auroc"]) > 0.9
        assert (r["fpr_at_threshold"] != "") == det.is_anomaly_ae(r["detector"])
    assert {(r["dataset"], r["n_train"], r["n_test"]) for r in rows} == {("a_blobs", "180", "150"),
                                                                        ("b_tiny", "36", "32")}

    before = out.read_text()
    run_benchmark(data, out, seeds=(0, 1), detectors=names, progress=False, fingerprints=fp)
    assert out.read_text() == before  # resume: nothing to do

    target = names[0]
    run_benchmark(data, out, seeds=(0, 1), datasets=["b_tiny"], detectors=names, rerun=[target],
                  progress=False, fingerprints=fp, warm_up=False)
    rows2 = _read(out)
    assert len(rows2) == len(rows)
    assert [(r["dataset"], r["detector"]) for r in rows2[-2:]] == [("b_tiny", target)] * 2
    key = lambda r: (r["dataset"], r["seed"], r["detector"])  # noqa: E731
    auroc = {key(r): r["auroc"] for r in rows}
    assert all(auroc[key(r)] == r["auroc"] for r in rows2)  # same seeds -> same results

    # a wrong fingerprint is fatal
    bad = json.loads(fp.read_text())
    bad["entries"][0]["sha256"] = "0" * 64
    fp.write_text(json.dumps(bad))
    with pytest.raises(BenchmarkError, match="fingerprint"):
        run_benchmark(data, tmp_path / "other.csv", seeds=(0,), detectors=names[:1],
                      progress=False, fingerprints=fp, warm_up=False)

    # report (with a fake anchor holding one of our rows, slightly off)
    anchor = tmp_path / "anchor.csv"
    r0 = rows2[0]
    anchor.write_text("dataset,seed,detector,auroc,auprc,fit_s,score_s,n_train,n_test,error\n"
                      f"{r0['dataset']},{r0['seed']},{r0['detector']},{float(r0['auroc']) - 0.01},"
                      f"{r0['auprc']},1.0,1.0,{r0['n_train']},{r0['n_test']},\n")
    md = write_report(out, tmp_path / "report.md", anchor).read_text()
    for section in ("## Summary", "## AUROC per dataset", "## Calibration", "## PyOD reruns vs the anchor",
                    "## Errors"):
        assert section in md
    for n in names:
        assert f"`{n}`" in md
    assert "0.0100" in md  # the anchor difference
    if "pca" in names:
        assert "datasets in band" in md


def test_nonfinite_scores_and_exceptions_become_error_rows(monkeypatch):
    class Fake:
        def __init__(self, fail):
            self.fail = fail

        def fit(self, X):
            if self.fail:
                raise RuntimeError("boom\nsecond line")
            return self

        def decision_function(self, X):
            s = np.zeros(len(X))
            s[0] = np.nan
            return s

    for fail, msg in [(False, "ValueError: 1 of 20 test scores are non-finite"),
                      (True, "RuntimeError: boom second line")]:
        monkeypatch.setattr(det, "make_detector", lambda name, seed, fail=fail: det.BenchDetector(
            name=name, family=det.PYOD_FAMILY, _build=lambda n: Fake(fail), standardize=True))
        X = np.random.default_rng(0).normal(size=(40, 3))
        row = evaluate("ECOD", 0, X[:20], X[20:], np.r_[np.zeros(10, int), np.ones(10, int)])
        assert row["error"] == msg and row["auroc"] == "" and row["auprc"] == ""


def test_unknown_detector_is_rejected(tmp_path):
    data = _make_data(tmp_path / "data")
    with pytest.raises(BenchmarkError, match="unknown detector"):
        run_benchmark(data, tmp_path / "x.csv", detectors=["nope"], progress=False)
    assert read_rows(tmp_path / "x.csv") == []


# ----------------------------------------------------------------------------- command

def _app():
    import typer

    from anomaly_ae.bench.command import benchmark

    app = typer.Typer()
    app.command()(benchmark)
    return app


def test_command_missing_data_dir(tmp_path):
    from typer.testing import CliRunner

    res = CliRunner().invoke(_app(), ["--data-dir", str(tmp_path / "missing"), "--out",
                                      str(tmp_path / "o.csv")])
    assert res.exit_code == 2
    assert "point --data-dir at a folder of ADBench .npz files" in " ".join(res.output.split())
    assert "Traceback" not in res.output


def test_command_runs_and_reports(tmp_path):
    from typer.testing import CliRunner

    names = _fast_detectors()[:1]
    data = _make_data(tmp_path / "data")
    out, md = tmp_path / "r.csv", tmp_path / "r.md"
    res = CliRunner().invoke(_app(), ["--data-dir", str(data), "--out", str(out), "--report", str(md),
                                      "--seeds", "0", "--detectors", ",".join(names), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert len(_read(out)) == 2 * len(names)
    assert "## Summary" in md.read_text()
    res = CliRunner().invoke(_app(), ["--data-dir", str(data), "--out", str(out), "--report", str(md),
                                      "--detectors", "Nope"])
    assert res.exit_code == 2 and "unknown detector" in res.output


@pytest.mark.parametrize("case, says", [
    ("not_npz", "not a .npz (zip) archive"), ("no_keys", "X is not a file in the archive"),
    ("out_dir", "is a directory; name the result CSV"), ("foreign_csv", "use another --out file"),
    ("no_seeds", "--seeds names no seed"), ("empty_csv", "holds no results; run the benchmark without --report-only")])
def test_command_bad_inputs_are_one_line_errors(tmp_path, case, says):
    from typer.testing import CliRunner

    data = tmp_path / "data"
    data.mkdir()
    np.savez(data / "ok.npz", X=np.random.default_rng(0).random((60, 2)), y=np.r_[np.zeros(55), np.ones(5)])
    (data / "not_npz.npz").write_text("junk")
    np.savez(data / "no_keys.npz", A=np.zeros(3))
    out = tmp_path / "r.csv"
    args = {"not_npz": ["--datasets", "not_npz"], "no_keys": ["--datasets", "no_keys"],
            "out_dir": ["--datasets", "ok"], "foreign_csv": ["--report-only"], "empty_csv": ["--report-only"],
            "no_seeds": ["--datasets", "ok", "--seeds", ""]}[case]
    if case == "out_dir":
        out = tmp_path
    if case == "foreign_csv":
        out.write_text("garbage,1\n")
    if case == "empty_csv":
        out.write_text("")
    res = CliRunner().invoke(_app(), ["--data-dir", str(data), "--out", str(out), "--report", str(tmp_path / "r.md"),
                                      "--detectors", "pca", "--seeds", "0", "--no-progress", *args])
    assert res.exit_code == 2 and says in " ".join(res.output.split()), res.output
    assert "Traceback" not in res.output
