"""MLflow tracking and registry against a real `mlflow server` (tests/mlflow_server.py) and the embedded default.

Training is small (2000 telemetry rows, 20 epochs, one torch thread); the server starts once per session.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow_server import free_port
from typer.testing import CliRunner

from anomaly_ae import Detector, registry
from anomaly_ae.cli import app, read_training_data
from anomaly_ae.data.synthetic import LABEL_COLUMNS, make_telemetry
from anomaly_ae.exceptions import ModelLoadError, RegistryError, RegistryUnavailableError
from anomaly_ae.persistence import MANIFEST, sha256

pytestmark = pytest.mark.slow

NAME = "telemetry-detector"
DROP = "is_anomaly,anomaly_kind"
runner = CliRunner()


def cli(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result) -> str:
    """The CLI contract for expected errors: exit code 2, one 'error:' line, no traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error:"), result.output
    return result.output


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry-data")
    normal, labelled = make_telemetry(2000, seed=1), make_telemetry(1500, 0.1, seed=2)
    normal.to_csv(root / "normal.csv", index=False)
    labelled.to_csv(root / "eval.csv", index=False)
    return {"normal": root / "normal.csv", "eval": root / "eval.csv",
            "X": normal.drop(columns=list(LABEL_COLUMNS)), "X_eval": labelled.drop(columns=list(LABEL_COLUMNS)),
            "labels": labelled["is_anomaly"].to_numpy()}


@pytest.fixture(scope="module")
def registered(mlflow_server, data):
    """A detector trained in memory and registered (with evaluation data) as a version of NAME."""
    detector = Detector(model="ae", epochs=20, random_state=0).fit(data["X"])
    run = registry.log_training_run(detector, data["X"], experiment="registry-tests", register=NAME,
                                    tracking_uri=mlflow_server, eval_data=data["eval"], label_col="is_anomaly",
                                    drop_cols=["anomaly_kind"])
    return detector, run


def _noise_detector(X: pd.DataFrame) -> Detector:
    """Trained on noise with the right schema: a valid model that detects poorly (AUROC ~0.6 vs ~0.99)."""
    rng = np.random.default_rng(0)
    noise = pd.DataFrame({c: rng.choice(sorted(X[c].unique()), len(X)) if c == "mode"
                          else rng.uniform(0, X[c].max(), len(X)) for c in X.columns})
    return Detector(model="ae", epochs=20, random_state=0).fit(noise)


def _exact(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), check_exact=True)
    assert np.array_equal(a["score"].to_numpy().view(np.uint64), b["score"].to_numpy().view(np.uint64))


# ---------------------------------------------------------------------- tracking through the CLI
def test_cli_train_logs_the_run_and_registers_a_version(mlflow_server, data):
    from mlflow import MlflowClient

    # the evaluation file lacks one of the --drop-cols: the model ignores them where they are (it failed after
    # training); and one without its label column fails before the training
    without = data["eval"].parent / "eval_without_kind.csv"
    pd.read_csv(data["eval"]).drop(columns=["anomaly_kind"]).to_csv(without, index=False)
    refused = cli("train", data["normal"], "--drop-cols", DROP, "--epochs", 100_000, "--experiment", "cli-tests",
                  "--eval", without, "--label-col", "label", "--tracking-uri", mlflow_server)
    assert "--label-col 'label' is not a column of" in one_line_error(refused)
    result = cli("train", data["normal"], "--drop-cols", DROP, "--model", "ae", "--epochs", 20, "--no-progress",
                 "--experiment", "cli-tests", "--register", "cli-detector", "--eval", without,
                 "--label-col", "is_anomaly", "--tracking-uri", mlflow_server)
    assert result.exit_code == 0, result.output
    assert "registered models:/cli-detector/1" in result.output
    assert f"{mlflow_server}/#/experiments/" in result.output

    client = MlflowClient(mlflow_server, mlflow_server)
    version = client.get_model_version("cli-detector", "1")
    run = client.get_run(version.run_id)
    params, metrics = run.data.params, run.data.metrics
    assert run.info.status == "FINISHED"
    X = read_training_data(data["normal"], DROP.split(","))
    fingerprint = registry.data_fingerprint(X)
    assert params["model"] == "ae" and params["epochs"] == "20" and params["target_fpr"] == "0.01"
    assert params["data_rows"] == "2000" and params["data_columns"] == str(X.shape[1])
    assert params["data_sha256"] == fingerprint["sha256"]
    for key in ("training_seconds", "threshold", "target_fpr", "validation_fpr", "val_score_p50", "val_score_p99",
                "val_score_max", "auroc", "auprc"):
        assert key in metrics, key
    assert metrics["auroc"] > 0.9
    train_loss = client.get_metric_history(run.info.run_id, "train_loss")
    val_loss = client.get_metric_history(run.info.run_id, "val_loss")
    assert [m.step for m in train_loss] == list(range(1, int(metrics["epochs_run"]) + 1)) and len(val_loss) == len(train_loss)

    def files(path: str = "") -> set[str]:
        out = set()
        for item in client.list_artifacts(run.info.run_id, path):
            out |= files(item.path) if item.is_dir else {item.path}
        return out

    artifacts = files()
    for expected in ("plots/loss_curves.png", "plots/score_histogram.png", "plots/eval_score_histogram.png",
                     "plots/roc.png", "plots/pr.png", "data/schema.json", "data/fingerprint.json", "model/MLmodel",
                     "model/requirements.txt", "model/input_example.json", "model/data/detector/weights.safetensors"):
        assert expected in artifacts, expected
    assert not [p for p in artifacts if p.endswith((".pkl", ".pickle")) or "pickle" in p], artifacts

    tags = version.tags
    assert tags["model_type"] == "ae" and tags["score_type"] == "recon"
    assert float(tags["auroc"]) == pytest.approx(metrics["auroc"], rel=1e-5)
    assert float(tags["threshold"]) == pytest.approx(metrics["threshold"], rel=1e-5)
    assert len(tags["anomaly_ae.manifest_sha256"]) == 64 and "weights.safetensors" in json.loads(tags["anomaly_ae.manifest"])
    assert "AUROC" in version.description and "2000 normal rows" in version.description


