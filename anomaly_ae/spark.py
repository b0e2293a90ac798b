"""Batch scoring on Apache Spark: the same scores as ``Detector.score_frame``, on as many executors as you have.

    from anomaly_ae.spark import score_dataframe
    scored = score_dataframe(spark.read.parquet("s3a://bucket/telemetry/"), "models:/telemetry@champion")

How it works. The driver resolves the model URI once (``models:/NAME@ALIAS`` becomes the version the
alias names *now*, so an alias moved mid-job cannot mix two versions in one output), downloads it
with every hash checked, loads it with ``Detector.load`` to learn its input schema, and ships the
saved-model directory (JSON + safetensors + manifest) to the executors with ``SparkContext.addFile``.
The scoring function is a ``mapInPandas`` over Arrow batches whose closure holds only strings: each
Python worker loads the directory with ``Detector.load`` (hash-checked, never unpickles) the first
time it needs it and keeps it for later batches, so a model is loaded once per executor worker, not
once per batch. Executors need ``anomaly_ae`` (and torch) installed, not MLflow or access to it.

Series models (``SeriesDetector``) score each row by the window of steps ending at it within its
series, so their rows cannot be scored in arbitrary batches: ``score_dataframe`` groups the rows by
the series column (``applyInPandas``; one group for a model without one), sorts each group by the
time column and scores it in one call, which gives exactly the scores of ``SeriesDetector`` on the
same series in one process. A whole series is then in one executor's memory at once.

    scored = score_dataframe(spark.read.parquet("s3a://bucket/metrics/"), "models:/metrics@champion",
                             time_col="ts", series_col="host")

Install with ``pip install 'anomaly-ae[spark]'`` (pyspark; Spark needs Java 17+).
"""

from __future__ import annotations

import numbers
import os
import shutil
import sys
import tempfile
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import pandas as pd

from anomaly_ae.exceptions import DataError, InvalidParameterError, ModelLoadError, SchemaError, ScoringError
from anomaly_ae.runtime import set_threads

if TYPE_CHECKING:
    from pyspark.sql import DataFrame as SparkDataFrame, SparkSession

    from anomaly_ae.detector import Detector

__all__ = ["SparkScoreSummary", "output_columns", "score_dataframe", "score_parquet_with_spark", "scoring_errors"]

MODEL_DIR_PREFIX = "anomaly-ae-model-"
# Hidden columns of a series job: the input's row order (ties in time keep it, whatever the shuffle
# did) and a Spark timestamp as UTC microseconds (pandas would get the session zone's wall clock).
_ROW = "__anomaly_ae_row"
_INSTANT_US = "__anomaly_ae_time_us"

# ---------------------------------------------------------------------------- driver side: the model


@dataclass(frozen=True)
class _ShippedModel:
    name: str          # the directory name under SparkFiles' root on every executor
    local_path: str    # where the driver keeps it (also the fallback path in local mode)
    manifest_sha256: str


_shipped_lock = threading.Lock()
_shipped_root: tempfile.TemporaryDirectory | None = None
_shipped: dict[tuple[str, str], _ShippedModel] = {}  # (Spark application id, manifest sha) -> what was added


def _manifest_sha(model_dir: Path) -> str:
    from anomaly_ae.persistence import manifest_digest

    return manifest_digest(model_dir)


def _ship(spark: "SparkSession", model_dir: Path) -> _ShippedModel:
    """Copy the verified model directory under a content-addressed name and add it to the SparkContext."""
    global _shipped_root
    from anomaly_ae.persistence import FILES, MANIFEST

    sha = _manifest_sha(model_dir)
    sc = spark.sparkContext
    key = (sc.applicationId, sha)  # a new session is a new application, which needs the files again
    with _shipped_lock:
        if key in _shipped:
            return _shipped[key]
        if _shipped_root is None:
            _shipped_root = tempfile.TemporaryDirectory(prefix="anomaly_ae-spark-")
        name = MODEL_DIR_PREFIX + sha[:16]
        target = Path(_shipped_root.name) / name
        if not target.exists():
            staging = Path(_shipped_root.name) / f".{name}-{uuid.uuid4().hex[:8]}"
            staging.mkdir()
            for file in (*FILES, MANIFEST):  # exactly the saved-model files, nothing else in the folder
                shutil.copy2(model_dir / file, staging / file)
            staging.rename(target)
        sc.addFile(str(target), recursive=True)
        shipped = _ShippedModel(name=name, local_path=str(target), manifest_sha256=sha)
        _shipped[key] = shipped
        return shipped


