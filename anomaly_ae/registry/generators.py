"""Log a fitted generator's training as an MLflow run, and optionally register it.

Generators are registered like detectors (same trust tags: the manifest's SHA-256, per-file
hashes, format), tagged ``anomaly_ae.kind=generator`` so one is never loaded as the other. The
run holds every ``get_params()`` value, the training curves (CVAE: train/validation loss per
epoch; GAN: Wasserstein estimate and generator loss per logged step), the held-out quality
(C2ST AUC, k-NN precision/recall/density/coverage, KS/Wasserstein, per-condition coverage) as
metrics plus the full report, a sample (rows as CSV, or a PNG grid for images), and the saved
generator directory itself under ``generator/``. Load with ``Generator.load("models:/NAME@ALIAS")``.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from anomaly_ae.version import __version__
from anomaly_ae.registry.connection import client, mlflow_errors, tracking_target
from anomaly_ae.registry.store import KIND_TAG, MANIFEST_TAG, PACKAGE_TAG, register_run_model, version_tags
from anomaly_ae.registry.tracking import (TrackedRun, _experiment_id, _param_value, data_fingerprint,
                                          run_lifecycle)

if TYPE_CHECKING:
    from anomaly_ae.augment.generator import Generator

GENERATOR_ARTIFACT_PATH = "generator"
SAMPLE_ROWS = 200
SUMMARY_TAGS = ("c2st_auc", "precision", "recall", "coverage", "min_condition_coverage")


def log_generator_run(generator: "Generator", X: pd.DataFrame | np.ndarray | None = None, *,
                      experiment: str = "anomaly-ae-generators", register: str | None = None,
                      tracking_uri: str | None = None,
                      data_path: str | Path | None = None, run_name: str | None = None) -> TrackedRun:
    """Log one training run of a fitted ``generator`` (trained on ``X``, fingerprinted when given)
    and, with ``register=NAME``, register it as a new version of NAME.

    The generator as it is now is saved to a temporary directory and logged from there (never a directory
    saved earlier, which may hold another state or stray files).
    Raises RegistryError / RegistryUnavailableError with a message that says what to do.
    """
    from anomaly_ae.augment.quality import check_floors

    generator._check_fitted()
    target = tracking_target(tracking_uri, create=True)
    c = client(target.uri)
    fingerprint = data_fingerprint(X) if X is not None else None
    with mlflow_errors(target, f"starting a run in experiment {experiment!r}"):
        experiment_id = _experiment_id(c, target, experiment)
        run = c.create_run(experiment_id, run_name=run_name, tags={
            "mlflow.source.name": "anomaly-ae generate train", "mlflow.source.type": "LOCAL",
            PACKAGE_TAG: __version__, KIND_TAG: "generator", "model_type": generator.model})
    run_id = run.info.run_id
    metrics = quality_metrics(generator.quality_)
    failures = check_floors(generator.quality_)
    with run_lifecycle(c, target, run_id), tempfile.TemporaryDirectory(prefix="anomaly_ae-run-") as tmp:
        tmp = Path(tmp)
        model_dir = generator.save(tmp / "saved")
        with mlflow_errors(target, f"logging run {run_id}"):
            _log_values(c, run_id, generator, metrics, fingerprint, data_path, failures)
            _log_sample(c, run_id, generator, tmp)
            c.log_artifacts(run_id, str(model_dir), GENERATOR_ARTIFACT_PATH)
            tags = version_tags(model_dir, kind="generator")
            c.set_tag(run_id, MANIFEST_TAG, tags[MANIFEST_TAG])
    registered = None
    if register:
        summary = {k: f"{metrics[k]:.4g}" for k in SUMMARY_TAGS if k in metrics}
        summary["quality_floors"] = "pass" if not failures else "; ".join(failures)[:5000]
        registered = register_run_model(
            target, run_id, run.info.artifact_uri, register, artifact_path=GENERATOR_ARTIFACT_PATH,
            tags={**tags, "model_type": generator.model, **summary},
            description=_description(generator, metrics, fingerprint, run_id))
    return TrackedRun(run_id, experiment_id, experiment, target, f"runs:/{run_id}/{GENERATOR_ARTIFACT_PATH}",
                      registered, metrics)


def quality_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The finite headline numbers of a quality report, plus per-condition coverage as
    ``condition_coverage.<context>`` (MLflow metric names allow dots)."""
    from anomaly_ae.augment.quality import summary

    out = {k: float(v) for k, v in summary(report).items() if _finite(v)}
    for context, entry in (report.get("per_condition") or {}).items():
        if _finite(entry.get("coverage")):
            out[_metric_name(f"condition_coverage.{context}")] = float(entry["coverage"])
    return out


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool) \
        and math.isfinite(float(value))