def test_train_needs_a_destination_and_complete_eval_options(data):
    assert "say where the model goes: --out DIR" in one_line_error(cli("train", data["normal"], "--drop-cols", DROP))
    missing_label = cli("train", data["normal"], "--drop-cols", DROP, "--register", "x", "--eval", data["eval"])
    assert "--eval DATA --label-col COL go together" in one_line_error(missing_label)


# ---------------------------------------------------------------------- the registered model
def test_fresh_process_loads_by_alias_bit_identical_without_pickle(registered, mlflow_server, data, tmp_path):
    detector, run = registered
    result = cli("promote", NAME, "--version", run.registered.version, "--alias", "champion",
                 "--tracking-uri", mlflow_server)
    assert result.exit_code == 0, result.output
    data["X_eval"].to_parquet(tmp_path / "eval.parquet")
    script = textwrap.dedent(f"""
        import json, pickle, sys
        def refuse(*args, **kwargs):
            raise AssertionError("something tried to unpickle")
        pickle.load = pickle.loads = refuse
        class NoUnpickler:
            def __init__(self, *args, **kwargs):
                refuse()
        pickle.Unpickler = NoUnpickler
        import pandas as pd, mlflow.pyfunc
        from anomaly_ae import Detector, registry
        X = pd.read_parquet({str(tmp_path / 'eval.parquet')!r})
        Detector.load("models:/{NAME}@champion").score_frame(X).to_parquet({str(tmp_path / 'reloaded.parquet')!r})
        detector, ref = registry.load_model("models:/{NAME}@champion")
        detector.score_frame(X).to_parquet({str(tmp_path / 'load_model.parquet')!r})
        model = mlflow.pyfunc.load_model("models:/{NAME}@champion")
        model.predict(X).to_parquet({str(tmp_path / 'pyfunc.parquet')!r})
        print(json.dumps({{"version": ref.version, "alias": ref.alias, "run_id": ref.run_id}}))
    """)
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref = json.loads(proc.stdout.strip().splitlines()[-1])
    assert ref == {"version": run.registered.version, "alias": "champion", "run_id": run.run_id}

    expected = detector.score_frame(data["X_eval"])
    assert list(expected.columns[:4]) == ["score", "p_value", "is_anomaly", "severity"]
    for name in ("reloaded", "load_model", "pyfunc"):
        _exact(expected, pd.read_parquet(tmp_path / f"{name}.parquet"))


def test_registered_artifacts_are_data_only(registered, mlflow_server, tmp_path):
    import yaml

    _, run = registered
    model_dir = registry.download_model(f"models:/{NAME}/{run.registered.version}", tmp_path, tracking_uri=mlflow_server)
    local = model_dir.parent.parent  # the pyfunc model: <local>/data/detector is the saved model
    assert model_dir == local / "data" / "detector"
    names = sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file())
    assert names == sorted(["MLmodel", "conda.yaml", "python_env.yaml", "requirements.txt", "input_example.json",
                            "serving_input_example.json", *(f"data/detector/{f}" for f in (
                                "config.json", "schema.json", "preprocess.json", "calibration.json",
                                "weights.safetensors", MANIFEST))]), names
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    assert flavor["loader_module"] == "anomaly_ae.registry.pyfunc" and flavor["data"] == "data/detector"
    assert "python_model" not in flavor and "cloudpickle_version" not in flavor
    assert (local / "requirements.txt").read_text().splitlines()[0] == "anomaly-ae==0.1.0"


def test_models_list_shows_versions_aliases_and_metrics(registered, mlflow_server):
    _, run = registered
    registry.promote(NAME, run.registered.version, "champion", tracking_uri=mlflow_server)
    result = cli("models", "list", NAME, "--tracking-uri", mlflow_server)
    assert result.exit_code == 0, result.output
    row = next(ln for ln in result.output.splitlines() if ln.strip("│┃ ").startswith(run.registered.version + " "))
    assert "@champion" in row and "ae" in row and "recon" in row and run.run_id[:12] in row
    assert f"{run.metrics['auroc']:.6g}"[:5] in row
    assert "AUROC" in result.output and "threshold" in result.output


def test_promotion_gate_refuses_a_worse_challenger(registered, mlflow_server, data):
    detector, run = registered
    good = run.registered.version
    bad = registry.log_training_run(_noise_detector(data["X"]), data["X"], experiment="registry-tests", register=NAME,
                                    tracking_uri=mlflow_server).registered.version
    gate = ["--require-better-than", "champion", "--metric", "auroc", "--eval", data["eval"], "--label-col",
            "is_anomaly", "--drop-cols", "anomaly_kind", "--tracking-uri", mlflow_server]

    assert cli("promote", NAME, "--version", bad, "--alias", "champion", "--tracking-uri", mlflow_server).exit_code == 0
    passed = cli("promote", NAME, "--version", good, "--alias", "champion", *gate)  # better than the bad champion
    assert passed.exit_code == 0, passed.output
    assert f"@champion -> {NAME} v{good} (was v{bad}); auroc" in passed.output

    refused = one_line_error(cli("promote", NAME, "--version", bad, "--alias", "champion", *gate))
    assert f"refusing to promote {NAME} v{bad} to @champion" in refused and "worse than" in refused
    assert registry.resolve_model(f"models:/{NAME}@champion", tracking_uri=mlflow_server).version == good

    with pytest.raises(RegistryError, match="needs labelled evaluation data"):
        registry.promote(NAME, bad, "champion", require_better_than="champion", tracking_uri=mlflow_server)

    # a misspelt baseline alias is refused (it would let any challenger through), a new one is a first promotion
    typo = [a if a != "champion" else "Champoin" for a in gate]
    refused = one_line_error(cli("promote", NAME, "--version", bad, "--alias", "champion", *typo))
    assert "no version holds @Champoin to compare with; did you mean @champion?" in refused
    assert registry.resolve_model(f"models:/{NAME}@champion", tracking_uri=mlflow_server).version == good
    # an empty baseline alias unlike any other would replace the champion unchecked
    other = [a if a != "champion" else "prod" for a in gate]
    refused = one_line_error(cli("promote", NAME, "--version", bad, "--alias", "champion", *other))
    assert f"no version holds @prod to compare with, while @champion holds v{good}" in refused
    assert registry.resolve_model(f"models:/{NAME}@champion", tracking_uri=mlflow_server).version == good
    # the gate's options without the gate, and versions that are no number
    refused = one_line_error(cli("promote", NAME, "--version", bad, "--alias", "champion", *gate[2:]))
    assert "--eval, --label-col, --drop-cols set the gate of --require-better-than ALIAS" in refused, refused
    assert "--version takes a version number such as 3, got 'latest'" in one_line_error(
        cli("promote", NAME, "--version", "latest", "--alias", "canary", "--tracking-uri", mlflow_server))
    padded = cli("promote", NAME, "--version", f"0{good}", "--alias", "champion", "--tracking-uri", mlflow_server)
    assert padded.exit_code == 0 and f"{NAME} v{good}" in padded.output and f"v0{good}" not in padded.output
    first = [a if a != "champion" else "canary" for a in gate]
    # a first promotion still scores the challenger on the gate's data: data it cannot score is refused
    missing_a_column = pd.read_csv(data["eval"]).drop(columns=["cpu_util_pct"])
    unfit = [a if a != data["eval"] else data["eval"].with_name("unfit.csv") for a in first]
    missing_a_column.to_csv(data["eval"].with_name("unfit.csv"), index=False)
    refused = one_line_error(cli("promote", NAME, "--version", bad, "--alias", "canary", *unfit))
    assert f"refusing to promote {NAME} v{bad} to @canary: v{bad} cannot score" in refused
    assert "missing column(s): cpu_util_pct" in refused and "@canary still points to no version" in refused
    passed = cli("promote", NAME, "--version", bad, "--alias", "canary", *first)
    assert passed.exit_code == 0 and "no version holds @canary yet" in passed.output, passed.output
    assert f"@canary -> {NAME} v{bad}; auroc 0." in passed.output


