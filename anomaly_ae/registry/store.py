"""The model registry side: resolve a URI to a concrete version, download it with hash checks,
register a run's model, move aliases (with an optional evaluation gate) and list versions.

Trust. A registered version carries tags written at registration: the SHA-256 of the saved
model's manifest.json, each file's SHA-256 and the model format. ``download_model`` refuses a
version whose format this package cannot read, and a manifest.json whose hash differs from the
tag; ``Detector.load`` then checks every file against that manifest and only parses JSON and
safetensors. So a swapped weights file is caught by the manifest, and a swapped weights file
*with* a rewritten manifest is caught by the tag.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import pandas as pd

from anomaly_ae.version import __version__
from anomaly_ae.exceptions import DataError, ModelLoadError, RegistryError
from anomaly_ae.persistence import (FORMAT_VERSION, MANIFEST, REMOTE_SCHEMES, manifest_digest, manifest_hashes,
                                    named_as)
from anomaly_ae.registry.connection import (DEFAULT_BOUNDS, HttpBounds, TrackingTarget, client, mlflow_errors,
                                           tracking_target)
from anomaly_ae.registry.pyfunc import DATA_DIR

if TYPE_CHECKING:
    from anomaly_ae.detector import Detector

MODEL_ARTIFACT_PATH = "model"
MANIFEST_TAG = "anomaly_ae.manifest_sha256"
FILES_TAG = "anomaly_ae.manifest"
FORMAT_TAG = "anomaly_ae.format_version"
PACKAGE_TAG = "anomaly_ae.version"
KIND_TAG = "anomaly_ae.kind"  # detector, series or generator; versions registered without it are detectors
MLMODEL_TAG = "anomaly_ae.mlmodel_sha256"  # the pyfunc wrapper's MLmodel (its loader module), as registered
# every file of the pyfunc wrapper beside the saved model (MLmodel, requirements.txt, conda.yaml, ...): what
# `mlflow models serve` installs and imports, as registered
WRAPPER_TAG = "anomaly_ae.wrapper_sha256"
# Kinds that `Detector.load` reads (a series model comes back as a SeriesDetector), and how messages name each.
DETECTOR_KINDS = ("detector", "series")
KIND_NAMES = {"detector": "detector", "series": "series detector", "generator": "generator"}
GATE_METRICS = ("auroc", "auprc")  # higher is better for both


@dataclass(frozen=True)
class ModelRef:
    """Which concrete model a URI points to right now.

    For ``models:/NAME@ALIAS`` the version the alias currently names (poll ``resolve_model`` and
    compare to notice that it moved); for ``models:/NAME/V`` that version; for ``runs:/RUN/PATH``
    the run; for a local directory its name and, as ``version``, the first 12 hex digits of the
    SHA-256 of its manifest.json.
    """

    uri: str
    name: str | None
    version: str | None
    alias: str | None
    run_id: str | None

    @property
    def pinned_uri(self) -> str:
        """A URI for exactly this model: ``models:/NAME/V`` for registry URIs, else the URI itself."""
        if self.uri.startswith("models:/") and self.name and self.version:
            return f"models:/{self.name}/{self.version}"
        return self.uri


def is_remote(uri: str | Path) -> bool:
    return str(uri).startswith(REMOTE_SCHEMES)


def check_model_name(name: str) -> None:
    """Refuse a registered-model name that a models:/ URI cannot name afterwards (checked before training,
    so a run is not logged for nothing)."""
    bad = next((c for c in ("@", "/", ":", "'", '"', "\\") if c in name), None)  # ':' MLflow refuses itself
    if not name.strip() or bad is not None or any(ord(c) < 32 for c in name) or name in (".", ".."):
        raise RegistryError(f"cannot register a model named {name[:60]!r}: "
                            + (f"{bad!r} would break models:/NAME@ALIAS URIs or registry searches; " if bad else "")
                            + "use letters, digits, '-', '_' and '.' (e.g. payments-detector)")


def parse_models_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME@ALIAS`` -> (NAME, None, ALIAS); ``models:/NAME/V`` -> (NAME, V, None)."""
    rest = uri[len("models:/"):].strip("/")
    if "@" in rest:
        name, alias = rest.rsplit("@", 1)
        if name and alias and "/" not in alias:
            return name, None, alias
    elif "/" in rest:
        name, version = rest.rsplit("/", 1)
        if name and (version.isdigit() or version == "latest"):
            return name, version, None
    raise ModelLoadError(f"cannot parse model URI {uri!r}: use models:/NAME@ALIAS (e.g. models:/detector@champion) "
                         "or models:/NAME/VERSION (e.g. models:/detector/3)")


