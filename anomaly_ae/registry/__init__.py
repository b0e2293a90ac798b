"""MLflow integration: the only package that imports mlflow.

Track a training run, register its model (an MLflow pyfunc whose files are JSON + safetensors,
with their SHA-256 hashes recorded as version tags), move aliases with an optional evaluation
gate, and load models by URI with every hash checked and nothing unpickled.

The scoring service uses only:

    resolve_model(uri) -> ModelRef       which concrete version a URI names now (cheap, bounded)
    load_model(uri) -> (Detector, ModelRef)   resolve, download that exact version, verify, load
    download_model(uri, dst=None) -> Path     the verified saved-model directory

Generators are logged and registered the same way (``log_generator_run``), tagged
``anomaly_ae.kind=generator``, and loaded with ``Generator.load("models:/NAME@ALIAS")``. Series
detectors (``SeriesDetector``) go through ``log_training_run`` like any detector, tagged
``anomaly_ae.kind=series``; ``Detector.load`` and ``load_model`` return them as ``SeriesDetector``.
One registered name holds one kind.

URIs: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` (or ``/latest``), ``runs:/RUN_ID/model``
or a local directory (an ``mlflow-artifacts:/...`` URI is refused: no version or run records the hash its
files are checked against). The tracking server is ``MLFLOW_TRACKING_URI``
or, when unset, the embedded ``./mlflow.db`` + ``./mlartifacts``. Every network call is bounded
(see ``connection``): an unreachable server raises ``RegistryUnavailableError`` (also a
``ModelLoadError``) within about 17 s; an unknown name, version or alias, a tampered artifact or
an incompatible model format raise ``ModelLoadError`` saying which and what to do.
"""

from anomaly_ae.registry.connection import (HttpBounds, TrackingTarget, check_connection, quiet_mlflow_logs,
                                           tracking_target)
from anomaly_ae.registry.store import (ModelRef, Promotion, PromotionRefused, VersionSummary, check_model_name,
                                       check_registrable, download_model, list_versions, load_model, promote,
                                       resolve_model)
from anomaly_ae.registry.generators import log_generator_run
from anomaly_ae.registry.tracking import DataSource, TrackedRun, data_fingerprint, log_training_run

__all__ = [
    "DataSource", "HttpBounds", "ModelRef", "Promotion", "PromotionRefused", "TrackedRun", "TrackingTarget", "VersionSummary",
    "check_connection", "check_model_name", "check_registrable", "data_fingerprint", "download_model", "list_versions",
    "load_model",
    "log_generator_run", "log_training_run", "promote",
    "quiet_mlflow_logs", "resolve_model", "tracking_target",
]