def test_resolve_model_refs(registered, mlflow_server, monkeypatch, tmp_path):
    detector, run = registered
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    v = run.registered.version
    registry.promote(NAME, v, "champion")
    assert registry.resolve_model(f"models:/{NAME}@champion") == registry.ModelRef(
        f"models:/{NAME}@champion", NAME, v, "champion", run.run_id)
    assert registry.resolve_model(f"models:/{NAME}/{v}") == registry.ModelRef(f"models:/{NAME}/{v}", NAME, v, None,
                                                                               run.run_id)
    assert registry.resolve_model(run.model_uri).run_id == run.run_id
    newest = max(int(v.version) for v in registry.list_versions(NAME))
    assert registry.resolve_model(f"models:/{NAME}/latest").version == str(newest)
    path = detector.save(tmp_path / "local-model")
    ref = registry.resolve_model(str(path))
    assert (ref.name, ref.alias, ref.run_id) == ("local-model", None, None)
    assert ref.version == sha256((path / MANIFEST).read_bytes())[:12]
    X = make_telemetry(200, 0.1, seed=5).drop(columns=list(LABEL_COLUMNS))
    _exact(detector.score_frame(X), Detector.load(run.model_uri).score_frame(X))  # runs:/RUN_ID/model


def test_a_run_without_its_manifest_hash_and_bare_artifact_uris_are_not_loaded(mlflow_server, data, monkeypatch):
    """runs:/ was loaded unverified when its run had lost the manifest tag (anyone who can write the
    artifacts could then swap the files), and an mlflow-artifacts:/ URI had no hash to check at all."""
    from mlflow import MlflowClient

    from anomaly_ae.registry.store import MANIFEST_TAG

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    run = registry.log_training_run(Detector(model="pca").fit(data["X"]), data["X"], experiment="registry-tests")
    assert Detector.load(run.model_uri).threshold_ > 0
    client = MlflowClient(mlflow_server)
    artifacts = client.get_run(run.run_id).info.artifact_uri
    client.delete_tag(run.run_id, MANIFEST_TAG)
    with pytest.raises(ModelLoadError, match=f"has no {MANIFEST_TAG} tag, so its files cannot be verified: it was "
                                             "not logged by anomaly_ae"):
        Detector.load(run.model_uri)
    with pytest.raises(ModelLoadError, match="names artifacts without a registered version or run"):
        Detector.load(f"{artifacts}/model")


# ---------------------------------------------------------------------- bad cases: clear errors, no traceback
def test_unknown_model_version_or_alias(registered, mlflow_server, monkeypatch, data, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    with pytest.raises(ModelLoadError, match="no registered model named 'nope'"):
        Detector.load("models:/nope@champion")
    with pytest.raises(ModelLoadError, match=f"model '{NAME}' has no alias @ghost"):
        registry.resolve_model(f"models:/{NAME}@ghost")
    with pytest.raises(ModelLoadError, match=f"model '{NAME}' has no version 999"):
        registry.load_model(f"models:/{NAME}/999")
    with pytest.raises(ModelLoadError, match="cannot parse model URI"):
        registry.resolve_model(f"models:/{NAME}")
    out = one_line_error(cli("score", f"models:/{NAME}@ghost", data["eval"], "-o", tmp_path / "s.csv"))
    assert "has no alias @ghost" in out
    # what a registry URI named when it was scored (an alias moves): it said only how many rows were flagged
    scored = cli("score", f"models:/{NAME}/1", data["eval"], "-o", tmp_path / "s.csv", "--keep-cols", DROP)
    assert scored.exit_code == 0 and f"scoring with models:/{NAME}/1\n" in scored.output, scored.output
    assert "no registered model named 'nope'" in one_line_error(cli("promote", "nope", "--version", "1"))
    assert "has no version 999" in one_line_error(cli("promote", NAME, "--version", "999"))
    assert "no registered model named 'nope'" in one_line_error(cli("models", "list", "nope"))


def test_unreachable_server_fails_fast(data, monkeypatch):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    start = time.monotonic()
    with pytest.raises(RegistryUnavailableError, match=f"cannot reach the MLflow tracking server at {dead}"):
        registry.resolve_model("models:/x@champion", tracking_uri=dead)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead)
    with pytest.raises(ModelLoadError, match="connection refused"):  # RegistryUnavailableError is a ModelLoadError
        Detector.load("models:/x/1")
    out = one_line_error(cli("train", data["normal"], "--drop-cols", DROP, "--register", "x", "--no-progress"))
    assert "cannot reach the MLflow tracking server" in out
    assert time.monotonic() - start < 30


