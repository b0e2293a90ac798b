"""The MLflow pyfunc flavour of a detector, built with MLflow's ``loader_module`` mechanism.

The logged model directory holds MLflow's own metadata (MLmodel, requirements, environment and
input-example files: YAML, text and JSON) plus ``data/detector/``: the saved-model directory
written by ``Detector.save`` (JSON + safetensors + manifest.json). Nothing is pickled: MLflow
imports this module by name and calls ``_load_pyfunc(data_path)``, which is ``Detector.load``,
so it works with ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false``.

``predict(df)`` returns the ``Detector.score_frame`` columns (score, p_value, is_anomaly,
severity, feature_k / contribution_k, notes); the parameter ``top_k`` (default 3) sets how many
contributing features are reported. A series model (``SeriesDetector``) takes its time and series
columns too (they are in the signature: datetime or string, string or integer as in training),
scores each row by the window ending at it within its series, and adds ``alert``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from anomaly_ae.detector import Detector

LOADER_MODULE = __name__
DATA_DIR = "detector"           # the saved model lives at <model>/data/detector
DEFAULT_TOP_K = 3
EXAMPLE_ROWS = 5


class DetectorPyfunc:
    """What ``mlflow.pyfunc.load_model`` wraps: scores a batch with ``Detector.score_frame``."""

    def __init__(self, detector: "Detector") -> None:
        self.detector = detector

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> pd.DataFrame:
        top_k = (params or {}).get("top_k")
        top_k = DEFAULT_TOP_K if top_k is None else top_k  # MLflow passes None for a param left unset
        return self.detector.score_frame(model_input, top_k=top_k)


def _load_pyfunc(data_path: str, model_config: Any = None) -> DetectorPyfunc:
    """MLflow's entry point (the ``loader_module`` contract): JSON + safetensors only, hash-checked."""
    from anomaly_ae.detector import Detector

    return DetectorPyfunc(Detector.load(Path(data_path)))


def _key_columns(detector: "Detector") -> list[str]:
    """A series model's time and series columns (the ones it has), which its input carries besides the schema's."""
    framing = getattr(detector, "framing_", None)
    if framing is None:
        return []
    return [c for c in (framing.time_col, framing.series_col) if c is not None]


def _key_type(values: pd.Series) -> str:
    """The MLflow column type of a time or series column, as the training data held it."""
    if pd.api.types.is_datetime64_any_dtype(values):
        return "datetime"
    if pd.api.types.is_integer_dtype(values):
        return "long"
    return "string"


def _column_type(values: pd.Series) -> str:
    return "long" if pd.api.types.is_integer_dtype(values) else "double"


def input_example(detector: "Detector", X: pd.DataFrame | np.ndarray) -> pd.DataFrame | np.ndarray:
    """The first rows of the training data in the dtypes the signature declares (a series model's time
    and series columns first, as they were)."""
    schema = detector.schema_
    if schema.image is not None:
        s = schema.image
        return np.asarray(X[:2], dtype=np.float32).reshape(-1, s.channels, s.height, s.width)
    frame = X.head(EXAMPLE_ROWS) if isinstance(X, pd.DataFrame) else \
        pd.DataFrame(np.asarray(X)[:EXAMPLE_ROWS], columns=schema.names)
    frame = frame.reset_index(drop=True)
    out = {}
    for name in _key_columns(detector):
        values = frame[name]
        if pd.api.types.is_datetime64_any_dtype(values):  # MLflow's datetime type is timezone-naive
            out[name] = values.dt.tz_convert(None) if values.dt.tz is not None else values
        elif pd.api.types.is_integer_dtype(values):
            out[name] = values.astype(np.int64)
        else:
            out[name] = pd.Series([None if pd.isna(v) else str(v) for v in values], dtype=object)
    for col in schema.columns:
        values = frame[col.name]
        if col.kind == "numeric" and pd.api.types.is_integer_dtype(values) and not pd.api.types.is_bool_dtype(values):
            out[col.name] = values.astype(np.int64)  # declared long: MLflow refuses int64 for a double column
        elif col.kind == "numeric":
            out[col.name] = values.astype(np.float64)
        else:
            out[col.name] = pd.Series([None if pd.isna(v) else str(v) for v in values], dtype=object)
    return pd.DataFrame(out)


def signature(detector: "Detector", example: pd.DataFrame | np.ndarray):
    """Inputs from the model's schema (numeric -> double, or long where training held integers,
    categorical -> string, images -> float32 tensor; a series model's time column -> datetime, which
    MLflow takes timezone-naive: UTC), outputs from scoring the example, and the ``top_k`` parameter."""
    from mlflow.models import ModelSignature, infer_signature
    from mlflow.types import ColSpec, Schema, TensorSpec
    from mlflow.types.schema import ParamSchema, ParamSpec

    schema = detector.schema_
    if schema.image is not None:
        s = schema.image
        inputs = Schema([TensorSpec(np.dtype(np.float32), (-1, s.channels, s.height, s.width))])
    else:
        keys = [ColSpec(_key_type(example[name]), name) for name in _key_columns(detector)]
        inputs = Schema(keys + [ColSpec(_column_type(example[c.name]) if c.kind == "numeric" else "string", c.name)
                                for c in schema.columns])
    outputs = infer_signature(model_output=detector.score_frame(example, top_k=DEFAULT_TOP_K)).outputs
    params = ParamSchema([ParamSpec("top_k", "long", DEFAULT_TOP_K)])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def pip_requirements() -> list[str]:
    """What ``mlflow models serve`` needs: this package (which pulls numpy, pandas, safetensors...),
    torch and mlflow, pinned to the versions that trained the model (local build tags dropped)."""
    from importlib.metadata import version

    import mlflow

    from anomaly_ae.version import __version__

    return [f"anomaly-ae=={__version__}", f"torch=={version('torch').split('+')[0]}",
            f"mlflow=={mlflow.__version__}"]


def save_pyfunc_model(detector: "Detector", model_dir: Path, dst: Path, X: pd.DataFrame | np.ndarray,
                      *, run_id: str | None = None, artifact_path: str = "model") -> Path:
    """Write an MLflow pyfunc model directory at ``dst`` wrapping the saved model at ``model_dir``."""
    import mlflow.pyfunc
    from mlflow.models import Model

    from anomaly_ae.persistence import FILES, MANIFEST

    # Copy exactly the saved-model files (nothing else that may sit in the folder) under a fixed name.
    staging = dst.parent / f".{dst.name}-data" / DATA_DIR
    staging.mkdir(parents=True)
    for name in (*FILES, MANIFEST):
        shutil.copy2(Path(model_dir) / name, staging / name)
    example = input_example(detector, X)
    mlflow.pyfunc.save_model(
        path=str(dst), loader_module=LOADER_MODULE, data_path=str(staging),
        mlflow_model=Model(run_id=run_id, artifact_path=artifact_path),
        signature=signature(detector, example), input_example=example,
        pip_requirements=pip_requirements())
    shutil.rmtree(staging.parent)
    return dst