def _metric_name(name: str) -> str:
    # MLflow allows alphanumerics, underscores, dashes, periods, spaces and slashes.
    return "".join(ch if ch.isalnum() or ch in "_-. /" else "_" for ch in name)


def _log_values(c: Any, run_id: str, generator: "Generator", metrics: dict[str, float],
                fingerprint: dict[str, Any] | None, data_path: str | Path | None, failures: list[str]) -> None:
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    params = {k: _param_value(v) for k, v in generator.get_params().items()}
    params["n_features_in"] = str(generator.n_features_in_)
    params["condition_columns"] = _param_value(generator.conditions_.names)
    if fingerprint is not None:
        params.update({"data_rows": str(fingerprint["rows"]), "data_columns": str(fingerprint["columns"]),
                       "data_sha256": fingerprint["sha256"]})
    if data_path is not None:
        params["data_path"] = _param_value(data_path)
    entries = [Metric(k, v, now, 0) for k, v in metrics.items()]
    entries.append(Metric("quality_floor_failures", float(len(failures)), now, 0))
    entries.append(Metric("training_seconds", float(generator.history_.seconds), now, 0))
    history = generator.history_.to_dict()
    if "wasserstein" in history:  # GAN: one point per logged generator step
        for key in ("wasserstein", "generator_loss"):
            entries += [Metric(key, float(v), now, int(step)) for step, v in zip(history["step"], history[key])]
    else:
        entries += [Metric("train_loss", float(v), now, step) for step, v in enumerate(history["train_loss"], 1)]
        entries += [Metric("val_loss", float(v), now, step) for step, v in enumerate(history["val_loss"], 1)]
    for start in range(0, len(entries), 1000):  # MLflow's per-request metric limit
        c.log_batch(run_id, metrics=entries[start:start + 1000],
                    params=[Param(k, v) for k, v in params.items()] if start == 0 else [])


def _log_sample(c: Any, run_id: str, generator: "Generator", tmp: Path) -> None:
    """What the generator draws, for a look in the MLflow UI: a PNG grid for images, rows as CSV."""
    out = tmp / "samples"
    out.mkdir()
    if generator.schema_.image is not None:
        from anomaly_ae.augment.plots import save_sample_grid

        save_sample_grid(generator, out / "sample_grid.png", n_per_condition=8, random_state=0)
    else:
        generator.sample(SAMPLE_ROWS, random_state=0).to_csv(out / "sample.csv", index=False)
    c.log_artifacts(run_id, str(out), "samples")


def _description(generator: "Generator", metrics: dict[str, float], fingerprint: dict[str, Any] | None,
                 run_id: str) -> str:
    from anomaly_ae.augment.quality import floor_verdict

    data = f" on {fingerprint['rows']} rows (sha256 {fingerprint['sha256'][:12]})" if fingerprint else ""
    conditioned = f", conditioned on {', '.join(generator.conditions_.names)}" if generator.conditions_.names else ""
    quality = ", ".join(f"{k} {metrics[k]:.3f}" for k in SUMMARY_TAGS if k in metrics)
    verdict = floor_verdict(generator.quality_)
    return (f"{generator.model} generator{conditioned} trained by anomaly_ae {__version__}{data}. Held-out quality: "
            f"{quality}; {verdict}. Run {run_id}.")