def test_tracking_uri_passwords_are_never_repeated_and_unknown_schemes_are_one_line(data):
    dead = f"http://alice:TopSecret77@127.0.0.1:{free_port()}"
    with pytest.raises(RegistryUnavailableError, match="http://alice:\\*\\*\\*@127.0.0.1") as caught:
        registry.resolve_model("models:/x@champion", tracking_uri=dead)
    assert "TopSecret77" not in str(caught.value)
    # MLflow's own error, which names the URI as given, is not chained: a printed traceback repeated it
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    out = one_line_error(cli("models", "list", "x", "--tracking-uri", dead))
    assert "TopSecret77" not in out and "alice:***@" in out
    for secret, shown in ((f"http://TopSecret77@127.0.0.1:{free_port()}", "http://***@127.0.0.1"),  # a token user
                          (f"http://127.0.0.1:{free_port()}/?token=TopSecret77", "?token=***"),
                          # a raw @ or / in the password: masked to the last @, not to the first
                          (f"http://alice:Top@Secret77@127.0.0.1:{free_port()}", "alice:***@127.0.0.1"),
                          (f"http://alice:Top/Secret77@127.0.0.1:{free_port()}", "alice:***@127.0.0.1"),
                          (f"http://Top/Secret77@127.0.0.1:{free_port()}", "http://***@127.0.0.1"),
                          # a quote, legal in a URI's userinfo, ended the pattern: the password was printed
                          (f"http://alice:Top'Secret77@127.0.0.1:{free_port()}", "alice:***@127.0.0.1")):
        out = one_line_error(cli("models", "list", "x", "--tracking-uri", secret))
        assert "Secret77" not in out and shown in out, out
    for uri in ("ftp://x", "notaurl"):
        assert "cannot use" in one_line_error(cli("models", "list", "x", "--tracking-uri", uri))


@pytest.mark.parametrize("status, advice", [(401, "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"),
                                            (404, "there is no MLflow API at this address")])
def test_a_server_that_answers_no_is_not_called_unreachable(status, advice):
    """A wrong password (401) or path (404) read as "cannot reach the server ... check that it is running",
    a transient error that callers retry."""
    import http.server
    import threading

    class No(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"no")

        do_POST = do_GET

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), No)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        uri = f"http://alice:TopSecret77@127.0.0.1:{server.server_address[1]}"
        with pytest.raises((RegistryError, ModelLoadError)) as caught:  # ModelLoadError: resolving to load
            registry.resolve_model("models:/x@champion", tracking_uri=uri)
    finally:
        server.shutdown()
        server.server_close()
    assert not isinstance(caught.value, RegistryUnavailableError)
    text = str(caught.value)
    assert f"error code {status}" in text and advice in text and "TopSecret77" not in text, text


