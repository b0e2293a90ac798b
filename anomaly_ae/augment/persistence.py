"""Saved generators: the same trust boundary as saved detectors (see anomaly_ae/persistence.py).

A directory of JSON (config, schema, preprocessing, conditions, quality) and safetensors weights,
with manifest.json holding the SHA-256 and size of each file. Loading checks every file against
the manifest before parsing it and loads the weights with `strict=True`; nothing is unpickled or
executed. The SHA-256 of the manifest itself is the generator's fingerprint, recorded as the
provenance of detectors trained on its rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from anomaly_ae.augment.conditions import ConditionEncoder
from anomaly_ae.augment.gan_training import GanHistory
from anomaly_ae.data.preprocess import Preprocessor
from anomaly_ae.data.schema import Schema
from anomaly_ae.exceptions import ModelLoadError
from anomaly_ae.models import build_model
from anomaly_ae.persistence import (RETIRED_PARAMS, json_bytes, manifest_bytes, named_as, read_verified,
                                    resolve_model_path, sha256, write_directory)
from anomaly_ae.runtime import resolve_device
from anomaly_ae.training import History
from anomaly_ae.version import __version__

if TYPE_CHECKING:
    from anomaly_ae.augment.generator import Generator

FORMAT = "anomaly_ae.generator"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
FILES = ("config.json", "schema.json", "preprocess.json", "conditions.json", "quality.json", "weights.safetensors")


def generator_files(gen: "Generator") -> dict[str, bytes]:
    """Every file of the saved form, manifest included, as bytes (deterministic for one fitted model)."""
    params = gen.get_params()
    for key in ("hidden_dims", "condition_cols"):
        if params[key] is not None and not isinstance(params[key], str):
            params[key] = list(params[key])
    config = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "anomaly_ae_version": __version__,
        "torch_version": torch.__version__, "params": params, "model_spec": gen.model_spec_,
        "output_info": gen.output_info_, "image_ndim": gen.image_ndim_,
        "output_columns": gen.output_schema_.names if gen.schema_.image is None else None,
        "training": {"kind": type(gen.history_).__name__, **gen.history_.to_dict()},
    }
    state = {k: v.detach().cpu().contiguous() for k, v in gen.module_.state_dict().items()}
    contents = {
        "config.json": json_bytes(config),
        "schema.json": json_bytes(gen.schema_.to_dict()),
        "preprocess.json": json_bytes(gen.preprocessor_.to_dict()),
        "conditions.json": json_bytes(gen.conditions_.to_dict()),
        "quality.json": json_bytes(gen.quality_),
        "weights.safetensors": save_safetensors(state, metadata={"format": FORMAT}),
    }
    contents[MANIFEST] = manifest_bytes(contents, format_name=FORMAT, format_version=FORMAT_VERSION)
    return contents


def generator_fingerprint(gen: "Generator") -> str:
    return sha256(generator_files(gen)[MANIFEST])


def save_generator(gen: "Generator", path: Path) -> Path:
    contents = generator_files(gen)
    return write_directory(path, contents, kind="generator", format_name=FORMAT)


def load_generator(cls: type["Generator"], path_or_uri: str | Path) -> "Generator":
    path = resolve_model_path(path_or_uri, kind="generator")
    with named_as(path_or_uri, path):
        return _load_generator(cls, path)


def _load_generator(cls: type["Generator"], path: Path) -> "Generator":
    contents = read_verified(path, FILES, kind="generator", format_name=FORMAT, format_version=FORMAT_VERSION)
    try:
        config = json.loads(contents["config.json"])
        schema = Schema.from_dict(json.loads(contents["schema.json"]))
        if schema.image is None:
            by_name = {c.name: c for c in schema.columns}
            output_schema = Schema([by_name[n] for n in config["output_columns"]], from_array=schema.from_array)
        else:
            output_schema = schema
        preprocessor = Preprocessor.from_dict(json.loads(contents["preprocess.json"]), output_schema)
        conditions = ConditionEncoder.from_dict(json.loads(contents["conditions.json"]))
        quality = json.loads(contents["quality.json"])
        gen = cls(**{k: v for k, v in config["params"].items() if k not in RETIRED_PARAMS})
        spec = config["model_spec"]
        training = dict(config["training"])
        kind = training.pop("kind")
        history = GanHistory(**training) if kind == "GanHistory" else History(**training)
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{path} has a malformed generator file ({exc}); re-save the generator") from None
    try:
        state = load_safetensors(contents["weights.safetensors"])
        module = build_model(spec)
        module.load_state_dict(state, strict=True)
    except Exception as exc:  # safetensors' own errors, or weights that do not fit the declared model
        raise ModelLoadError(f"the weights in {path} do not fit the generator they declare: {exc}") from None
    gen.device_ = resolve_device(gen.device, fall_back_to_cpu=True)
    gen.module_ = module.to(gen.device_).eval()
    gen.schema_, gen.output_schema_ = schema, output_schema
    gen.preprocessor_, gen.conditions_ = preprocessor, conditions
    gen.model_spec_, gen.output_info_, gen.image_ndim_ = spec, config["output_info"], config["image_ndim"]
    gen.history_, gen.quality_ = history, quality
    gen.n_features_in_ = schema.n_features if schema.image is None else \
        schema.image.channels * schema.image.height * schema.image.width
    return gen
