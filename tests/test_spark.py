"""Spark batch scoring (anomaly_ae.spark) on PySpark local mode: results equal Detector.score_frame.

One local[2] session for the module (UI off, bound to 127.0.0.1); 3000 rows; a 20-epoch `ae` model.
Needs pyspark (`pip install -e '.[spark]'`) and Java 17+; skips only when Java is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from anomaly_ae import Detector
from anomaly_ae.data.synthetic import LABEL_COLUMNS, make_telemetry
from anomaly_ae.exceptions import DataError, SchemaError

pytestmark = pytest.mark.slow


def _java_available() -> bool:
    java = shutil.which("java") or (os.path.join(os.environ["JAVA_HOME"], "bin", "java")
                                     if os.environ.get("JAVA_HOME") else None)
    if not java:
        return False
    try:
        return subprocess.run([java, "-version"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


if not _java_available():
    pytest.skip("Spark needs a Java runtime (apt-get install default-jre-headless); none found",
                allow_module_level=True)

try:  # not importorskip: a missing pyspark is an install bug in CI, not a reason to skip
    import pyspark  # noqa: F401
except ImportError as exc:  # pragma: no cover
    raise ImportError("tests/test_spark.py needs pyspark: pip install -e '.[spark]'") from exc

from anomaly_ae.spark import output_columns, score_dataframe, score_parquet_with_spark  # noqa: E402


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession

    os.environ["PYSPARK_PYTHON"] = sys.executable  # workers must import this venv's packages
    os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"  # every Spark socket on loopback
    session = (SparkSession.builder.master("local[2]").appName("anomaly-ae-tests")
               .config("spark.ui.enabled", "false")
               .config("spark.ui.showConsoleProgress", "false")
               .config("spark.driver.host", "127.0.0.1")
               .config("spark.driver.bindAddress", "127.0.0.1")
               .config("spark.sql.shuffle.partitions", "2")
               .config("spark.default.parallelism", "2")
               .config("spark.sql.execution.arrow.maxRecordsPerBatch", "700")  # several batches per task
               .config("spark.executorEnv.OMP_NUM_THREADS", "1")
               .getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    X = make_telemetry(2000, seed=1).drop(columns=list(LABEL_COLUMNS))
    path = tmp_path_factory.mktemp("spark-model") / "model"
    Detector(model="ae", epochs=20, random_state=0).fit(X).save(path)
    return path


@pytest.fixture(scope="module")
def incoming():
    frame = make_telemetry(3000, 0.1, seed=2)
    frame.insert(0, "row_id", np.arange(len(frame), dtype=np.int64))
    return frame


def _one_rank(model_dir) -> float:
    """The p-value step: one calibration score more or less below a score."""
    return 1.0 / (len(Detector.load(model_dir).calibration_.reference_scores) + 1) + 1e-12


def _expected(model_dir, frame: pd.DataFrame, top_k: int = 3) -> pd.DataFrame:
    detector = Detector.load(model_dir)
    return detector.score_frame(frame[detector.schema_.names], top_k=top_k).reset_index(drop=True)


def _same(actual: pd.DataFrame, expected: pd.DataFrame, rtol: float = 1e-6, p_atol: float = 1e-12) -> None:
    """Identical columns, flags, severities, features and notes; floats equal to float32 round-off.

    Rows batched with different neighbours go through different BLAS blockings (~1e-6 relative);
    a score that close to a calibration score can then move its p-value by one rank (p_atol)."""
    assert list(actual.columns) == list(expected.columns)
    for column in expected.columns:
        a, e = actual[column].to_numpy(), expected[column].to_numpy()
        if column == "p_value":
            np.testing.assert_allclose(a.astype(float), e.astype(float), rtol=0, atol=p_atol, err_msg=column)
        elif column == "score" or column.startswith("contribution_"):
            np.testing.assert_allclose(a.astype(float), e.astype(float), rtol=rtol, atol=1e-9, err_msg=column)
        else:
            assert a.astype(str).tolist() == e.astype(str).tolist(), column


def test_parquet_scores_equal_single_process(spark, model_dir, incoming, tmp_path):
    source = tmp_path / "incoming"
    source.mkdir()
    for i, start in enumerate(range(0, len(incoming), 1000)):  # a dataset directory of several files
        incoming.iloc[start:start + 1000].to_parquet(source / f"part-{i}.parquet", index=False)
    out = tmp_path / "scored"

    summary = score_parquet_with_spark(str(model_dir), str(source), str(out), top_k=3, keep_cols=["row_id"],
                                       spark=spark)

    result = pd.read_parquet(out).sort_values("row_id").reset_index(drop=True)
    expected = _expected(model_dir, incoming)
    assert summary.rows == len(incoming) == len(result)
    assert summary.anomalies == int(expected["is_anomaly"].sum()) > 0
    assert result["row_id"].tolist() == incoming["row_id"].tolist()
    _same(result.drop(columns=["row_id"]), expected)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "staging directories left behind"

    # Running again replaces the output atomically; no staging or backup directories remain.
    again = score_parquet_with_spark(str(model_dir), str(source), str(out), top_k=0, keep_cols=[], spark=spark)
    assert again.rows == len(incoming)
    assert list(pd.read_parquet(out).columns) == ["score", "p_value", "is_anomaly", "severity", "notes"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["incoming", "scored"]


def test_dataframe_keeps_all_columns_and_renames_collisions(spark, model_dir, incoming):
    sdf = spark.createDataFrame(incoming).repartition(3)  # rows reach the scorer out of order

    scored = score_dataframe(sdf, str(model_dir), top_k=2)

    detector = Detector.load(model_dir)
    names = [n for n, _ in output_columns(detector, 2)]
    # every input column is passed through; the label 'is_anomaly' collides with an output column
    assert scored.columns == ["row_id", *detector.schema_.names, "input_is_anomaly", "anomaly_kind", *names]
    result = scored.toPandas().sort_values("row_id").reset_index(drop=True)
    assert result["input_is_anomaly"].tolist() == incoming["is_anomaly"].tolist()
    _same(result[names], _expected(model_dir, incoming, top_k=2), rtol=2e-5,
          p_atol=_one_rank(model_dir))


@pytest.mark.parametrize("top_k", [-1, 2.5, "3", True])
def test_a_top_k_that_score_frame_refuses_is_refused_on_the_driver(spark, model_dir, incoming, top_k):
    from anomaly_ae.exceptions import InvalidParameterError

    with pytest.raises(InvalidParameterError, match="top_k must be an integer >= 0"):
        score_dataframe(spark.createDataFrame(incoming.head(5)), str(model_dir), top_k=top_k)


def test_missing_column_refused_on_the_driver(spark, model_dir, incoming):
    sdf = spark.createDataFrame(incoming.drop(columns=["latency_ms"]))
    with pytest.raises(SchemaError, match="latency_ms"):
        score_dataframe(sdf, str(model_dir))


def test_bad_values_surface_as_the_package_error(spark, model_dir, incoming, tmp_path):
    bad = incoming.head(50).copy()
    bad.loc[7, "cpu_util_pct"] = np.nan  # training had no missing cpu values
    bad.to_parquet(tmp_path / "bad.parquet", index=False)
    with pytest.raises(SchemaError, match="cpu_util_pct") as refused:
        score_parquet_with_spark(str(model_dir), str(tmp_path / "bad.parquet"), str(tmp_path / "out"), spark=spark)
    # the row number counts within the executor's batch, and the message says so
    assert "Spark scored a batch of" in str(refused.value) and "not the input's" in str(refused.value)
    assert not (tmp_path / "out").exists()
    with pytest.raises(DataError, match="Parquet"):
        score_parquet_with_spark(str(model_dir), str(tmp_path / "x.csv"), str(tmp_path / "out"), spark=spark)


def test_registry_alias_is_pinned_and_scored(spark, model_dir, incoming, tmp_path, monkeypatch):
    """`models:/NAME@champion` from a local MLflow registry: the driver downloads the verified version."""
    pytest.importorskip("mlflow", reason="registry URIs need the MLflow extra")
    from anomaly_ae import registry

    monkeypatch.chdir(tmp_path)  # the embedded store: ./mlflow.db + ./mlartifacts
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    detector = Detector.load(model_dir)
    X = make_telemetry(200, seed=1).drop(columns=list(LABEL_COLUMNS))
    run = registry.log_training_run(detector, X, experiment="spark-tests", register="spark-telemetry",
                                    model_dir=model_dir)
    registry.promote("spark-telemetry", run.registered.version, "champion")

    sdf = spark.createDataFrame(incoming.head(500))
    result = score_dataframe(sdf, "models:/spark-telemetry@champion", keep_cols=["row_id"]).toPandas()

    result = result.sort_values("row_id").reset_index(drop=True)
    _same(result.drop(columns=["row_id"]), _expected(model_dir, incoming.head(500)), rtol=2e-5,
          p_atol=_one_rank(model_dir))


def test_cli_score_engine_spark(spark, model_dir, incoming, tmp_path):
    """`anomaly-ae score --engine spark` (it reuses the active session) writes the same scores."""
    from typer.testing import CliRunner

    from anomaly_ae.cli import app

    incoming.head(400).to_parquet(tmp_path / "in.parquet", index=False)
    result = CliRunner().invoke(app, ["score", str(model_dir), str(tmp_path / "in.parquet"), "-o",
                                      str(tmp_path / "out"), "--engine", "spark", "--keep-cols", "row_id"])
    assert result.exit_code == 0, result.output
    scored = pd.read_parquet(tmp_path / "out").sort_values("row_id").reset_index(drop=True)
    _same(scored.drop(columns=["row_id"]), _expected(model_dir, incoming.head(400)))

    missing = CliRunner().invoke(app, ["score", str(model_dir), str(tmp_path / "nope.parquet"), "-o",
                                       str(tmp_path / "out2"), "--engine", "spark"])
    assert missing.exit_code == 2 and "does not exist" in missing.output and "Traceback" not in missing.output


# ---------------------------------------------------------------------------- series models
@pytest.fixture(scope="module")
def series_model_dir(tmp_path_factory):
    from anomaly_ae import SeriesDetector
    from anomaly_ae.data.synthetic_series import SERIES_LABEL_COLUMNS, make_series_telemetry

    history = make_series_telemetry(300, 3, seed=0, anomalies=False).drop(columns=list(SERIES_LABEL_COLUMNS))
    path = tmp_path_factory.mktemp("spark-series-model") / "model"
    SeriesDetector("pca", window=8, time_col="ts", series_col="host", random_state=0).fit(history).save(path)
    return path


@pytest.fixture(scope="module")
def series_incoming():
    from anomaly_ae.data.synthetic_series import SERIES_LABEL_COLUMNS, make_series_telemetry

    frame = make_series_telemetry(1500, 3, seed=1).drop(columns=list(SERIES_LABEL_COLUMNS))
    frame = frame.groupby("host").nth(slice(600, 900)).reset_index(drop=True)  # 300 steps of each of 3 hosts
    frame.insert(0, "row_id", np.arange(len(frame), dtype=np.int64))
    return frame


def test_series_scores_equal_single_process(spark, series_model_dir, series_incoming):
    """Rows shuffled over partitions, the time column renamed: grouped by host, sorted by time and scored per
    series, every row's score, flag, alert and notes equal SeriesDetector.score_frame in one process."""
    from anomaly_ae import SeriesDetector

    detector = SeriesDetector.load(series_model_dir)
    expected = detector.score_frame(series_incoming.drop(columns=["row_id"]), top_k=2).reset_index(drop=True)
    assert expected["alert"].any() and expected["notes"].str.contains("warm-up").any()
    np.testing.assert_allclose(expected["score"], detector.decision_function(series_incoming.drop(columns="row_id")))
    shuffled = series_incoming.sample(frac=1.0, random_state=0).rename(columns={"ts": "time"})
    sdf = spark.createDataFrame(shuffled).repartition(3)

    scored = score_dataframe(sdf, str(series_model_dir), top_k=2, time_col="time", series_col="host")

    names = [n for n, _ in output_columns(detector, 2)]
    assert names[-2:] == ["alert", "notes"]
    assert scored.columns == [*shuffled.columns, *names]
    result = scored.toPandas()
    # each series comes out whole and in time order
    for _, rows in result.groupby("host", sort=False):
        assert rows["time"].is_monotonic_increasing
    result = result.sort_values("row_id").reset_index(drop=True)
    assert result["row_id"].tolist() == series_incoming["row_id"].tolist()
    _same(result[names], expected, rtol=1e-6)