def _materialize(model_uri: str | Path) -> tuple[Path, "Detector"]:
    """The verified local directory of a model URI (registry URIs are downloaded) and the loaded detector."""
    from anomaly_ae.detector import Detector
    from anomaly_ae.persistence import resolve_model_path

    model_dir = resolve_model_path(model_uri)  # models:/NAME@ALIAS -> the exact version, downloaded, hash-checked
    detector = Detector.load(model_dir)
    if detector.schema_.image is not None:
        raise ModelLoadError(f"{model_uri} scores images; Spark scoring handles tabular models only")
    return Path(model_dir), detector


# ---------------------------------------------------------------------------- executor side


_loaded_lock = threading.Lock()
_loaded: dict[str, "Detector"] = {}  # manifest sha -> detector, one per Python worker process


def _executor_detector(name: str, fallback: str, sha: str) -> "Detector":
    with _loaded_lock:
        detector = _loaded.get(sha)
        if detector is not None:
            return detector
        from pyspark import SparkFiles

        from anomaly_ae.detector import Detector

        path = Path(SparkFiles.get(name))
        if not (path / "manifest.json").is_file():  # local mode before the file server copied it
            path = Path(fallback)
        if _manifest_sha(path) != sha:
            raise ModelLoadError(f"the model files shipped to this executor ({path}) are not the version the driver "
                                 "verified; refusing to score with them")
        # Spark runs one task per core: one torch thread per task, never a pool per task.
        set_threads(1)
        detector = Detector.load(path)
        _loaded[sha] = detector
        return detector


def _score_series(group: pd.DataFrame, *, name: str, fallback: str, sha: str, features: list[str],
                  inputs: list[tuple[str, str]], time_source: str, keep: list[tuple[str, str]], top_k: int,
                  columns: list[str], names: list[str]) -> pd.DataFrame:
    """One series (all its rows), sorted by time and scored in one call, as in a single process."""
    detector = _executor_detector(name, fallback, sha)
    if group.empty:
        return pd.DataFrame({c: [] for c in columns})
    group = group.set_axis(names, axis=1)  # the input's own names (the job carries them as _c0, _c1...)
    times = group[time_source]
    if _INSTANT_US in group:
        times = pd.to_datetime(group[_INSTANT_US], unit="us", utc=True)
    order = _time_order(times, group[_ROW].to_numpy())
    group, times = group.iloc[order].reset_index(drop=True), times.iloc[order].reset_index(drop=True)
    frame = pd.DataFrame({model_col: times if source == time_source else group[source] for model_col, source in inputs})
    for feature in features:
        frame[feature] = group[feature]
    with _in_part(f"one series' {len(group):,} rows, in time order"):
        scored = detector.score_frame(frame, top_k=top_k).reset_index(drop=True)
    scored["is_anomaly"] = scored["is_anomaly"].astype(bool)
    scored["alert"] = scored["alert"].astype(bool)
    for output, source in keep:
        scored[output] = group[source]
    return scored[columns]


def _time_order(values: pd.Series, ties: Any) -> Any:
    """Row order by time: timestamps, ISO 8601 text or numbers (a sequence number), then by `ties` (the
    input's row order: rows with one timestamp keep it, and the model lets the last stand for the step)."""
    import numpy as np

    if not (pd.api.types.is_datetime64_any_dtype(values) or pd.api.types.is_numeric_dtype(values)):
        try:
            values = pd.to_datetime(values, utc=True, format="ISO8601")  # as the model reads them
        except (ValueError, TypeError):
            return np.argsort(ties, kind="stable")  # the input's order: the model says what is wrong with the column
    if pd.api.types.is_datetime64_any_dtype(values):
        keys = (values.dt.tz_convert(None) if values.dt.tz is not None else values).to_numpy().view(np.int64)
    else:
        keys = values.to_numpy(dtype=float, na_value=np.nan)
    return np.lexsort((ties, keys))