# ---------------------------------------------------------------------- resolving
def resolve_model(uri: str, *, tracking_uri: str | None = None, bounds: HttpBounds = DEFAULT_BOUNDS) -> ModelRef:
    """Which concrete version ``uri`` names now: one cheap registry request, bounded in time."""
    return _resolve(str(uri), tracking_uri, bounds)[0]


def _resolve(uri: str, tracking_uri: str | None, bounds: HttpBounds = DEFAULT_BOUNDS
             ) -> tuple[ModelRef, dict[str, str], TrackingTarget | None]:
    if not is_remote(uri):
        path = Path(uri)
        digest = manifest_digest(path)[:12]
        return ModelRef(uri, path.resolve().name, digest, None, None), {}, None
    target = _load_target(uri, tracking_uri, bounds)
    c = client(target.uri)
    if uri.startswith("models:/"):
        name, version, alias = parse_models_uri(uri)
        with mlflow_errors(target, f"resolving {uri}", error=ModelLoadError):
            mv = _model_version(c, target, name, version, alias, uri, ModelLoadError)
        return ModelRef(uri, name, str(mv.version), alias, mv.run_id), dict(mv.tags or {}), target
    if uri.startswith("runs:/"):
        run_id = uri[len("runs:/"):].split("/", 1)[0]
        with mlflow_errors(target, f"resolving {uri}", error=ModelLoadError):
            run = c.get_run(run_id)
        return ModelRef(uri, None, None, None, run_id), dict(run.data.tags), target
    return ModelRef(uri, None, None, None, None), {}, target


def _load_target(uri: str, tracking_uri: str | None, bounds: HttpBounds) -> TrackingTarget:
    try:
        return tracking_target(tracking_uri, bounds=bounds)
    except RegistryError as exc:
        raise ModelLoadError(f"cannot load {uri}: {exc}") from None


def _model_version(c: Any, target: TrackingTarget, name: str, version: str | None, alias: str | None,
                   uri: str, error: type[Exception]) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        if alias is not None:
            return c.get_model_version_by_alias(name, alias)
        if version == "latest":
            versions = c.search_model_versions(f"name='{_quote(name)}'")
            if not versions:
                raise error(_missing_message(c, target, name, version, alias, uri))
            return max(versions, key=lambda v: int(v.version))
        return c.get_model_version(name, version)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            raise
        message = _missing_message(c, target, name, version, alias, uri)
        if message is None:
            raise
        raise error(message) from None


def _missing_message(c: Any, target: TrackingTarget, name: str, version: str | None, alias: str | None,
                     uri: str) -> str | None:
    """Say exactly what is missing: the model, the alias or the version (None: nothing is)."""
    from mlflow.exceptions import MlflowException

    try:
        model = c.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        names = sorted(m.name for m in c.search_registered_models(max_results=20))
        known = f"registered models: {', '.join(names)}" if names else "no models are registered there yet"
        return f"{uri}: there is no registered model named {name!r} in {target.short()} ({known})"
    aliases = dict(model.aliases or {})
    if alias is not None and alias not in aliases:
        have = ", ".join(f"@{a} -> v{v}" for a, v in sorted(aliases.items())) or "none"
        return (f"{uri}: model {name!r} has no alias @{alias} (its aliases: {have}); "
                f"set one with `anomaly-ae promote {name} --version V --alias {alias}`")
    if alias is None and version is not None:
        versions = sorted(int(v.version) for v in c.search_model_versions(f"name='{_quote(name)}'"))
        have = f"versions {versions[0]}..{versions[-1]}" if versions else "no versions"
        return f"{uri}: model {name!r} has no version {version} (it has {have})"
    return None


def _quote(name: str) -> str:
    return name.replace("\\", "\\\\").replace("'", "\\'")


# ---------------------------------------------------------------------- downloading and loading
_scratch: tempfile.TemporaryDirectory | None = None


def _scratch_dir() -> Path:
    """A fresh folder under one per-process temporary directory that is removed at exit."""
    global _scratch
    if _scratch is None:
        _scratch = tempfile.TemporaryDirectory(prefix="anomaly_ae-models-")
    return Path(tempfile.mkdtemp(dir=_scratch.name))