def test_series_model_refusals_on_the_driver(spark, series_model_dir, model_dir, series_incoming):
    sdf = spark.createDataFrame(series_incoming)
    with pytest.raises(SchemaError, match="time"):
        score_dataframe(sdf, str(series_model_dir), time_col="time")  # no such column
    with pytest.raises(SchemaError, match="host"):
        score_dataframe(sdf.drop("host"), str(series_model_dir))
    with pytest.raises(DataError, match="apply to series models"):
        score_dataframe(spark.createDataFrame(make_telemetry(50, seed=3)), str(model_dir), time_col="ts")


def test_a_model_without_series_column_scores_one_series(spark, series_incoming, tmp_path):
    """One series: every row in one group, sorted by time; a series column given anyway splits the rows
    into series of their own, each scored like that series alone."""
    from anomaly_ae import SeriesDetector

    one = series_incoming[series_incoming.host == "host-1"].drop(columns=["host"]).reset_index(drop=True)
    path = tmp_path / "one-series"
    SeriesDetector("pca", window=8, time_col="ts", random_state=0).fit(one.drop(columns="row_id").head(250)).save(path)
    detector = SeriesDetector.load(path)
    result = score_dataframe(spark.createDataFrame(one.sample(frac=1.0, random_state=1)), str(path),
                             keep_cols=["row_id"]).toPandas().sort_values("row_id").reset_index(drop=True)
    _same(result.drop(columns=["row_id"]), detector.score_frame(one.drop(columns="row_id")).reset_index(drop=True))
    by_host = score_dataframe(spark.createDataFrame(series_incoming), str(path), series_col="host",
                              keep_cols=["row_id", "host"]).toPandas()
    alone = by_host[by_host.host == "host-1"].sort_values("row_id").reset_index(drop=True)
    _same(alone.drop(columns=["row_id", "host"]), result.drop(columns=["row_id"]))