@contextmanager
def _in_part(part: str) -> Iterator[None]:
    """An executor scores a part of the input; its errors' row numbers count from that part's first row,
    not the input's, so the message says which part (the driver shows the message's first line)."""
    try:
        yield
    except (SchemaError, DataError, ScoringError) as exc:
        message = (f"{exc} (Spark scored {part} here: row numbers count from its first row, not the input's; "
                   "find the rows by their values)")
        if isinstance(exc, DataError):
            raise type(exc)(message, column=exc.column, rows=exc.rows, reason=exc.reason) from None
        raise type(exc)(message) from None


def _score_batches(batches: Iterator[pd.DataFrame], *, name: str, fallback: str, sha: str,
                   features: list[str], keep: list[tuple[str, str]], top_k: int,
                   columns: list[str], names: list[str]) -> Iterator[pd.DataFrame]:
    detector = _executor_detector(name, fallback, sha)
    for batch in batches:
        if batch.empty:
            continue
        batch = batch.set_axis(names, axis=1).reset_index(drop=True)
        with _in_part(f"a batch of {len(batch):,} rows"):
            scored = detector.score_frame(batch[features], top_k=top_k).reset_index(drop=True)
        scored["is_anomaly"] = scored["is_anomaly"].astype(bool)
        for output, source in keep:
            scored[output] = batch[source]
        yield scored[columns]


# ---------------------------------------------------------------------------- public API


def output_columns(detector: "Detector", top_k: int) -> list[tuple[str, str]]:
    """(name, Spark SQL type) of the columns ``Detector.score_frame(X, top_k)`` returns, in order (a series
    model adds ``alert``)."""
    columns = [("score", "double"), ("p_value", "double"), ("is_anomaly", "boolean"), ("severity", "string")]
    if top_k > 0:
        k = max(1, min(int(top_k), len(detector.feature_names_)))
        for i in range(1, k + 1):
            columns += [(f"feature_{i}", "string"), (f"contribution_{i}", "double")]
    if getattr(detector, "framing_", None) is not None:
        columns.append(("alert", "boolean"))
    return columns + [("notes", "string")]


def _spark_type(data_type: Any) -> str:
    return data_type.simpleString()


def _plan_keep(input_columns: Sequence[str], keep_cols: Sequence[str] | None,
               outputs: Sequence[str]) -> list[tuple[str, str]]:
    """(output name, input column) for the pass-through columns; a name that collides with an output
    column is kept as ``input_<name>`` (as ``anomaly-ae score --keep-cols`` does)."""
    keep = list(input_columns) if keep_cols is None else list(dict.fromkeys(keep_cols))
    missing = [c for c in keep if c not in input_columns]
    if missing:
        raise DataError(f"keep_cols names column(s) not in the input: {', '.join(missing)}")
    taken = set(outputs)
    planned = []
    for column in keep:
        name = column
        while name in taken:
            name = f"input_{name}"
        taken.add(name)
        planned.append((name, column))
    return planned


@dataclass(frozen=True)
class _OutputPlan:
    keep: list[tuple[str, str]]  # (output name, input column) passed through
    columns: list[str]           # the output's columns, in order
    schema: str                  # the output's Spark DDL schema
    needed: list[str]            # the input columns to select
    top_k: int


