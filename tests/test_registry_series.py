"""A SeriesDetector through MLflow, against the real `mlflow server` of tests/mlflow_server.py: tracked and
registered like a detector (kind tag, framing and alert statistics), its pyfunc scoring series frames,
the promotion gate scoring series evaluation data, and `models:/NAME@alias` loading a SeriesDetector.

Models are tiny: PCA over windows of 8 steps, 300 steps of 2 hosts.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from anomaly_ae import Detector, SeriesDetector, registry
from anomaly_ae.cli import app
from anomaly_ae.data.synthetic import LABEL_COLUMNS, make_telemetry
from anomaly_ae.data.synthetic_series import SERIES_LABEL_COLUMNS, make_series_telemetry
from anomaly_ae.exceptions import ModelLoadError, RegistryError

pytestmark = pytest.mark.slow

NAME = "series-detector"


@pytest.fixture(scope="module")
def data():
    history = make_series_telemetry(300, 2, seed=0, anomalies=False).drop(columns=list(SERIES_LABEL_COLUMNS))
    labelled = make_series_telemetry(1500, 2, seed=1)  # labelled temporal anomalies after the first 40%
    return {"X": history, "eval": labelled, "X_eval": labelled.drop(columns=list(SERIES_LABEL_COLUMNS)).head(400)}


@pytest.fixture(scope="module")
def registered(mlflow_server, data):
    detector = SeriesDetector("pca", window=8, time_col="ts", series_col="host", random_state=0).fit(data["X"])
    run = registry.log_training_run(detector, data["X"], experiment="series-registry-tests", register=NAME,
                                    tracking_uri=mlflow_server, eval_data=data["eval"], label_col="is_anomaly",
                                    drop_cols=["anomaly_kind"])
    return detector, run


def _noise_detector(X: pd.DataFrame) -> SeriesDetector:
    """The same columns and time grid, metrics drawn at random: a valid series model that detects poorly."""
    rng = np.random.default_rng(0)
    noise = X.copy()
    for column in X.columns.drop(["ts", "host"]):
        noise[column] = rng.uniform(0, X[column].max(), len(X))
    return SeriesDetector("pca", window=8, time_col="ts", series_col="host", random_state=0).fit(noise)


def test_tracked_and_registered_as_a_series_model(registered, mlflow_server):
    detector, run = registered
    from mlflow import MlflowClient

    c = MlflowClient(mlflow_server)
    logged = c.get_run(run.run_id).data
    assert logged.tags["anomaly_ae.kind"] == "series"
    params = logged.params
    assert (params["window"], params["time_col"], params["series_col"]) == ("8", "ts", "host")
    assert (params["window_steps"], params["step_seconds"], params["n_series"]) == ("8", "300.0", "2")
    assert (params["alert_min_steps"], params["alert_within"], params["alert_cooldown"]) == ("3", "5", "12")
    stats = detector.alert_stats_
    assert logged.metrics["holdout_steps"] == stats["held_out_steps"]
    assert logged.metrics["holdout_alerts"] == stats["alerts"]
    assert logged.metrics["holdout_alerts_per_day"] == pytest.approx(stats["alerts_per_day"])
    assert 0.5 < logged.metrics["auroc"] <= 1.0  # scored on the labelled series, time and host kept
    version = c.get_model_version(NAME, run.registered.version)
    assert version.tags["anomaly_ae.kind"] == "series"
    assert (version.tags["window"], version.tags["time_col"], version.tags["series_col"]) == ("8", "ts", "host")
    assert "window of 8 steps" in version.description and "2 series" in version.description
    assert c.get_registered_model(NAME).tags["anomaly_ae.kind"] == "series"
    local = c.download_artifacts(run.run_id, "data/series.json", dst_path=None)
    saved = json.loads(open(local).read())
    assert saved["framing"]["window"] == 8 and saved["alert_rule"]["cooldown"] == 12


def test_alias_loads_a_series_detector_and_the_pyfunc_scores_series_frames(registered, mlflow_server, data,
                                                                            monkeypatch):
    import mlflow.pyfunc

    detector, run = registered
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    registry.promote(NAME, run.registered.version, "champion")
    expected = detector.score_frame(data["X_eval"])
    assert "alert" in expected.columns

    loaded = Detector.load(f"models:/{NAME}@champion")
    assert type(loaded) is SeriesDetector and loaded.window_ == 8
    pd.testing.assert_frame_equal(loaded.score_frame(data["X_eval"]), expected, check_exact=True)
    via_registry, ref = registry.load_model(f"models:/{NAME}@champion")
    assert type(via_registry) is SeriesDetector and ref.version == run.registered.version
    assert type(SeriesDetector.load(run.model_uri)) is SeriesDetector  # runs:/RUN_ID/model

    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    inputs = [c.name for c in model.metadata.signature.inputs]
    assert inputs[:2] == ["ts", "host"]
    pd.testing.assert_frame_equal(model.predict(data["X_eval"]).reset_index(drop=True),
                                  expected.reset_index(drop=True), check_exact=True)
    two = model.predict(data["X_eval"], params={"top_k": 2})
    assert "feature_2" in two.columns and "feature_3" not in two.columns


def test_promotion_gate_scores_series_evaluation_data(registered, mlflow_server, data):
    _, run = registered
    good = run.registered.version
    bad = registry.log_training_run(_noise_detector(data["X"]), data["X"], experiment="series-registry-tests",
                                    register=NAME, tracking_uri=mlflow_server).registered.version
    gate = dict(require_better_than="champion", metric="auroc", eval_data=data["eval"], label_col="is_anomaly",
                drop_cols=["anomaly_kind"], tracking_uri=mlflow_server)
    registry.promote(NAME, bad, "champion", tracking_uri=mlflow_server)
    promoted = registry.promote(NAME, good, "champion", **gate)
    assert promoted.baseline_version == bad and promoted.score > promoted.baseline_score
    with pytest.raises(registry.PromotionRefused, match="worse than"):
        registry.promote(NAME, bad, "champion", **gate)
    assert registry.resolve_model(f"models:/{NAME}@champion", tracking_uri=mlflow_server).version == good


def test_one_registered_name_holds_one_kind(registered, mlflow_server):
    row = Detector("pca").fit(make_telemetry(300, seed=1).drop(columns=list(LABEL_COLUMNS)))
    with pytest.raises(RegistryError, match="holds series detectors; register this detector under another name") \
            as caught:
        registry.log_training_run(row, make_telemetry(300, seed=1).drop(columns=list(LABEL_COLUMNS)),
                                  experiment="series-registry-tests", register=NAME, tracking_uri=mlflow_server)
    # the run was logged before the registry refused: the message says where its model is, and it loads
    logged = re.search(r"the run is logged and its model is at (runs:/\w+/model)$", str(caught.value))
    assert logged is not None and registry.load_model(logged.group(1), tracking_uri=mlflow_server)[0].model == "pca"
    with pytest.raises(ModelLoadError, match="is a registered series detector, not a generator"):
        registry.download_model(f"models:/{NAME}/{registered[1].registered.version}", tracking_uri=mlflow_server,
                                kind="generator")


def test_the_cli_refuses_a_name_of_another_kind_before_training(registered, mlflow_server, tmp_path):
    target = registry.tracking_target(mlflow_server)
    registry.check_registrable(NAME, "series", target)
    registry.check_registrable("never-registered", "detector", target)
    with pytest.raises(RegistryError, match="holds series detectors"):
        registry.check_registrable(NAME, "detector", target)
    make_telemetry(300, seed=1).drop(columns=list(LABEL_COLUMNS)).to_csv(tmp_path / "rows.csv", index=False)
    result = CliRunner().invoke(app, ["train", str(tmp_path / "rows.csv"), "--model", "pca", "--register", NAME,
                                      "--experiment", "kind-refused", "--tracking-uri", mlflow_server,
                                      "--no-progress"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "holds series detectors; register this detector under another name" in result.output
    assert "trained" not in result.output and "run is logged" not in result.output  # refused before training