def download_model(uri: str, dst: Path | None = None, *, tracking_uri: str | None = None,
                   kind: str = "detector") -> Path:
    """Download the saved-model files a URI names and return their local directory.

    ``models:/NAME@ALIAS`` is first resolved to its version, and that exact version is downloaded.
    The version's format tag must match this package and its manifest.json must match the
    SHA-256 recorded at registration; ``Detector.load`` then checks every file against the
    manifest. A local path is returned as it is. ``dst`` defaults to a temporary folder removed
    when the process exits. ``kind`` ("detector" or "generator") must match what was registered.
    """
    ref, tags, target = _resolve(str(uri), tracking_uri)
    if target is None:
        return Path(uri)
    return _download(ref, tags, target, Path(dst) if dst is not None else _scratch_dir(), kind)


def _download(ref: ModelRef, tags: dict[str, str], target: TrackingTarget, dst: Path,
              kind: str = "detector") -> Path:
    import mlflow.artifacts

    expected = _expected_manifest(ref, tags, kind)
    dst.mkdir(parents=True, exist_ok=True)
    with mlflow_errors(target, f"downloading {ref.pinned_uri}", error=ModelLoadError):
        source = ref.pinned_uri
        if ref.name is not None:
            # MLflow resolves models:/ URIs against its *global* registry URI, whatever registry_uri
            # download_artifacts is given: ask our client for the version's artifact location instead.
            source = client(target.uri).get_model_version_download_uri(ref.name, ref.version)
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dst),
                                                         tracking_uri=target.uri, registry_uri=target.uri))
    model_dir = _locate(local, ref)
    if expected is not None and manifest_digest(model_dir) != expected:
        raise ModelLoadError(
            f"{ref.pinned_uri}: {MANIFEST} does not match the SHA-256 recorded when the model was registered "
            f"(tag {MANIFEST_TAG}): the artifacts were modified after registration; refusing to load them")
    if model_dir == local / "data" / DATA_DIR:  # logged as a pyfunc model: mlflow's own loaders read MLmodel
        mlmodel = local / "MLmodel"
        if not mlmodel.is_file():
            raise ModelLoadError(f"{ref.pinned_uri} has no MLmodel file (the pyfunc wrapper that "
                                 "mlflow.pyfunc.load_model and `mlflow models serve` read): register it again")
        recorded = tags.get(MLMODEL_TAG)  # versions registered before the tag existed have none
        if recorded is not None and hashlib.sha256(mlmodel.read_bytes()).hexdigest() != recorded:
            raise ModelLoadError(f"{ref.pinned_uri}: MLmodel does not match the SHA-256 recorded when the model was "
                                 f"registered (tag {MLMODEL_TAG}): it was modified after registration; refusing it")
        recorded = tags.get(WRAPPER_TAG)
        if recorded is not None and wrapper_digest(local) != recorded:
            raise ModelLoadError(f"{ref.pinned_uri}: the pyfunc wrapper's files (MLmodel, requirements.txt, "
                                 f"conda.yaml, ...) do not match the SHA-256 recorded when the model was registered "
                                 f"(tag {WRAPPER_TAG}): they were modified after registration; refusing them")
    return model_dir