def _plan_output(df: "SparkDataFrame", detector: "Detector", required: Sequence[str], why: str,
                 keep_cols: Sequence[str] | None, top_k: int) -> _OutputPlan:
    """Check the input has the `required` columns (once each) and plan the output: pass-through
    columns, then the score columns, with their Spark types."""
    input_columns = list(df.columns)
    absent = [c for c in required if c not in input_columns]
    if absent:
        raise SchemaError(f"the input lacks column(s) {why}: {', '.join(absent)}; it has "
                          f"{', '.join(input_columns)}", column=absent[0], reason="missing_column")
    if len(set(input_columns)) != len(input_columns):
        raise DataError("the input has duplicate column names; rename them before scoring")
    outputs = output_columns(detector, top_k)
    keep = _plan_keep(input_columns, keep_cols, [name for name, _ in outputs])
    types = {f.name: _spark_type(f.dataType) for f in df.schema.fields}
    schema = ", ".join(f"`{name}` {kind}" for name, kind in [*[(o, types[s]) for o, s in keep], *outputs])
    columns = [o for o, _ in keep] + [name for name, _ in outputs]
    needed = list(dict.fromkeys([*required, *(source for _, source in keep)]))
    return _OutputPlan(keep, columns, schema, needed, top_k)


def score_dataframe(df: "SparkDataFrame", model_uri: str | Path, *, top_k: int = 3,
                    keep_cols: Sequence[str] | None = None, time_col: str | None = None,
                    series_col: str | None = None) -> "SparkDataFrame":
    """Score a Spark DataFrame with a saved or registered model; lazy, like any transformation.

    ``model_uri``: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/...`` or a local model
    directory (a string: the model is shipped as files, never pickled). Returns the
    ``Detector.score_frame`` columns (score, p_value, is_anomaly, severity, feature_i /
    contribution_i for the ``top_k`` largest contributions, notes) after the pass-through columns:
    every input column by default (``keep_cols=None``), the listed ones, or none (``[]``). A kept
    column named like an output column becomes ``input_<name>``. Row order within each partition is
    preserved. Missing model columns raise ``SchemaError`` here; bad values fail on the executors
    when an action runs, with the message ``Detector.score_frame`` gives, inside pyspark's exception:
    run the action in ``with scoring_errors():`` to get the package's own one-line error instead.

    Series models: ``time_col`` and ``series_col`` name the input's time and series columns (default:
    the names the model was trained with). Rows are grouped by series, each series is sorted by time
    and scored whole (one series at a time in an executor's memory), so every score equals
    ``SeriesDetector.score_frame`` on that series; the output adds ``alert`` and comes out series by
    series in time order. A Spark timestamp column is read as the instant it is, whatever the
    session's time zone; rows with the same time keep the input's order. A model trained without a
    time column scores rows in their order, which a shuffle does not keep: pass ``time_col`` (a
    timestamp or a sequence number) to order them. Row models take neither option.
    """
    from pyspark.sql import SparkSession

    if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 0:  # as score_frame
        raise InvalidParameterError(f"top_k must be an integer >= 0, got {top_k!r}")
    top_k = int(top_k)
    spark = df.sparkSession if hasattr(df, "sparkSession") else SparkSession.getActiveSession()
    model_dir, detector = _materialize(model_uri)
    if getattr(detector, "framing_", None) is not None:
        return _score_series_dataframe(spark, df, model_uri, model_dir, detector, top_k=top_k, keep_cols=keep_cols,
                                       time_col=time_col, series_col=series_col)
    if time_col is not None or series_col is not None:
        raise DataError(f"time_col and series_col apply to series models; {model_uri} scores each row on its own")
    features = list(detector.schema_.names)
    plan = _plan_output(df, detector, features, "the model was trained on", keep_cols, top_k)
    keep, columns, top_k = plan.keep, plan.columns, plan.top_k
    shipped = _ship(spark, model_dir)
    name, fallback, sha = shipped.name, shipped.local_path, shipped.manifest_sha256
    schema, needed = plan.schema, plan.needed

    def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        # Only strings, lists and ints are captured here: the Detector never travels through pickle.
        return _score_batches(batches, name=name, fallback=fallback, sha=sha, features=features, keep=keep,
                              top_k=top_k, columns=columns, names=needed)

    return _select(df, needed).mapInPandas(score, schema=schema)


def _select(df: "SparkDataFrame", columns: Sequence[str]) -> "SparkDataFrame":
    """The columns under plain names (_c0, _c1...): Spark's pandas functions resolve input names again,
    and a name with a dot (row.id) would read as a struct field there."""
    from pyspark.sql import functions as F

    return df.select(*[F.col(f"`{c}`").alias(f"_c{i}") for i, c in enumerate(columns)])