def test_a_run_is_marked_failed_after_a_dropped_connection_with_one_short_try():
    """A RegistryUnavailableError (a proxy dropping one connection, the server fine a second later) left the
    run RUNNING forever: no attempt was made to end it."""
    from anomaly_ae.registry.connection import TrackingTarget
    from anomaly_ae.registry.tracking import run_lifecycle

    calls = []

    class Client:
        def set_terminated(self, run_id, status):
            calls.append((run_id, status, os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT"),
                          os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES")))

    with pytest.raises(RegistryUnavailableError):
        with run_lifecycle(Client(), TrackingTarget(uri="http://127.0.0.1:1"), "r1"):
            raise RegistryUnavailableError("connection dropped")
    assert calls == [("r1", "FAILED", "2", "0")]


def test_an_explicit_sqlite_store_keeps_its_artifacts_beside_it_and_errors_keep_their_cause(tmp_path):
    """sqlite:///PATH put artifacts in ./mlruns of whichever directory a command ran in; an MLflow message
    whose first line ends with ":" lost the line that says what failed."""
    from anomaly_ae.registry.connection import _first_line, tracking_target

    target = tracking_target(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}", create=True)
    assert target.artifact_location == (tmp_path / "store" / "mlartifacts").as_uri()
    assert target.describe().startswith("MLflow store sqlite:///")
    assert tracking_target("http://127.0.0.1:5000").artifact_location is None
    text = "The following failures occurred while downloading one or more artifacts from file:///x:\n" \
           "No such artifact: 'model'"
    assert _first_line(text) == "The following failures occurred while downloading one or more artifacts " \
                                "from file:///x: No such artifact: 'model'"


@pytest.mark.parametrize("name", ["a@b", "a/b", "a'b", " ", "a:b", ".."])
def test_a_name_models_uris_cannot_hold_is_refused_before_training(data, name):
    out = one_line_error(cli("train", data["normal"], "--drop-cols", DROP, "--register", name, "--no-progress"))
    assert "cannot register a model named" in out


def test_registry_calls_with_the_same_bounds_run_at_once_and_other_bounds_wait():
    """One process-wide lock held for a whole call: a slow download held up every resolve in the process
    (17.5 s behind a hung server). Equal bounds now share; other bounds wait for them, with their own values."""
    import threading

    from anomaly_ae.registry.connection import DEFAULT_BOUNDS, _applied, bounded

    short = dataclasses.replace(DEFAULT_BOUNDS, timeout_s=2.0, max_retries=0)
    held, release, seen = threading.Event(), threading.Event(), {}

    def slow():
        with bounded(DEFAULT_BOUNDS):
            held.set()
            release.wait(30)

    def other():
        with bounded(short):
            seen["short"] = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES")

    first = threading.Thread(target=slow)
    first.start()
    assert held.wait(30)
    with bounded(DEFAULT_BOUNDS):  # the same bounds: not held up by the slow block
        seen["same"] = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    waiting = threading.Thread(target=other)
    waiting.start()
    deadline = time.monotonic() + 30
    while len(_applied["queue"]) != 1:  # other bounds wait while the slow block runs
        assert time.monotonic() < deadline, "the call with other bounds never waited"
        time.sleep(0.01)
    assert "short" not in seen
    release.set()
    first.join(30)
    waiting.join(30)
    assert seen == {"same": str(DEFAULT_BOUNDS.max_retries), "short": "0"}


def test_a_registry_call_with_other_bounds_is_not_starved_by_a_stream_of_equal_ones():
    import threading

    from anomaly_ae.registry.connection import DEFAULT_BOUNDS, bounded

    short = dataclasses.replace(DEFAULT_BOUNDS, timeout_s=2.0, max_retries=0)
    done, entered = threading.Event(), threading.Event()

    def stream():  # overlapping blocks with the default bounds until the other call got in
        while not done.is_set():
            with bounded(DEFAULT_BOUNDS):
                done.wait(0.1)

    def other():
        with bounded(short):
            entered.set()

    threads = [threading.Thread(target=stream) for _ in range(3)]
    for thread in threads:
        thread.start()
    waiter = threading.Thread(target=other)
    waiter.start()
    got_in = entered.wait(10)  # it waited for the stream for as long as the stream ran
    done.set()
    for thread in [*threads, waiter]:
        thread.join(30)
    assert got_in


def test_hung_server_fails_within_bounded_time():
    """A server that accepts connections but never answers: bounded by the HTTP timeout and retries."""
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)  # the kernel completes the handshakes; nobody ever reads or answers
        uri = f"http://127.0.0.1:{hung.getsockname()[1]}"
        start = time.monotonic()
        with pytest.raises(RegistryUnavailableError, match="no answer in time"):
            registry.resolve_model("models:/x@champion", tracking_uri=uri)
        assert time.monotonic() - start < 30


def _register_dir(detector: Detector, X: pd.DataFrame, model_dir: Path, name: str, uri: str):
    return registry.log_training_run(detector, X, experiment="registry-tests", register=name, tracking_uri=uri,
                                     model_dir=model_dir)


def test_tampered_artifacts_are_refused(registered, mlflow_server_info, data, tmp_path, monkeypatch):
    detector, _ = registered
    uri = mlflow_server_info.uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    run = _register_dir(detector, data["X"], detector.save(tmp_path / "m"), "tamper-test", uri)
    stored = next(p for p in mlflow_server_info.artifacts.rglob("weights.safetensors") if run.run_id in str(p))
    folder = stored.parent
    registry.load_model("models:/tamper-test/1")  # intact: loads

    # the pyfunc wrapper mlflow's own loaders read: edited (its loader module could be another) or removed
    mlmodel = next(p for p in mlflow_server_info.artifacts.rglob("MLmodel") if run.run_id in str(p))
    wrapper = mlmodel.read_bytes()
    mlmodel.write_bytes(wrapper.replace(b"anomaly_ae.registry.pyfunc", b"somebody.else"))
    with pytest.raises(ModelLoadError, match="MLmodel does not match the SHA-256 recorded"):
        registry.load_model("models:/tamper-test/1")
    mlmodel.unlink()
    with pytest.raises(registry.PromotionRefused, match="has no MLmodel file"):
        registry.promote("tamper-test", "1", "champion")
    mlmodel.write_bytes(wrapper)
    registry.load_model("models:/tamper-test/1")
    # what `mlflow models serve` installs: requirements.txt was not checked
    requirements = mlmodel.parent / "requirements.txt"
    listed = requirements.read_bytes()
    requirements.write_bytes(listed + b"somebody-elses-package\n")
    with pytest.raises(ModelLoadError, match="the pyfunc wrapper's files .* do not match the SHA-256 recorded"):
        registry.load_model("models:/tamper-test/1")
    requirements.write_bytes(listed)
    registry.load_model("models:/tamper-test/1")

    original = stored.read_bytes()
    stored.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # one flipped bit
    with pytest.raises(ModelLoadError, match="does not match its SHA-256 in the manifest") as caught:
        Detector.load("models:/tamper-test/1")
    # named by its URI, not by the temporary folder it was downloaded to (gone by then)
    assert str(caught.value).startswith("models:/tamper-test/1/weights.safetensors does not match")
    with pytest.raises(ModelLoadError, match="^models:/tamper-test/1/weights.safetensors does not match"):
        registry.load_model("models:/tamper-test/1")  # the service's and the watcher's way in

    # Swap the file *and* rewrite the manifest to match: only the hash recorded in the registry catches it.
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["files"]["weights.safetensors"]["sha256"] = sha256(stored.read_bytes())
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    with pytest.raises(ModelLoadError, match="modified after registration"):
        registry.load_model("models:/tamper-test/1")
    out = one_line_error(cli("score", "models:/tamper-test/1", data["eval"], "-o", tmp_path / "s.csv"))
    assert "modified after registration" in out

    # promote downloads and verifies the version before it moves an alias: with or without the gate
    with pytest.raises(registry.PromotionRefused, match="cannot be loaded .*modified after registration"):
        registry.promote("tamper-test", "1", "champion", tracking_uri=uri)
    gate = ["--require-better-than", "champion", "--eval", data["eval"], "--label-col", "is_anomaly",
            "--drop-cols", "anomaly_kind"]
    for extra in ([], gate):
        out = one_line_error(cli("promote", "tamper-test", "--version", "1", "--alias", "champion",
                                 "--tracking-uri", uri, *extra))
        assert "refusing to promote tamper-test v1 to @champion: it cannot be loaded" in out, out
        assert "manifest.json" in out and "modified after registration" in out, out
        assert "@champion still points to no version" in out, out
        assert "anomaly_ae-load-" not in out  # the download folder is not shown
    with pytest.raises(ModelLoadError, match="has no alias @champion"):
        registry.resolve_model("models:/tamper-test@champion", tracking_uri=uri)


def test_a_saved_model_that_cannot_load_is_not_logged(registered, mlflow_server, data, tmp_path):
    detector, _ = registered
    path = detector.save(tmp_path / "m")
    weights = path / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ModelLoadError, match="refusing to log the model in m: it cannot be loaded .*SHA-256"):
        _register_dir(detector, data["X"], path, "never-registered", mlflow_server)
    with pytest.raises(ModelLoadError, match="no registered model named 'never-registered'"):
        registry.resolve_model("models:/never-registered/1", tracking_uri=mlflow_server)