def wrapper_digest(pyfunc_dir: Path) -> str:
    """SHA-256 over the names and contents of a pyfunc model's files outside the saved model (data/)."""
    digest = hashlib.sha256()
    files = [p for p in pyfunc_dir.rglob("*") if p.is_file() and p.relative_to(pyfunc_dir).parts[0] != "data"]
    for path in sorted(files):
        digest.update(path.relative_to(pyfunc_dir).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _expected_manifest(ref: ModelRef, tags: dict[str, str], kind: str = "detector") -> str | None:
    registered_kind = tags.get(KIND_TAG, "detector")
    if registered_kind != kind and not (registered_kind in DETECTOR_KINDS and kind in DETECTOR_KINDS):
        loader = "Generator.load / `anomaly-ae generate sample`" if registered_kind == "generator" else \
            "Detector.load / `anomaly-ae score`"
        raise ModelLoadError(f"{ref.pinned_uri} is a registered {KIND_NAMES.get(registered_kind, registered_kind)}, "
                             f"not a {KIND_NAMES.get(kind, kind)}; load it with {loader}")
    fmt, expected_format = tags.get(FORMAT_TAG), _format_version(kind)
    if fmt is not None and fmt != str(expected_format):
        raise ModelLoadError(
            f"{ref.pinned_uri} was saved in {kind} format {fmt} by anomaly_ae {tags.get(PACKAGE_TAG, '?')}; this "
            f"is anomaly_ae {__version__} (format {expected_format}). Load it with that version, or retrain and "
            "register it with this one")
    if ref.name is None and ref.run_id is None:  # mlflow-artifacts:/...: no version or run holds a hash to check
        raise ModelLoadError(f"{ref.uri} names artifacts without a registered version or run, so its files cannot be "
                             "verified against a recorded hash; load it as models:/NAME/VERSION or runs:/RUN_ID/model")
    if not tags.get(MANIFEST_TAG):  # a version's tag, or a run's (runs:/): written when it was logged
        what = "registered" if ref.name is not None else "logged"
        raise ModelLoadError(
            f"{ref.pinned_uri} has no {MANIFEST_TAG} tag, so its files cannot be verified: it was not {what} "
            "by anomaly_ae (or the tag was removed). Log and register models with `anomaly-ae train --register NAME`")
    return tags.get(MANIFEST_TAG)


def _format_version(kind: str) -> int:
    if kind == "generator":
        from anomaly_ae.augment.persistence import FORMAT_VERSION as GENERATOR_FORMAT_VERSION

        return GENERATOR_FORMAT_VERSION
    return FORMAT_VERSION


def _locate(local: Path, ref: ModelRef) -> Path:
    for candidate in (local / "data" / DATA_DIR, local, local / MODEL_ARTIFACT_PATH / "data" / DATA_DIR):
        if (candidate / MANIFEST).is_file():
            return candidate
    raise ModelLoadError(f"{ref.pinned_uri} holds no anomaly_ae saved model (no data/{DATA_DIR}/{MANIFEST}): "
                         "it was not logged by anomaly_ae")


def load_model(uri: str, *, tracking_uri: str | None = None,
               bounds: HttpBounds = DEFAULT_BOUNDS) -> tuple["Detector", ModelRef]:
    """Resolve ``uri``, download exactly that version (not the alias again: no race with a moving
    alias), verify and load it. Returns the detector and what it was resolved to."""
    from anomaly_ae.detector import Detector

    ref, tags, target = _resolve(str(uri), tracking_uri, bounds)
    if target is None:
        return Detector.load(Path(uri)), ref
    with tempfile.TemporaryDirectory(prefix="anomaly_ae-load-") as tmp:
        model_dir = _download(ref, tags, target, Path(tmp))
        with named_as(ref.pinned_uri, model_dir):
            return Detector.load(model_dir), ref


# ---------------------------------------------------------------------- registering
def version_tags(model_dir: Path, kind: str | None = None) -> dict[str, str]:
    """The trust tags of a saved model: kind, manifest hash, per-file hashes, format and package version.

    `kind` None: what the saved detector's config.json says ("detector" or "series")."""
    manifest = json.loads((Path(model_dir) / MANIFEST).read_bytes())
    if kind is None:
        kind = saved_kind(model_dir)
    return {
        KIND_TAG: kind,
        MANIFEST_TAG: manifest_digest(model_dir),
        FILES_TAG: json.dumps(manifest_hashes(model_dir), sort_keys=True),
        FORMAT_TAG: str(manifest.get("format_version")),
        PACKAGE_TAG: str(manifest.get("anomaly_ae_version")),
    }


def saved_kind(model_dir: Path) -> str:
    """"detector" or "series": the kind a saved detector's config.json records (older models: detector)."""
    try:
        kind = json.loads((Path(model_dir) / "config.json").read_bytes()).get("kind", "detector")
    except (OSError, ValueError, AttributeError):
        return "detector"
    return kind if kind in DETECTOR_KINDS else "detector"


_REGISTERED_MODEL_DESCRIPTIONS = {
    "detector": "Anomaly detectors trained with anomaly_ae on normal data. Load a version with "
                "anomaly_ae.Detector.load('models:/{name}@champion') (hash-checked, never unpickles) or "
                "mlflow.pyfunc.load_model('models:/{name}@champion').predict(df).",
    "series": "Series anomaly detectors (metric streams scored by windows in time, per series) trained with "
              "anomaly_ae on normal history. Load a version with "
              "anomaly_ae.Detector.load('models:/{name}@champion') (a SeriesDetector; hash-checked, never "
              "unpickles) or mlflow.pyfunc.load_model('models:/{name}@champion').predict(df) with the time and "
              "series columns in df.",
    "generator": "Generators of normal data trained with anomaly_ae. Load a version with "
                 "anomaly_ae.Generator.load('models:/{name}@champion') (hash-checked, never unpickles), or "
                 "`anomaly-ae generate sample models:/{name}@champion -n 1000 -o rows.parquet`.",
}


def register_run_model(target: TrackingTarget, run_id: str, artifact_uri: str, name: str, *,
                       tags: dict[str, str], description: str, artifact_path: str = MODEL_ARTIFACT_PATH) -> ModelRef:
    """Register ``<run artifacts>/<artifact_path>`` as a new version of ``name`` (created if needed).

    One registered model holds one kind: a detector is never registered under a generator's name, nor a
    series detector (which takes time and series columns) under a row detector's."""
    try:
        return _register(target, run_id, artifact_uri, name, tags, description, artifact_path)
    except RegistryError as exc:  # the run is logged by now: say where its model is
        raise type(exc)(f"{exc}; the run is logged and its model is at runs:/{run_id}/{artifact_path}") from None


def _register(target: TrackingTarget, run_id: str, artifact_uri: str, name: str, tags: dict[str, str],
              description: str, artifact_path: str) -> ModelRef:
    from mlflow.exceptions import MlflowException

    kind = tags.get(KIND_TAG, "detector")
    c = client(target.uri)
    with mlflow_errors(target, f"registering model {name!r}"):
        try:
            c.create_registered_model(name, tags={KIND_TAG: kind},
                                      description=_REGISTERED_MODEL_DESCRIPTIONS[kind].format(name=name))
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            existing = c.get_registered_model(name).tags.get(KIND_TAG, "detector")
            if existing != kind:
                raise RegistryError(_other_kind(name, existing, kind))
        mv = c.create_model_version(name, source=f"{artifact_uri}/{artifact_path}", run_id=run_id,
                                    tags=tags, description=description)
    return ModelRef(f"models:/{name}/{mv.version}", name, str(mv.version), None, run_id)


def _other_kind(name: str, existing: str, kind: str) -> str:
    return (f"models:/{name} holds {KIND_NAMES.get(existing, existing)}s; register this {KIND_NAMES.get(kind, kind)} "
            f"under another name (a service or job that loads models:/{name} sends the input of its kind)")


def check_registrable(name: str, kind: str, target: TrackingTarget) -> None:
    """Refuse, before training, a name that already holds another kind of model (`register_run_model`
    refuses it too, but only once the run is logged). An embedded store not created yet holds no name."""
    from mlflow.exceptions import MlflowException

    if target.embedded_db is not None and not target.embedded_db.exists():
        return
    with mlflow_errors(target, f"reading registered model {name!r}"):
        try:
            existing = client(target.uri).get_registered_model(name).tags.get(KIND_TAG, "detector")
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return
            raise
    if existing != kind:
        raise RegistryError(_other_kind(name, existing, kind))


# ---------------------------------------------------------------------- promoting
class PromotionRefused(RegistryError):
    """The promotion gate found the challenger worse than the version it must beat."""


@dataclass(frozen=True)
class Promotion:
    name: str
    version: str
    alias: str
    previous: str | None                  # version the alias named before, if any
    metric: str | None = None
    score: float | None = None            # the challenger's metric on the evaluation data
    baseline_version: str | None = None
    baseline_score: float | None = None
    note: str = ""

    def describe(self) -> str:
        moved = f"@{self.alias} -> {self.name} v{self.version}"
        was = f" (was v{self.previous})" if self.previous and self.previous != self.version else ""
        gate = ""
        if self.metric and self.baseline_score is not None:
            gate = (f"; {self.metric} {self.score:.4f} vs {self.baseline_score:.4f} of v{self.baseline_version}")
        elif self.metric and self.score is not None:  # a first promotion through the gate
            gate = f"; {self.metric} {self.score:.4f}"
        return f"{moved}{was}{gate}{'; ' + self.note if self.note else ''}"


def promote(name: str, version: str | int, alias: str = "champion", *, require_better_than: str | None = None,
            metric: str = "auroc", eval_data: pd.DataFrame | Path | str | None = None, label_col: str | None = None,
            drop_cols: Sequence[str] = (), tracking_uri: str | None = None) -> Promotion:
    """Point ``alias`` at ``version``. With ``require_better_than=ALIAS`` both that alias's version and
    the challenger are loaded (hash-checked) and scored on the same labelled ``eval_data``; a
    challenger whose ``metric`` is lower is refused with ``PromotionRefused`` and nothing moves."""
    version = str(version).strip()
    if not version.isdigit():  # "latest" would be downloaded and loaded before MLflow refused it
        raise RegistryError(f"--version takes a version number such as 3, got {version[:40]!r}; `anomaly-ae models "
                            f"list {name}` lists them")
    version = str(int(version))  # "02" is version 2
    target = tracking_target(tracking_uri)
    c = client(target.uri)
    uri = f"models:/{name}/{version}"
    with mlflow_errors(target, f"promoting {uri} to @{alias}"):
        _model_version(c, target, name, version, None, uri, RegistryError)
        previous = _alias_version(c, name, alias)
        result = Promotion(name, version, alias, previous)
        # an alias must never point at a version no service can load: download, verify and load it first
        try:
            loaded = _load_any(uri, target)
        except ModelLoadError as exc:
            raise PromotionRefused(
                f"refusing to promote {name} v{version} to @{alias}: it cannot be loaded ({_without_paths(str(exc))}); "
                f"@{alias} still points to {'v' + previous if previous else 'no version'}") from None
        if require_better_than is not None:
            if not hasattr(loaded, "decision_function"):  # a generator: nothing to score labelled data with
                raise RegistryError(f"{name} holds generators, and --require-better-than compares detectors' scores "
                                    f"on labelled data; compare generators with `anomaly-ae generate report`, then "
                                    f"promote without the gate")
            result = _gate(c, target, result, require_better_than, metric, eval_data, label_col, drop_cols,
                           loaded={version: loaded})
        c.set_registered_model_alias(name, alias, version)
    return result


def _alias_version(c: Any, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(c.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def _load_any(uri: str, target: TrackingTarget) -> Any:
    """Download, verify and load the detector or generator `uri` names (what its kind tag says)."""
    ref, tags, _ = _resolve(uri, target.uri, target.bounds)
    if tags.get(KIND_TAG, "detector") != "generator":
        return load_model(uri, tracking_uri=target.uri, bounds=target.bounds)[0]
    from anomaly_ae.augment.generator import Generator

    with tempfile.TemporaryDirectory(prefix="anomaly_ae-load-") as tmp:
        model_dir = _download(ref, tags, target, Path(tmp), kind="generator")
        with named_as(ref.pinned_uri, model_dir):
            return Generator.load(model_dir)


# An absolute path in an error message (downloads go to a temporary folder that is gone by then).
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/(?:[^\s/'\"]+/)+([^\s/'\"]+)")


def _without_paths(message: str) -> str:
    return _ABSOLUTE_PATH.sub(r"\1", message)


def _gate(c: Any, target: TrackingTarget, result: Promotion, baseline_alias: str, metric: str,
          eval_data: pd.DataFrame | Path | str | None, label_col: str | None, drop_cols: Sequence[str],
          loaded: dict[str, Any] | None = None) -> Promotion:
    from dataclasses import replace

    from anomaly_ae.evaluation import evaluate_scores

    if metric not in GATE_METRICS:
        raise RegistryError(f"unknown gate metric {metric!r}; choose one of {', '.join(GATE_METRICS)}")
    if eval_data is None or not label_col:
        raise RegistryError("--require-better-than needs labelled evaluation data (--eval DATA --label-col COL): "
                            "both versions are scored on it")
    baseline = _alias_version(c, result.name, baseline_alias)
    if baseline is None:
        # A first promotion has nothing to compare with; an alias one letter off an existing one is a typo
        # that would let any challenger through.
        aliases = sorted(c.get_registered_model(result.name).aliases or {})
        close = difflib.get_close_matches(baseline_alias.lower(), [a.lower() for a in aliases], n=1, cutoff=0.75)
        if close:
            meant = next(a for a in aliases if a.lower() == close[0])
            raise PromotionRefused(
                f"refusing to promote {result.name} v{result.version} to @{result.alias}: no version holds "
                f"@{baseline_alias} to compare with; did you mean @{meant}? (the model's aliases: "
                f"{', '.join('@' + a for a in aliases)}); @{result.alias} still points to "
                f"{'v' + result.previous if result.previous else 'no version'}")
        if result.previous is not None and baseline_alias != result.alias:
            # not a first promotion: the version @alias holds would be replaced unchecked
            raise PromotionRefused(
                f"refusing to promote {result.name} v{result.version} to @{result.alias}: no version holds "
                f"@{baseline_alias} to compare with, while @{result.alias} holds v{result.previous}; compare with "
                f"it (--require-better-than {result.alias}) or with an alias that holds a version")
    if baseline == result.version:
        return replace(result, note=f"v{baseline} already holds @{baseline_alias}")
    X, labels, source = _labelled(eval_data, label_col, drop_cols)
    stays = f"@{result.alias} still points to {'v' + result.previous if result.previous else 'no version'}"

    def score(version: str) -> float:
        detector = (loaded or {}).get(version) or load_model(f"models:/{result.name}/{version}",
                                                             tracking_uri=target.uri)[0]
        try:
            report = evaluate_scores(detector.decision_function(X), labels, detector.threshold_)
        except DataError as exc:  # the gate's data must fit the model it lets through
            raise PromotionRefused(f"refusing to promote {result.name} v{result.version} to @{result.alias}: "
                                   f"v{version} cannot score {source} ({exc}); {stays}") from None
        return float(getattr(report, metric))

    if baseline is None:  # a first promotion: nothing to compare with, but the data is still checked
        first = score(result.version)
        return replace(result, metric=metric, score=first,
                       note=f"no version holds @{baseline_alias} yet, so there was nothing to compare with")
    scores = {version: score(version) for version in (result.version, baseline)}
    result = replace(result, metric=metric, score=scores[result.version], baseline_version=baseline,
                     baseline_score=scores[baseline])
    if result.score < result.baseline_score:
        raise PromotionRefused(
            f"refusing to promote {result.name} v{result.version} to @{result.alias}: its {metric} on {source} is "
            f"{result.score:.4f}, worse than {result.baseline_score:.4f} of v{baseline} (@{baseline_alias}); "
            f"@{result.alias} still points to {'v' + result.previous if result.previous else 'no version'}")
    return result


def _labelled(data: pd.DataFrame | Path | str, label_col: str,
              drop_cols: Sequence[str]) -> tuple[pd.DataFrame, Any, str]:
    from anomaly_ae.data.io import read_table

    frame, source = (data, "the evaluation data") if isinstance(data, pd.DataFrame) else (read_table(data), str(data))
    if label_col not in frame.columns:
        raise DataError(f"label column '{label_col}' is not in {source}; columns are {', '.join(map(str, frame.columns))}")
    drop = [c for c in drop_cols if c != label_col]
    unknown = [c for c in drop if c not in frame.columns]
    if unknown:
        raise DataError(f"--drop-cols names column(s) not in {source}: {', '.join(unknown)}")
    return frame.drop(columns=[label_col, *drop]), frame[label_col].to_numpy(), source


# ---------------------------------------------------------------------- listing
@dataclass(frozen=True)
class VersionSummary:
    version: str
    aliases: list[str] = field(default_factory=list)
    created: str = ""
    run_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    description: str = ""

    def metric(self, key: str) -> str:
        return self.tags.get(key, "")


def list_versions(name: str, *, tracking_uri: str | None = None) -> list[VersionSummary]:
    """Every version of ``name``, newest first, with its aliases and tags (model, score, threshold, metrics)."""
    from datetime import datetime, timezone

    from mlflow.exceptions import MlflowException

    target = tracking_target(tracking_uri)
    c = client(target.uri)
    uri = f"models:/{name}"
    with mlflow_errors(target, f"listing {uri}"):
        try:
            model = c.get_registered_model(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            raise RegistryError(_missing_message(c, target, name, None, None, uri)) from None
        aliases = dict(model.aliases or {})
        versions = c.search_model_versions(f"name='{_quote(name)}'")
    by_version: dict[str, list[str]] = {}
    for alias, v in aliases.items():
        by_version.setdefault(str(v), []).append(alias)
    out = []
    for mv in sorted(versions, key=lambda v: int(v.version), reverse=True):
        created = datetime.fromtimestamp(mv.creation_timestamp / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")
        out.append(VersionSummary(str(mv.version), sorted(by_version.get(str(mv.version), [])), created, mv.run_id,
                                  dict(mv.tags or {}), mv.description or ""))
    return out