def _score_series_dataframe(spark: "SparkSession", df: "SparkDataFrame", model_uri: str | Path, model_dir: Path,
                            detector: "Detector", *, top_k: int, keep_cols: Sequence[str] | None,
                            time_col: str | None, series_col: str | None) -> "SparkDataFrame":
    framing = detector.framing_
    time_source = time_col or framing.time_col
    series_source = series_col or framing.series_col
    if time_source is None:
        raise DataError(f"{model_uri} was trained without a time column and scores rows in their order, which Spark "
                        "does not keep across a shuffle; pass time_col= a column that orders them (a timestamp or a "
                        "sequence number)")
    # (model column, input column) of the keys the model reads besides its metrics
    inputs = [(model_col, source) for model_col, source in ((framing.time_col, time_source),
                                                            (framing.series_col, series_source))
              if model_col is not None]
    features = list(detector.schema_.names)
    required = [*dict.fromkeys([*features, time_source, *([series_source] if series_source else [])])]
    plan = _plan_output(df, detector, required, "the model needs", keep_cols, top_k)
    keep, columns, top_k = plan.keep, plan.columns, plan.top_k
    shipped = _ship(spark, model_dir)
    name, fallback, sha = shipped.name, shipped.local_path, shipped.manifest_sha256
    schema, needed = plan.schema, plan.needed

    from pyspark.sql import functions as F
    from pyspark.sql.types import TimestampType

    hidden = [F.monotonically_increasing_id().alias(_ROW)]
    names = [*needed, _ROW]
    if isinstance(df.schema[time_source].dataType, TimestampType):
        hidden.append(F.unix_micros(F.col(f"_c{needed.index(time_source)}")).alias(_INSTANT_US))
        names.append(_INSTANT_US)

    def score(group: pd.DataFrame) -> pd.DataFrame:
        # Only strings, lists and ints are captured here: the Detector never travels through pickle.
        return _score_series(group, name=name, fallback=fallback, sha=sha, features=features, inputs=inputs,
                             time_source=time_source, keep=keep, top_k=top_k, columns=columns, names=names)

    selected = _select(df, needed).select("*", *hidden)
    grouped = selected.groupBy(f"_c{needed.index(series_source)}") if series_source else selected.groupBy()
    return grouped.applyInPandas(score, schema=schema)


@dataclass(frozen=True)
class SparkScoreSummary:
    rows: int
    anomalies: int
    output: str
    model_uri: str


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def _local_path(path: str) -> Path:
    return Path(path[len("file://"):] if path.startswith("file://") else path)


def _default_session() -> "SparkSession":
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise DataError("the Spark engine needs pyspark: pip install 'anomaly-ae[spark]' (and Java 17+)") from None

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    # spark-submit / a cluster config supplies the master; a plain `anomaly-ae score --engine spark`
    # runs local[*] with its UI off.
    builder = SparkSession.builder.appName("anomaly-ae score")
    if not os.environ.get("SPARK_HOME") and "spark.master" not in os.environ.get("PYSPARK_SUBMIT_ARGS", ""):
        # Python workers must run this interpreter (its packages), not whatever `python3` is on PATH. Set in
        # the environment because PySpark reads it from there only (SparkContext.pythonExec; the session
        # setting spark.pyspark.python left workers on PATH's python3, which could not import this package).
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # a local job listens on loopback only
        builder = (builder.master("local[*]").config("spark.ui.enabled", "false")
                   .config("spark.ui.showConsoleProgress", "false"))
    try:
        return builder.getOrCreate()
    except Exception as exc:  # no Java, or the JVM refused to start
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise DataError(f"could not start Spark ({first}); Spark needs Java 17+ (JAVA_HOME or java on PATH)") from None