def test_a_saved_model_that_is_not_the_detector_as_it_is_now_is_not_logged(registered, mlflow_server, data,
                                                                           tmp_path):
    """Saved, then recalibrated: the version's files were the saved model, its threshold tag the new one."""
    detector, _ = registered
    path = detector.save(tmp_path / "m")
    changed = Detector.load(path).recalibrate(data["X"], target_fpr=0.2)
    with pytest.raises(RegistryError, match="the model saved in m is not the detector as it is now"):
        _register_dir(changed, data["X"], path, "never-registered", mlflow_server)


def test_a_model_saved_by_an_earlier_release_is_still_the_detectors_save(tmp_path):
    """The versions of torch and anomaly_ae that wrote config.json are not part of what the model is."""
    from anomaly_ae.persistence import FILES, manifest_bytes
    from anomaly_ae.registry.tracking import _check_saved_from

    detector = Detector(model="pca").fit(make_telemetry(300, seed=1).drop(columns=list(LABEL_COLUMNS)))
    path = detector.save(tmp_path / "old")
    config = json.loads((path / "config.json").read_text())
    config.update(torch_version="2.0.0", anomaly_ae_version="0.1.0")
    (path / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True))
    (path / MANIFEST).write_bytes(manifest_bytes({name: (path / name).read_bytes() for name in FILES}))
    _check_saved_from(Detector.load(path), path)
    detector.recalibrate(make_telemetry(300, seed=2).drop(columns=list(LABEL_COLUMNS)), target_fpr=0.2)
    with pytest.raises(RegistryError, match="is not the detector as it is now"):
        _check_saved_from(detector, path)


def test_model_from_an_incompatible_format_version_is_refused(registered, mlflow_server, data, tmp_path, monkeypatch):
    detector, _ = registered
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    path = detector.save(tmp_path / "future")
    config = json.loads((path / "config.json").read_text())
    config.update(format_version=2, anomaly_ae_version="9.0.0")
    (path / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True))
    manifest = json.loads((path / MANIFEST).read_text())
    manifest.update(format_version=2, anomaly_ae_version="9.0.0")
    data_bytes = (path / "config.json").read_bytes()
    manifest["files"]["config.json"] = {"sha256": sha256(data_bytes), "bytes": len(data_bytes)}
    (path / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    with pytest.raises(ModelLoadError, match=r"refusing to log .*format 2"):
        _register_dir(detector, data["X"], path, "future-format", mlflow_server)
    # a newer anomaly_ae would register it (it can load it): simulate that one
    from anomaly_ae.registry import tracking

    monkeypatch.setattr(tracking, "_check_loads", lambda model_dir: None)
    monkeypatch.setattr(tracking, "_check_saved_from", lambda detector, model_dir: None)
    _register_dir(detector, data["X"], path, "future-format", mlflow_server)
    monkeypatch.undo()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)

    with pytest.raises(ModelLoadError, match=r"detector format 2 by anomaly_ae 9\.0\.0; this is anomaly_ae"):
        Detector.load("models:/future-format/1")
    out = one_line_error(cli("score", "models:/future-format/1", data["eval"], "-o", tmp_path / "s.csv"))
    assert "format 2" in out and "retrain" in out


# ---------------------------------------------------------------------- the embedded default
def test_embedded_default_store_in_the_working_directory(data, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match="no MLflow tracking server is configured"):
        registry.resolve_model("models:/embedded@champion")  # loading never creates an empty store
    assert not (tmp_path / "mlflow.db").exists()

    result = cli("train", data["normal"], "--drop-cols", DROP, "--model", "ae", "--epochs", 20, "--no-progress",
                 "--register", "embedded", "--out", tmp_path / "model")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "mlflow.db").is_file() and (tmp_path / "mlartifacts").is_dir()
    assert f"embedded MLflow store {tmp_path / 'mlflow.db'}" in " ".join(result.output.split())
    assert "registered models:/embedded/1" in result.output
    assert list((tmp_path / "mlartifacts" / "anomaly-ae").rglob("weights.safetensors"))

    assert cli("promote", "embedded", "--version", "1").exit_code == 0
    detector, ref = registry.load_model("models:/embedded@champion")
    assert (ref.name, ref.version, ref.alias) == ("embedded", "1", "champion")
    _exact(Detector.load(tmp_path / "model").score_frame(data["X_eval"]), detector.score_frame(data["X_eval"]))


def test_image_detector_round_trips_through_the_pyfunc(mlflow_server, monkeypatch):
    import mlflow.pyfunc

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    images = np.random.default_rng(0).random((300, 8, 8)).astype(np.float32)
    detector = Detector(model="ae", epochs=3, random_state=0).fit(images)
    run = registry.log_training_run(detector, images, experiment="registry-tests", register="images")
    batch = images[:16, None]  # (N, C, H, W), as the tensor signature declares
    scored = mlflow.pyfunc.load_model(run.registered.pinned_uri).predict(batch)
    _exact(detector.score_frame(batch), scored)


# ---------------------------------------------------------------------- mlflow models serve
def test_mlflow_models_serve_scores_like_the_detector(registered, mlflow_server, data, tmp_path):
    detector, run = registered
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    with open(tmp_path / "serve.log", "wb") as log:
        proc = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m",
                                 f"models:/{NAME}/{run.registered.version}", "--env-manager", "local", "-h",
                                 "127.0.0.1", "-p", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        rows = data["X_eval"].head(20)
        body = json.dumps({"dataframe_split": json.loads(rows.to_json(orient="split", index=False)),
                           "params": {"top_k": 2}}).encode()
        deadline = time.monotonic() + 180
        while True:
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                                 headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=10) as response:
                    predictions = pd.DataFrame(json.loads(response.read())["predictions"])
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail((tmp_path / "serve.log").read_text(errors="replace")[-3000:])
                time.sleep(1)
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
    expected = detector.score_frame(rows, top_k=2)
    assert list(predictions.columns) == list(expected.columns)
    assert np.array_equal(predictions["score"].to_numpy(), expected["score"].to_numpy())
    assert predictions["feature_1"].tolist() == expected["feature_1"].tolist()


