"""Log a fitted detector's training as an MLflow run, and optionally register its model.

The run holds: every ``get_params()`` value; per-epoch train/validation loss as step metrics;
training time; the calibration (threshold, target and achieved validation FPR) and quantiles of
the validation-normal scores; the data fingerprint (rows, columns, SHA-256 of the content) and
schema; for a series model (``SeriesDetector``) its framing (window, time and series columns,
step, series count) as parameters and ``data/series.json``, and how often its alert rule fired on
the held-out tail of the normal history as ``holdout_*`` metrics; plots (loss curves, score histogram with the threshold, and ROC/PR + AUROC/AUPRC when
labelled evaluation data is given); and the model as an MLflow pyfunc whose data is the saved
model directory (JSON + safetensors + manifest). The run and the registered version are tagged
``anomaly_ae.kind`` = ``detector`` or ``series``. Tracking lives here, not in ``Detector``: it only
reads the fitted attributes (``history_``, ``calibration_``, ``schema_``, ``get_params()``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shlex
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from anomaly_ae.version import __version__
from anomaly_ae.exceptions import RegistryError, RegistryUnavailableError
from anomaly_ae.registry.connection import TrackingTarget, bounded, client, mlflow_errors, tracking_target
from anomaly_ae.registry.pyfunc import save_pyfunc_model
from anomaly_ae.registry.store import (KIND_TAG, MANIFEST_TAG, MLMODEL_TAG, MODEL_ARTIFACT_PATH, PACKAGE_TAG,
                                       WRAPPER_TAG, ModelRef, _labelled, register_run_model, saved_kind,
                                       version_tags, wrapper_digest)

if TYPE_CHECKING:
    from anomaly_ae.detector import Detector

SCORE_QUANTILES = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99, "max": 1.0}
# SeriesDetector.alert_stats_ key -> run metric: the alert rule on the held-out tail of the normal history
HOLDOUT_METRICS = {"held_out_steps": "holdout_steps", "flagged_steps": "holdout_flagged_steps",
                   "alerts": "holdout_alerts", "alerts_per_1000_steps": "holdout_alerts_per_1000_steps",
                   "alerts_per_day": "holdout_alerts_per_day"}
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a parameter value


@dataclass(frozen=True)
class TrackedRun:
    run_id: str
    experiment_id: str
    experiment: str
    target: TrackingTarget
    model_uri: str                                   # runs:/RUN_ID/model
    registered: ModelRef | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        lines = [f"logged run {self.run_id} in experiment {self.experiment!r} to {self.target.describe()}"]
        if self.target.uri.startswith(("http://", "https://")):
            lines.append(f"view it at {self.target.shown.rstrip('/')}/#/experiments/{self.experiment_id}/runs/"
                         f"{self.run_id}")
        if self.registered is not None:
            lines.append(f"registered {self.registered.uri}; promote it with `anomaly-ae promote "
                         f"{shlex.quote(self.registered.name)} --version {self.registered.version} --alias champion`")
        return "\n".join(lines)


@contextlib.contextmanager
def run_lifecycle(c: Any, target: TrackingTarget, run_id: str) -> Iterator[None]:
    """Mark the run FINISHED when the block completes, FAILED when it raises."""
    try:
        yield
    except BaseException as exc:
        # after a server that did not answer, one short try (a dropped connection leaves it up); a dead
        # server is not waited on twice
        bounds = replace(target.bounds, timeout_s=2.0, max_retries=0) \
            if isinstance(exc, RegistryUnavailableError) else target.bounds
        with contextlib.suppress(Exception), bounded(bounds):
            c.set_terminated(run_id, "FAILED")
        raise
    with mlflow_errors(target, f"finishing run {run_id}"):
        c.set_terminated(run_id, "FINISHED")


def data_fingerprint(X: pd.DataFrame | np.ndarray) -> dict[str, Any]:
    """Rows, columns and a SHA-256 of the content (values, column names and dtypes; not the index)."""
    digest = hashlib.sha256()
    if isinstance(X, pd.DataFrame):
        digest.update(json.dumps([[str(c), str(t)] for c, t in X.dtypes.items()]).encode())
        digest.update(pd.util.hash_pandas_object(X, index=False).to_numpy().tobytes())
        rows, columns = X.shape
    else:
        arr = np.ascontiguousarray(X)
        digest.update(f"{arr.dtype.str}{arr.shape}".encode())
        digest.update(arr.tobytes())
        rows, columns = int(arr.shape[0]), int(np.prod(arr.shape[1:]))
    return {"rows": int(rows), "columns": int(columns), "sha256": digest.hexdigest()}


def log_training_run(detector: "Detector", X: pd.DataFrame | np.ndarray, *, experiment: str = "anomaly-ae",
                     register: str | None = None, tracking_uri: str | None = None, model_dir: Path | None = None,
                     data_path: str | Path | None = None, eval_data: pd.DataFrame | Path | str | None = None,
                     label_col: str | None = None, drop_cols: Sequence[str] = (),
                     run_name: str | None = None, source: "DataSource | None" = None) -> TrackedRun:
    """Log one training run of a fitted ``detector`` (trained on ``X``) and, with ``register=NAME``,
    register its model as a new version of NAME.

    ``model_dir`` is the directory ``detector.save`` wrote (saved to a temporary one if omitted).
    ``source`` says where the data came from when it was not a file (e.g. a Prometheus watch spec):
    its params are logged with a ``source.`` prefix and its files as artifacts under ``source/``.
    ``eval_data`` (a labelled table or its path, with ``label_col``; ``drop_cols`` are ignored)
    adds AUROC/AUPRC and ROC/PR plots (for a series model: row-level, over a table that keeps its time and
    series columns, each series in time order). Raises RegistryError / RegistryUnavailableError with a
    message that says what to do.
    """
    detector._check_fitted()
    if model_dir is not None:
        _check_loads(Path(model_dir))
        if saved_kind(Path(model_dir)) != detector_kind(detector):
            raise RegistryError(f"the model saved in {Path(model_dir).name} is a {saved_kind(Path(model_dir))} model "
                                f"but the detector is a {detector_kind(detector)} one; pass the directory this "
                                "detector was saved to")
        _check_saved_from(detector, Path(model_dir))
    evaluation = None
    if eval_data is not None:
        if not label_col:
            raise RegistryError("evaluation data needs its label column (--label-col COL)")
        X_eval, labels, _ = _labelled(eval_data, label_col, drop_cols)
        evaluation = (detector.decision_function(X_eval), np.asarray(labels).astype(int))
    target = tracking_target(tracking_uri, create=True)
    c = client(target.uri)
    fingerprint = data_fingerprint(X)
    kind = detector_kind(detector)
    with mlflow_errors(target, f"starting a run in experiment {experiment!r}"):
        experiment_id = _experiment_id(c, target, experiment)
        run = c.create_run(experiment_id, run_name=run_name, tags={
            "mlflow.source.name": "anomaly-ae train", "mlflow.source.type": "LOCAL", PACKAGE_TAG: __version__,
            KIND_TAG: kind, "model_type": detector.model, "score_type": detector.score_name_})
    run_id = run.info.run_id
    with run_lifecycle(c, target, run_id), tempfile.TemporaryDirectory(prefix="anomaly_ae-run-") as tmp:
        tmp = Path(tmp)
        model_dir = Path(model_dir) if model_dir is not None else detector.save(tmp / "saved")
        metrics = _summary_metrics(detector, evaluation)
        with mlflow_errors(target, f"logging run {run_id}"):
            _log_values(c, run_id, detector, fingerprint, metrics, data_path)
            _log_plots_and_data(c, run_id, detector, fingerprint, evaluation, tmp, data_path)
            if source is not None:
                _log_source(c, run_id, source, tmp)
            save_pyfunc_model(detector, model_dir, tmp / "pyfunc", X, run_id=run_id,
                              artifact_path=MODEL_ARTIFACT_PATH)
            c.log_artifacts(run_id, str(tmp / "pyfunc"), MODEL_ARTIFACT_PATH)
            tags = {**version_tags(model_dir),
                    MLMODEL_TAG: hashlib.sha256((tmp / "pyfunc" / "MLmodel").read_bytes()).hexdigest(),
                    WRAPPER_TAG: wrapper_digest(tmp / "pyfunc")}
            c.set_tag(run_id, MANIFEST_TAG, tags[MANIFEST_TAG])
    registered = None
    if register:
        registered = register_run_model(target, run_id, run.info.artifact_uri, register,
                                        tags={**tags, **_version_summary_tags(detector, metrics, fingerprint)},
                                        description=_description(detector, metrics, fingerprint, data_path, run_id))
    return TrackedRun(run_id, experiment_id, experiment, target, f"runs:/{run_id}/{MODEL_ARTIFACT_PATH}",
                      registered, metrics)


@dataclass(frozen=True)
class DataSource:
    """Where training data came from, for a run that did not read a file: params and files to log."""

    params: Mapping[str, Any]
    files: Mapping[str, str]  # artifact file name -> text (nothing secret: the caller's promise)


def _log_source(c: Any, run_id: str, source: DataSource, tmp: Path) -> None:
    from mlflow.entities import Param

    params = [Param(f"source.{k}", _param_value(v)) for k, v in source.params.items()]
    if params:
        c.log_batch(run_id, params=params)
    folder = tmp / "source"
    folder.mkdir(exist_ok=True)
    for name, text in source.files.items():
        (folder / Path(name).name).write_text(text)
    if source.files:
        c.log_artifacts(run_id, str(folder), "source")


def detector_kind(detector: "Detector") -> str:
    """"series" for a model that scores windows in time (it has a framing), else "detector"."""
    return "series" if getattr(detector, "framing_", None) is not None else "detector"


def _series_params(detector: "Detector") -> dict[str, str]:
    framing = detector.framing_
    return {"window_steps": str(framing.window), "step_seconds": str(framing.step_seconds),
            "n_series": str(len(framing.known_series)), "max_gap_steps": str(framing.max_gap)}


def _check_loads(model_dir: Path) -> None:
    """Refuse to log a saved model that cannot be loaded back (tampered, truncated, another format): a
    registered version must be one every reader accepts. Nothing is logged when it fails."""
    from anomaly_ae.detector import Detector
    from anomaly_ae.exceptions import ModelLoadError

    try:
        Detector.load(model_dir)
    except ModelLoadError as exc:
        raise ModelLoadError(f"refusing to log the model in {model_dir.name}: it cannot be loaded ({exc})") from None


def _check_saved_from(detector: "Detector", model_dir: Path) -> None:
    """Refuse a directory that is not what the detector saves now (saved before a recalibrate or another
    fit): the version's files would be that model and its tags, metrics and description this one. The
    versions of torch and anomaly_ae that wrote it do not count (a model saved by an earlier release)."""
    from anomaly_ae.persistence import FILES

    def content(folder: Path) -> dict[str, Any]:
        files = {name: (folder / name).read_bytes() for name in FILES}
        config = json.loads(files.pop("config.json"))
        for key in ("torch_version", "anomaly_ae_version", "format_version"):
            config.pop(key, None)
        return {"config": config, **{name: hashlib.sha256(data).hexdigest() for name, data in files.items()}}

    with tempfile.TemporaryDirectory(prefix="anomaly_ae-check-") as tmp:
        fresh = content(detector.save(Path(tmp) / "fresh"))
    if content(model_dir) != fresh:
        raise RegistryError(f"the model saved in {model_dir.name} is not the detector as it is now (it changed after "
                            "that save: recalibrated or fitted again); save it again, or leave model_dir out")


def _experiment_id(c: Any, target: TrackingTarget, name: str) -> str:
    from mlflow.exceptions import MlflowException

    experiment = c.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            raise RegistryError(f"experiment {name!r} was deleted on {target.short()}; restore it "
                                f"(mlflow experiments restore --experiment-id {experiment.experiment_id}) "
                                "or choose another name")
        return experiment.experiment_id
    try:
        return c.create_experiment(name, artifact_location=target.experiment_artifacts(name))
    except MlflowException as exc:  # created by a concurrent run in the meantime
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return c.get_experiment_by_name(name).experiment_id


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)
    return text if len(text) <= MAX_PARAM_LENGTH else text[:MAX_PARAM_LENGTH - 3] + "..."


def _summary_metrics(detector: "Detector", evaluation: tuple[np.ndarray, np.ndarray] | None) -> dict[str, float]:
    cal = detector.calibration_
    ref = np.asarray(cal.reference_scores, dtype=np.float64)
    history = detector.history_
    metrics = {
        "training_seconds": float(sum(h.seconds for h in history)),
        "epochs_run": float(max((len(h.train_loss) for h in history), default=0)),
        "best_epoch": float(history[0].best_epoch) if history else 0.0,
        "threshold": float(cal.threshold), "target_fpr": float(cal.target_fpr),
        "validation_fpr": float(cal.validation_fpr), "n_validation": float(len(ref)),
        "val_score_mean": float(ref.mean()),
    }
    metrics.update({f"val_score_{k}": float(np.quantile(ref, q)) for k, q in SCORE_QUANTILES.items()})
    if detector_kind(detector) == "series":
        stats = detector.alert_stats_
        metrics.update({name: float(stats[key]) for key, name in HOLDOUT_METRICS.items() if key in stats})
    if evaluation is not None:
        from anomaly_ae.evaluation import evaluate_scores

        scores, labels = evaluation
        report = evaluate_scores(scores, labels, detector.threshold_)
        metrics.update({"auroc": report.auroc, "auprc": report.auprc,
                        "eval_fpr_at_threshold": report.fpr_at_threshold,
                        "eval_recall_at_threshold": report.recall_at_threshold,
                        "eval_precision_at_threshold": report.precision_at_threshold,
                        "eval_n_normal": float(report.n_normal), "eval_n_anomalous": float(report.n_anomalous)})
    return metrics


def _log_values(c: Any, run_id: str, detector: "Detector", fingerprint: dict[str, Any],
                metrics: dict[str, float], data_path: str | Path | None) -> None:
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    params = {k: _param_value(v) for k, v in detector.get_params().items()}
    params.update({"score_type": detector.score_type_, "n_features_in": str(detector.n_features_in_),
                   "data_rows": str(fingerprint["rows"]), "data_columns": str(fingerprint["columns"]),
                   "data_sha256": fingerprint["sha256"]})
    if data_path is not None:
        params["data_path"] = _param_value(data_path)
    if detector_kind(detector) == "series":
        params.update(_series_params(detector))
    augmentation = detector.training_metadata_.get("augmentation")
    if augmentation:
        params.update({"augment_generator": str(augmentation["generator"]),
                       "augment_generator_sha256": str(augmentation["generator_sha256"]),
                       "augment_rows": str(augmentation["rows_synthetic"])})
    entries = [Metric(k, v, now, 0) for k, v in metrics.items()]
    for i, h in enumerate(detector.history_):  # one curve per ensemble member; member 0 has the plain names
        suffix = "" if i == 0 else f"_member{i}"
        entries += [Metric(f"train_loss{suffix}", float(v), now, step) for step, v in enumerate(h.train_loss, 1)]
        entries += [Metric(f"val_loss{suffix}", float(v), now, step) for step, v in enumerate(h.val_loss, 1)]
    c.log_batch(run_id, metrics=entries, params=[Param(k, v) for k, v in params.items()])


def _log_plots_and_data(c: Any, run_id: str, detector: "Detector", fingerprint: dict[str, Any],
                        evaluation: tuple[np.ndarray, np.ndarray] | None, tmp: Path, data_path: str | Path | None) -> None:
    from anomaly_ae.evaluation import plot_loss_curves, plot_roc_pr, plot_score_histogram

    plots, data = tmp / "plots", tmp / "data"
    plots.mkdir()
    data.mkdir()
    for i, h in enumerate(detector.history_):
        if h.train_loss:
            plot_loss_curves(list(h.train_loss), list(h.val_loss),
                             plots / ("loss_curves.png" if i == 0 else f"loss_curves_member{i}.png"))
    cal = detector.calibration_
    plot_score_histogram(np.asarray(cal.reference_scores), cal.threshold, plots / "score_histogram.png")
    if evaluation is not None:
        scores, labels = evaluation
        plot_score_histogram(scores, cal.threshold, plots / "eval_score_histogram.png", labels=labels)
        plot_roc_pr(scores, labels, plots)
    (data / "schema.json").write_text(json.dumps(detector.schema_.to_dict(), indent=1))
    (data / "fingerprint.json").write_text(json.dumps(
        {**fingerprint, "path": None if data_path is None else str(data_path),
         "column_names": detector.schema_.names}, indent=1))
    if detector_kind(detector) == "series":
        (data / "series.json").write_text(json.dumps({"framing": detector.framing_.to_dict(),
                                                      "alert_rule": detector.alert_rule_.to_dict(),
                                                      "alert_stats": detector.alert_stats_}, indent=1))
    if detector.training_metadata_:
        (data / "training_metadata.json").write_text(json.dumps(detector.training_metadata_, indent=1))
    c.log_artifacts(run_id, str(plots), "plots")
    c.log_artifacts(run_id, str(data), "data")


def _version_summary_tags(detector: "Detector", metrics: dict[str, float],
                          fingerprint: dict[str, Any]) -> dict[str, str]:
    tags = {"model_type": detector.model, "score_type": detector.score_name_,
            "data_rows": str(fingerprint["rows"]), "data_sha256": fingerprint["sha256"]}
    if detector_kind(detector) == "series":
        framing = detector.framing_
        tags.update({"window": str(framing.window), "time_col": str(framing.time_col),
                     "series_col": str(framing.series_col), "step_seconds": str(framing.step_seconds)})
    for key in ("threshold", "target_fpr", "validation_fpr", "auroc", "auprc", "holdout_alerts_per_day"):
        if key in metrics:
            tags[key] = f"{metrics[key]:.6g}"
    return tags


def _description(detector: "Detector", metrics: dict[str, float], fingerprint: dict[str, Any],
                 data_path: str | Path | None, run_id: str) -> str:
    source = f" from {data_path}" if data_path is not None else ""
    text = (f"{detector.model} anomaly detector ({detector.score_name_} score) trained by anomaly_ae {__version__} "
            f"on {fingerprint['rows']} normal rows x {fingerprint['columns']} columns{source} "
            f"(sha256 {fingerprint['sha256'][:12]}). Threshold {metrics['threshold']:.6g} calibrated to a "
            f"{metrics['target_fpr']:g} false-positive rate (validation FPR {metrics['validation_fpr']:.4f}).")
    if detector_kind(detector) == "series":
        framing = detector.framing_
        step = f"{framing.step_seconds:g} s" if framing.step_seconds else "one row"
        text += (f" A series model: each row is scored by the window of {framing.window} steps of {step} ending at "
                 f"it, per series ({framing.series_col or 'one series'}, time column {framing.time_col or 'row order'}"
                 f", {len(framing.known_series)} series in training).")
        if "holdout_alerts_per_day" in metrics:
            text += f" Alerts on held-out normal history: {metrics['holdout_alerts_per_day']:.3g} per day."
    if "auroc" in metrics:
        text += f" On the labelled evaluation data: AUROC {metrics['auroc']:.4f}, AUPRC {metrics['auprc']:.4f}."
    return text + f" Run {run_id}."