def score_parquet_with_spark(model_uri: str | Path, input_path: str | Path, output_path: str | Path,
                             top_k: int = 3, *, keep_cols: Sequence[str] | None = None,
                             spark: "SparkSession | None" = None, time_col: str | None = None,
                             series_col: str | None = None) -> SparkScoreSummary:
    """Score a Parquet file or dataset directory with Spark; write a Parquet dataset directory.

    ``input_path``/``output_path`` are local paths or any URI Spark reads (``s3a://``, ``hdfs://``).
    The output has the pass-through columns (all input columns when ``keep_cols`` is None, none for
    ``[]``; see ``score_dataframe``) and the ``Detector.score_frame`` columns. A local output is
    written next to its destination and moved into place only when complete (an existing output is
    replaced); a remote one is written by Spark's committer in overwrite mode. Returns the row and
    anomaly counts (read back from the written output). ``spark`` defaults to the active session,
    else a new ``local[*]`` one. ``time_col`` / ``series_col``: a series model's columns in the input
    when they are not named as in training (see ``score_dataframe``).
    """
    input_path, output_path = str(input_path), str(output_path)
    if input_path.endswith((".csv", ".csv.gz")):
        raise DataError(f"{input_path}: the Spark engine reads Parquet; convert it, or score CSV with the "
                        "default engine")
    if _is_local(input_path) and not _local_path(input_path).exists():
        raise DataError(f"input '{input_path}' does not exist")
    spark = spark or _default_session()
    try:
        frame = spark.read.parquet(input_path)
    except Exception as exc:  # AnalysisException and friends: say what, not a JVM stack trace
        raise DataError(f"Spark could not read Parquet from {input_path}: {str(exc).splitlines()[0][:300]}") from None
    scored = score_dataframe(frame, model_uri, top_k=top_k, keep_cols=keep_cols, time_col=time_col,
                             series_col=series_col)
    if _is_local(output_path):
        destination = _local_path(output_path).absolute()
        destination.parent.mkdir(parents=True, exist_ok=True)
        staging = destination.parent / f".{destination.name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            _write(scored, str(staging))
            _replace(staging, destination)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        written = str(destination)
    else:
        _write(scored, output_path, mode="overwrite")
        written = output_path
    counts = spark.read.parquet(written).selectExpr("count(*) AS rows",
                                                    "coalesce(sum(CAST(is_anomaly AS INT)), 0) AS anomalies").first()
    return SparkScoreSummary(rows=int(counts["rows"]), anomalies=int(counts["anomalies"]), output=written,
                             model_uri=str(model_uri))


def _write(frame: "SparkDataFrame", path: str, mode: str = "errorifexists") -> None:
    with scoring_errors():
        frame.write.mode(mode).parquet(path)


@contextmanager
def scoring_errors() -> Iterator[None]:
    """Around an action on ``score_dataframe``'s output (``collect``, ``toPandas``, ``write``): a bad
    value found on an executor raises the package's own ``SchemaError`` / ``DataError`` /
    ``ScoringError`` with its one-line message, not pyspark's exception with the worker's traceback."""
    from anomaly_ae.exceptions import AnomalyAEError

    try:
        yield
    except AnomalyAEError:
        raise
    except Exception as exc:
        converted = _executor_error(exc)
        if converted is exc:
            raise
        raise converted from None


def _executor_error(exc: Exception) -> Exception:
    """A scoring error raised in a Python worker reaches the driver wrapped in JVM exceptions; surface
    the package's own one-line message when it is there."""
    text = str(exc)
    for kind in ("SchemaError", "DataError", "ScoringError", "ModelLoadError"):
        marker = f"anomaly_ae.exceptions.{kind}: "
        if marker in text:
            message = text.split(marker, 1)[1].splitlines()[0]
            from anomaly_ae import exceptions

            return getattr(exceptions, kind)(message)
    return exc


def _replace(staging: Path, destination: Path) -> None:
    if not destination.exists():
        staging.rename(destination)
        return
    if not destination.is_dir() and destination.suffix not in (".parquet", ".pq"):
        raise DataError(f"output '{destination}' exists and is not a Parquet dataset; choose another path")
    old = destination.parent / f".{destination.name}.old-{uuid.uuid4().hex[:8]}"
    destination.rename(old)
    staging.rename(destination)
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)