# ---------------------------------------------------------------------- generators
GENERATOR = "telemetry-generator"


@pytest.fixture(scope="module")
def registered_generator(mlflow_server, data):
    from anomaly_ae import Generator

    gen = Generator("cvae", condition_cols=["mode"], epochs=20, random_state=0).fit(data["X"])
    return gen, registry.log_generator_run(gen, data["X"], register=GENERATOR, tracking_uri=mlflow_server,
                                           data_path=data["normal"])


def test_generator_run_logs_quality_curves_and_files(registered_generator, mlflow_server, data):
    from mlflow import MlflowClient

    gen, run = registered_generator
    client = MlflowClient(mlflow_server, mlflow_server)
    logged = client.get_run(run.run_id)
    assert logged.info.status == "FINISHED" and logged.data.tags["anomaly_ae.kind"] == "generator"
    metrics, params = logged.data.metrics, logged.data.params
    for key in ("c2st_auc", "precision", "recall", "coverage", "ks_mean", "min_condition_coverage",
                "quality_floor_failures", "training_seconds", "condition_coverage.maintenance"):
        assert key in metrics, key
    assert metrics["c2st_auc"] == pytest.approx(gen.quality_["c2st_auc"])
    assert params["model"] == "cvae" and params["condition_columns"] == '["mode"]'
    assert params["data_sha256"] == registry.data_fingerprint(data["X"])["sha256"]
    curve = client.get_metric_history(run.run_id, "val_loss")
    assert len(curve) == len(gen.history_.val_loss) > 1
    artifacts = {a.path for a in client.list_artifacts(run.run_id, "generator")}
    assert {"generator/manifest.json", "generator/weights.safetensors", "generator/quality.json"} <= artifacts
    assert "samples/sample.csv" in {a.path for a in client.list_artifacts(run.run_id, "samples")}

    version = client.get_model_version(GENERATOR, run.registered.version)
    assert version.tags["anomaly_ae.kind"] == "generator" and version.tags["model_type"] == "cvae"
    assert float(version.tags["c2st_auc"]) == pytest.approx(metrics["c2st_auc"], rel=1e-3)
    assert "conditioned on mode" in version.description


def test_generator_loads_by_alias_and_samples_identically(registered_generator, mlflow_server, monkeypatch):
    from anomaly_ae import Generator

    gen, run = registered_generator
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    registry.promote(GENERATOR, run.registered.version)
    loaded = Generator.load(f"models:/{GENERATOR}@champion")
    assert loaded.fingerprint_ == gen.fingerprint_
    pd.testing.assert_frame_equal(loaded.sample(50, condition={"mode": "night"}, random_state=3),
                                  gen.sample(50, condition={"mode": "night"}, random_state=3), check_exact=True)
    assert Generator.load(run.model_uri).fingerprint_ == gen.fingerprint_  # runs:/RUN/generator


def test_detectors_and_generators_are_never_confused(registered_generator, registered, mlflow_server, data,
                                                     monkeypatch):
    from anomaly_ae import Generator

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    _, run = registered_generator
    with pytest.raises(ModelLoadError, match="is a registered generator, not a detector; load it with Generator"):
        Detector.load(run.registered.pinned_uri)
    with pytest.raises(ModelLoadError, match="is a registered detector, not a generator"):
        Generator.load(f"models:/{NAME}/1")
    detector, _ = registered
    with pytest.raises(RegistryError, match=f"models:/{GENERATOR} holds generators"):
        registry.log_training_run(detector, data["X"], register=GENERATOR)
    with pytest.raises(RegistryError, match=f"{GENERATOR} holds generators, and --require-better-than compares "
                                            "detectors' scores"):  # not an AttributeError from scoring
        registry.promote(GENERATOR, run.registered.version, "gated", require_better_than="champion",
                         eval_data=data["eval"], label_col="is_anomaly")


def test_tampered_generator_is_refused(registered_generator, mlflow_server_info, monkeypatch):
    from anomaly_ae import Generator

    gen, _ = registered_generator
    uri = mlflow_server_info.uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    run = registry.log_generator_run(gen, register="tampered-generator")
    stored = next(p for p in mlflow_server_info.artifacts.rglob("weights.safetensors") if run.run_id in str(p))
    assert Generator.load("models:/tampered-generator/1").fingerprint_ == gen.fingerprint_
    original = stored.read_bytes()
    stored.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(ModelLoadError, match="does not match its SHA-256 in the manifest") as caught:
        Generator.load("models:/tampered-generator/1")
    assert str(caught.value).startswith("models:/tampered-generator/1/weights.safetensors does not match")
    manifest_path = stored.parent / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["weights.safetensors"]["sha256"] = sha256(stored.read_bytes())
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    with pytest.raises(ModelLoadError, match="modified after registration"):
        Generator.load("models:/tampered-generator/1")


def test_a_generator_is_refused_a_detectors_name_before_it_trains(registered, mlflow_server, data):
    started = time.monotonic()  # 10,000 epochs: refused after training, this would take many minutes
    refused = one_line_error(cli("generate", "train", data["normal"], "--drop-cols", DROP, "--epochs", 10_000,
                                 "--no-progress", "--register", NAME, "--tracking-uri", mlflow_server))
    assert f"models:/{NAME} holds detectors; register this generator under another name" in refused
    assert time.monotonic() - started < 60