def test_series_parquet_scores_equal_single_process(spark, series_model_dir, series_incoming, tmp_path):
    """score_parquet_with_spark (what `anomaly-ae score --engine spark` runs) with a series model."""
    from anomaly_ae import SeriesDetector

    part = series_incoming[series_incoming.host != "host-2"].reset_index(drop=True)
    part.to_parquet(tmp_path / "in.parquet", index=False)
    summary = score_parquet_with_spark(str(series_model_dir), str(tmp_path / "in.parquet"), str(tmp_path / "out"),
                                       keep_cols=["row_id"], spark=spark)
    expected = SeriesDetector.load(series_model_dir).score_frame(part.drop(columns="row_id")).reset_index(drop=True)
    result = pd.read_parquet(tmp_path / "out").sort_values("row_id").reset_index(drop=True)
    assert summary.rows == len(part) and summary.anomalies == int(expected["is_anomaly"].sum())
    assert result["row_id"].tolist() == part["row_id"].tolist()
    _same(result.drop(columns=["row_id"]), expected)


def test_series_scores_ignore_the_session_time_zone_and_ties_keep_the_input_order(spark, series_incoming, tmp_path):
    """Spark hands pandas a timestamp as the session zone's wall clock: a New York session read UTC
    midnight as 19:00, so time-of-day covariates were 5 hours off and a fall-back hour repeated steps.
    Rows with the same time took the shuffle's order; a dotted column name failed in the pandas function."""
    from anomaly_ae import SeriesDetector
    from anomaly_ae.spark import scoring_errors

    frame = series_incoming[series_incoming.host != "host-2"].reset_index(drop=True)
    frame["ts"] = frame["ts"].dt.tz_localize("UTC")
    path = tmp_path / "calendar"
    SeriesDetector("pca", window=8, time_col="ts", series_col="host", covariates=["time_of_day"],
                   random_state=0).fit(frame.drop(columns="row_id").groupby("host").head(200)).save(path)
    detector = SeriesDetector.load(path)
    assert detector.get_params() == SeriesDetector(**detector.get_params()).get_params()
    assert detector.covariates == ("time_of_day",)
    twin = frame.iloc[[250]].assign(row_id=10_000, cpu_util_pct=99.0)  # the same step again, read right after
    incoming = pd.concat([frame.iloc[:251], twin, frame.iloc[251:]], ignore_index=True).rename(
        columns={"row_id": "row.id"})
    expected = detector.score_frame(incoming.drop(columns="row.id")).reset_index(drop=True)
    assert expected["notes"].str.contains("replaces").sum() == 1
    zone = spark.conf.get("spark.sql.session.timeZone")
    spark.conf.set("spark.sql.session.timeZone", "America/New_York")
    try:
        result = score_dataframe(spark.createDataFrame(incoming), str(path)).toPandas()
        bad = spark.createDataFrame(incoming.assign(cpu_util_pct=np.where(incoming.index == 7, np.nan,
                                                                          incoming.cpu_util_pct)))
        with pytest.raises(SchemaError, match="cpu_util_pct"), scoring_errors():
            score_dataframe(bad, str(path)).toPandas()
    finally:
        spark.conf.set("spark.sql.session.timeZone", zone)
    result = result.set_index("row.id").loc[incoming["row.id"]].reset_index()
    _same(result[list(expected.columns)], expected)