def test_cli_registers_a_generator_and_augments_training_from_the_registry(mlflow_server, data, tmp_path):
    result = cli("generate", "train", data["normal"], "--drop-cols", DROP, "--condition-col", "mode",
                 "--epochs", 20, "--no-progress", "--register", "cli-generator", "--tracking-uri", mlflow_server)
    assert result.exit_code == 0, result.output
    assert "registered models:/cli-generator/1" in result.output
    env = {"MLFLOW_TRACKING_URI": mlflow_server}
    assert runner.invoke(app, ["promote", "cli-generator", "--version", "1"], env=env).exit_code == 0

    listing = runner.invoke(app, ["models", "list", "cli-generator"], env=env)
    assert listing.exit_code == 0 and "C2ST AUC" in listing.output and "@champion" in listing.output

    result = runner.invoke(app, ["generate", "sample", "models:/cli-generator@champion", "-n", 30, "--condition",
                                 "mode=batch", "-o", str(tmp_path / "rows.csv")], env=env)
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(tmp_path / "rows.csv")
    assert len(rows) == 30 and (rows["mode"] == "batch").all()

    result = runner.invoke(app, ["train", str(data["normal"]), "--drop-cols", DROP, "--model", "pca", "--out",
                                 str(tmp_path / "m"), "--augment", "models:/cli-generator@champion",
                                 "--augment-rows", 100, "--balance-col", "mode", "--no-progress"], env=env)
    assert result.exit_code == 0, result.output
    provenance = Detector.load(tmp_path / "m").training_metadata_["augmentation"]
    assert provenance["registered_name"] == "cli-generator" and provenance["registered_version"] == "1"
    assert provenance["rows_synthetic"] == 100 and provenance["source"] == "models:/cli-generator@champion"

    # a generator conditioned on something else cannot balance this column
    out = one_line_error(runner.invoke(app, ["train", str(data["normal"]), "--drop-cols", DROP, "--out",
                                             str(tmp_path / "m2"), "--augment", "models:/cli-generator/1",
                                             "--balance-col", "cpu_util_pct", "--no-progress"], env=env))
    assert "needs a generator conditioned on it" in out


def test_a_mistyped_sqlite_store_is_an_error_when_loading_and_nothing_is_created(tmp_path):
    """MLflow creates any sqlite:/// database it is pointed at: a read (load, promote, list) at a mistyped
    path made an empty registry there, then said no model is registered."""
    from anomaly_ae.registry.connection import tracking_target

    missing = tmp_path / "nowhere" / "mlflow.db"
    with pytest.raises(RegistryError, match=f"there is no MLflow database at {missing}"):
        tracking_target(f"sqlite:///{missing}")
    assert not missing.parent.exists()
    assert tracking_target(f"sqlite:///{missing}", create=True).uri == f"sqlite:///{missing}"  # training creates it


def test_a_registry_file_that_is_no_database_or_cannot_be_written_fails_before_training(data, tmp_path):
    (tmp_path / "notdb.db").write_text("hello\n")
    uri = f"sqlite:///{tmp_path / 'notdb.db'}"
    assert "is not an SQLite database" in one_line_error(cli("train", data["normal"], "--drop-cols", DROP, "--model",
                                                             "pca", "--register", "x", "--tracking-uri", uri))
    assert "cannot open the MLflow store" in one_line_error(cli("models", "list", "x", "--tracking-uri", uri))
    assert "needs the Python package" in one_line_error(cli("models", "list", "x", "--tracking-uri",
                                                            "postgresql://u:pw@127.0.0.1:1/x"))
    folder = tmp_path / "ro"
    folder.mkdir()
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    registry.check_connection(uri)  # creates the store
    # read-only for root too: the immutable flag, where the file system has it; else permissions, unless root
    locked = subprocess.run(["chattr", "+i", str(folder / "mlflow.db"), str(folder)],
                            capture_output=True).returncode == 0
    if not locked:
        (folder / "mlflow.db").chmod(0o444)
        folder.chmod(0o555)
        if os.access(folder / "mlflow.db", os.W_OK):
            pytest.skip("cannot make a file read-only here (root without chattr)")
    try:
        out = one_line_error(cli("train", data["normal"], "--drop-cols", DROP, "--model", "pca", "--register", "x",
                                 "--tracking-uri", uri, "--no-progress"))
        assert "cannot be used for writing" in out and "nothing was trained" in out and "trained pca" not in out
    finally:
        subprocess.run(["chattr", "-i", str(folder), str(folder / "mlflow.db")], capture_output=True)
        folder.chmod(0o755)


def test_a_pyfunc_checks_its_input_against_the_signature_before_the_detector_does(tmp_path, monkeypatch):
    """MLflow's own check, as the README says: its message quotes the input unless
    MLFLOW_DISABLE_SCHEMA_DETAILS is set, and it drops a column the signature does not name."""
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    from anomaly_ae.registry.pyfunc import save_pyfunc_model

    X = make_telemetry(600, 0.0, seed=1).drop(columns=list(LABEL_COLUMNS))
    detector = Detector(model="pca", random_state=0).fit(X)
    detector.save(tmp_path / "saved")
    model = mlflow.pyfunc.load_model(str(save_pyfunc_model(detector, tmp_path / "saved", tmp_path / "pyfunc", X)))
    missing = X.head(2).drop(columns=[X.columns[0]])
    with pytest.raises(MlflowException, match=f"missing inputs \\['{X.columns[0]}'\\]") as raised:
        model.predict(missing)
    assert str(raised.value).startswith(f"Failed to enforce schema of data '   {missing.columns[0]}")  # the input
    monkeypatch.setenv("MLFLOW_DISABLE_SCHEMA_DETAILS", "true")
    with pytest.raises(MlflowException, match="^Failed to enforce model input schema. Please check your input data.$"):
        model.predict(missing)
    scored = model.predict(X.head(2).assign(extra=1.0))
    pd.testing.assert_frame_equal(scored, detector.score_frame(X.head(2)))


def test_a_pyfunc_takes_an_integer_column_as_training_held_it(tmp_path):
    """The signature declared every numeric column double, and MLflow refuses int64 for a double: the
    training frame itself was refused. Integer columns are declared long, float ones double."""
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    from anomaly_ae.registry.pyfunc import save_pyfunc_model

    X = make_telemetry(600, 0.0, seed=1).drop(columns=list(LABEL_COLUMNS))
    X["requests"] = np.arange(len(X)) % 17 + 100  # int64
    detector = Detector(model="pca", random_state=0).fit(X)
    detector.save(tmp_path / "saved")
    model = mlflow.pyfunc.load_model(str(save_pyfunc_model(detector, tmp_path / "saved", tmp_path / "pyfunc", X)))
    types = {c.name: c.type.name for c in model.metadata.signature.inputs}
    assert types["requests"] == "long" and types["cpu_util_pct"] == "double"
    pd.testing.assert_frame_equal(model.predict(X.head(5)), detector.score_frame(X.head(5)))
    with pytest.raises(MlflowException, match="requests"):
        model.predict(X.head(5).astype({"requests": float}))
