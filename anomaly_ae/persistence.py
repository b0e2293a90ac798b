"""The saved-model directory: the trust boundary between whoever trained a model and whoever loads it.

Only JSON and safetensors are ever read, each file is checked against the SHA-256 in
manifest.json before it is parsed, and the weights must match the declared architecture exactly
(`load_state_dict(strict=True)`). Nothing in the directory is executed or unpickled.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import shutil
import stat
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from anomaly_ae.calibration import AlertRule, Calibration
from anomaly_ae.data.preprocess import Preprocessor
from anomaly_ae.data.schema import Schema
from anomaly_ae.data.windows import SeriesFraming
from anomaly_ae.exceptions import ConfigurationError, ModelLoadError
from anomaly_ae.models import build_model
from anomaly_ae.runtime import resolve_device
from anomaly_ae.scoring import ModelScorer
from anomaly_ae.training import History
from anomaly_ae.version import __version__

if TYPE_CHECKING:
    from anomaly_ae.detector import Detector

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
FILES = ("config.json", "schema.json", "preprocess.json", "calibration.json", "weights.safetensors")
REMOTE_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")
# Who downloads a remote URI: the registry layer, which sits above this one and is found by name
# when such a URI is loaded (as fsspec finds protocol implementations), so this module never
# imports MLflow code and the layers keep one direction.
REMOTE_RESOLVER = "anomaly_ae.registry.store:download_model"
# The class each kind of saved detector loads as, found by name at load time (a series model loaded
# through `Detector.load`, e.g. by the registry or the service, comes back as a SeriesDetector).
KIND_CLASSES = {"detector": "anomaly_ae.detector:Detector", "series": "anomaly_ae.series_detector:SeriesDetector"}
# Parameters older versions saved that no longer exist; ignored when loading.
RETIRED_PARAMS = frozenset({"n_threads"})


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def json_bytes(payload: Any) -> bytes:
    return json.dumps(payload, indent=1, sort_keys=True, allow_nan=False).encode()


def save_detector(detector: "Detector", path: Path) -> Path:
    params = dict(detector.fitted_params_)
    # by repr: a parameter may be an array (hidden_dims=np.array([64, 32])), whose == is no bool
    changed = sorted(k for k, v in detector.get_params().items() if repr(params.get(k)) != repr(v))
    if changed:
        warnings.warn(f"parameters changed by set_params since fit ({', '.join(changed)}) are not saved: the model "
                      "is saved as it was fitted; fit again to apply them", UserWarning, stacklevel=3)
    if params["hidden_dims"] is not None:
        params["hidden_dims"] = [int(h) for h in params["hidden_dims"]]
    config = {
        "format_version": FORMAT_VERSION,
        "anomaly_ae_version": __version__,
        "torch_version": torch.__version__,
        "params": params,
        "model_spec": detector.model_spec_,
        "score_type": detector.score_type_,
        "n_members": len(detector.members_),
        "input_shape": detector.input_shape_,
        "n_reference": None if detector.neighbors_ is None else int(detector.neighbors_.reference.shape[0]),
        "term_scales": detector.term_scales_,
        # knn_multiscale: the window lengths its terms compare (their scales are weights)
        "neighbor_steps": getattr(detector.neighbors_, "steps", None),
        "training": [h.to_dict() for h in detector.history_],
        "training_metadata": detector.training_metadata_,
        "kind": "detector",
    }
    framing = getattr(detector, "framing_", None)
    if framing is not None:
        config["kind"] = "series"
        config["series"] = {"framing": framing.to_dict(), "alert_rule": detector.alert_rule_.to_dict(),
                            "alert_stats": detector.alert_stats_}
    modules = {f"member{i}": m for i, m in enumerate(detector.members_)}
    if detector.neighbors_ is not None:
        modules["neighbors"] = detector.neighbors_
    state = {f"{prefix}.{k}": v.detach().cpu().contiguous()
             for prefix, m in modules.items() for k, v in m.state_dict().items()}
    contents = {
        "config.json": json_bytes(config),
        "schema.json": json_bytes(detector.schema_.to_dict()),
        "preprocess.json": json_bytes(detector.preprocessor_.to_dict()),
        "calibration.json": json_bytes(detector.calibration_.to_dict()),
        "weights.safetensors": save_safetensors(state, metadata={"format": "anomaly_ae"}),
    }
    contents[MANIFEST] = manifest_bytes(contents)
    return write_directory(Path(path), contents, kind="model")


def manifest_bytes(contents: dict[str, bytes], *, format_name: str | None = None,
                   format_version: int = FORMAT_VERSION) -> bytes:
    """manifest.json for a saved directory: the SHA-256 and size of every file (and the format:
    None for detectors, whose manifests have none)."""
    manifest = {"format_version": format_version, "anomaly_ae_version": __version__,
                "files": {name: {"sha256": sha256(data), "bytes": len(data)} for name, data in contents.items()}}
    if format_name is not None:
        manifest = {"format": format_name, **manifest}
    return json_bytes(manifest)


# A manifest lists a handful of files: anything larger (or not a plain file) is not one of ours.
MAX_MANIFEST_BYTES = 1 << 20


def _manifest_bytes(path: Path) -> bytes:
    """manifest.json's bytes; OSError when it is missing, a link or not a plain file of at most 1 MiB."""
    status = (path / MANIFEST).lstat()
    if not stat.S_ISREG(status.st_mode) or status.st_size > MAX_MANIFEST_BYTES:
        raise OSError(f"{path / MANIFEST} is a link, not a plain file or larger than a manifest")
    return (path / MANIFEST).read_bytes()


def manifest_digest(path: Path) -> str:
    """SHA-256 of a saved directory's manifest.json: it pins every file, so it names the model's content.
    Raises ModelLoadError when the directory holds no saved model."""
    try:
        return sha256(_manifest_bytes(Path(path)))
    except OSError:
        raise ModelLoadError(f"no saved model at {path}: expected a directory written by Detector.save "
                             f"(with {MANIFEST}) or a models:/ or runs:/ URI") from None


def write_directory(path: Path, contents: dict[str, bytes], *, kind: str, format_name: str | None = None) -> Path:
    """Write files into a sibling staging dir and rename it into place, so a crash never leaves half a
    model; an existing saved {kind} (manifest format `format_name`) is replaced, any other non-empty
    directory (another kind of saved model included) is refused.

    The swap is: NAME -> .NAME.old, staging -> NAME, delete .NAME.old. Whatever state a crash
    leaves is repaired first (`recover_directory`), so the next write always succeeds.
    """
    path = Path(path).expanduser()  # '~/models/x' from Python, as a shell would expand it
    staging = _staging_for(path, kind, format_name)
    try:
        for name, data in contents.items():
            (staging / name).write_bytes(data)
        if path.exists():
            old = _old(path)
            os.replace(path, old)
            os.replace(staging, path)
            shutil.rmtree(old)
        else:
            os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


def check_writable(path: str | Path, *, kind: str = "model", format_name: str | None = None) -> Path:
    """Fail now, not after a long training, if a {kind} cannot be saved at ``path``: the place
    is another kind of directory, or its parent cannot be created or written."""
    path = Path(path).expanduser()
    _staging_for(path, kind, format_name).rmdir()
    return path


def _staging_for(path: Path, kind: str, format_name: str | None) -> Path:
    """A new staging directory beside `path`, once whatever a crash left there is repaired and `path` is
    known to be ours to replace; ConfigurationError when the place cannot be written."""
    _check_own_directory(path, kind)
    try:
        recover_directory(path, kind=kind)
        _refuse_foreign(path, kind, format_name)
        return _make_staging(path)
    except OSError as exc:
        if isinstance(exc, FileExistsError) and exc.errno is None:  # ours: says what is in the way
            raise
        blocking = next((p for p in path.parents if p.is_file()), None)  # as score says of an output path
        why = f"'{blocking}' is a file" if blocking is not None else (exc.strerror or exc)
        raise ConfigurationError(f"cannot save the {kind} to '{path}' ({why}); choose a directory you can write "
                                 "to") from None


def recover_directory(path: Path, *, kind: str = "model") -> None:
    """Repair what an interrupted `write_directory` can leave beside ``path``.

    * ``.NAME.old`` while NAME is missing (killed between the two renames): if it holds a
      complete, manifest-verified {kind}, it is the last good one and is moved back to NAME;
      otherwise it is a half-deleted leftover and is removed.
    * ``.NAME.old`` beside NAME (killed while deleting the replaced one): removed.
    * staging dirs ``.NAME.<host>.<pid>.<random>`` whose writer is gone (and, from versions that
      did not record the pid, ``.NAME.<random>`` untouched for an hour): removed.
    """
    from anomaly_ae.data.io import HOST_TAG, pid_alive

    path.parent.mkdir(parents=True, exist_ok=True)
    old = _old(path)
    if old.is_symlink() or (old.exists() and not old.is_dir()):
        raise FileExistsError(f"{old} is in the way of saving the {kind} to {path}; move it elsewhere")
    if old.is_dir():
        if not path.exists() and not path.is_symlink() and _complete(old):
            os.replace(old, path)
        else:
            shutil.rmtree(old)
    staging = re.compile(rf"\.{re.escape(path.name)}\.(?:([0-9a-f]{{8}})\.(\d+)\.)?[a-z0-9_]{{8}}")
    for candidate in path.parent.iterdir():
        match = staging.fullmatch(candidate.name)
        if match is None or candidate.is_symlink() or not candidate.is_dir():
            continue
        host, pid = match.groups()
        if host is None:
            stale = time.time() - candidate.stat().st_mtime > LEGACY_STAGING_AGE_S
        else:
            stale = host == HOST_TAG and not pid_alive(int(pid))
        if stale:
            shutil.rmtree(candidate, ignore_errors=True)


# Staging dirs from versions without a pid in the name are only removed when nobody wrote them for this long.
LEGACY_STAGING_AGE_S = 3600.0


def _check_own_directory(path: Path, kind: str) -> None:
    """A {kind} is a directory of its own, swapped in by renaming it: '.', '..', '/' or the current
    directory cannot be renamed (and renaming the current one would leave the process in a deleted
    directory)."""
    resolved = path.resolve()
    if path.name in ("", ".", "..") or resolved == Path.cwd().resolve() or resolved.parent == resolved:
        raise ConfigurationError(f"cannot save the {kind} as '{path}': a {kind} is saved as a directory of its "
                                 f"own; name a new one, e.g. '{path / kind}'")


def _old(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def _make_staging(path: Path) -> Path:
    from anomaly_ae.data.io import HOST_TAG

    return Path(tempfile.mkdtemp(prefix=f".{path.name}.{HOST_TAG}.{os.getpid()}.", dir=path.parent))


def _refuse_foreign(path: Path, kind: str, format_name: str | None) -> None:
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise FileExistsError(f"{path} exists and is not a directory; choose an empty or new directory for the {kind}")
    if path.exists() and any(path.iterdir()) and not (path / MANIFEST).exists():
        raise FileExistsError(f"{path} exists and is not a saved {kind}; choose an empty or new directory")
    try:
        found = json.loads(_manifest_bytes(path)).get("format")
    except (OSError, ValueError, AttributeError):  # none, or not ours to judge: the checks above apply
        return
    if found != format_name:  # a generator saved over a detector (or the reverse) would lose it unasked
        other = {None: "detector", "anomaly_ae.generator": "generator"}.get(found, repr(found))
        raise FileExistsError(f"{path} holds a saved {other}, not a {kind}; choose another directory (or delete "
                              "that one first)")


def _complete(directory: Path) -> bool:
    """Whether every file the manifest lists is present with its recorded size and SHA-256."""
    try:
        entries = json.loads(_manifest_bytes(directory))["files"]
        for name, entry in entries.items():
            if "/" in name or name.startswith("."):
                return False
            data = (directory / name).read_bytes()
            if len(data) != entry["bytes"] or sha256(data) != entry["sha256"]:
                return False
        return bool(entries)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def manifest_hashes(path: Path) -> dict[str, str]:
    """The SHA-256 of each file, as recorded in the manifest (what the registry records as tags)."""
    manifest = json.loads((Path(path) / MANIFEST).read_text())
    return {name: entry["sha256"] for name, entry in manifest["files"].items()}


def read_verified(path: Path, files: tuple[str, ...] = FILES, *, kind: str = "model",
                  format_name: str | None = None, format_version: int = FORMAT_VERSION) -> dict[str, bytes]:
    """Read every file once, checking it against the manifest before anyone parses it.

    Shared by detectors and generators (`kind` names which in messages); `format_name` must match
    the manifest's "format" (None for detectors, whose manifests have none), so one kind is never
    loaded as the other.
    """
    if not path.is_dir():
        raise ModelLoadError(f"no saved {kind} at {path}: expected a directory written by anomaly_ae's save()")
    try:
        manifest = json.loads(_manifest_bytes(path))
        entries = manifest["files"]
        if not isinstance(entries, dict) or not all(isinstance(e, dict) for e in entries.values()):
            raise TypeError("files is not a mapping of file name to size and hash")
    except FileNotFoundError:
        raise ModelLoadError(f"{path} has no {MANIFEST}; it is not a {kind} saved by anomaly_ae") from None
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        raise ModelLoadError(f"{path / MANIFEST} is corrupt (not the JSON anomaly_ae writes); "
                             f"re-save or re-download the {kind}") from None
    if manifest.get("format") != format_name:
        what = f"manifest format {manifest.get('format')!r}" if manifest.get("format") else "a saved detector"
        raise ModelLoadError(f"{path} is not a saved {kind} ({what})")
    if manifest.get("format_version") != format_version:
        raise ModelLoadError(
            f"{path} was saved in {kind} format {manifest.get('format_version')!r} by anomaly_ae "
            f"{manifest.get('anomaly_ae_version', '?')}; this is anomaly_ae {__version__} (format {format_version}). "
            "Load it with that version or retrain it with this one")
    contents = {}
    for name in files:
        entry = entries.get(name)
        if entry is None:
            raise ModelLoadError(f"{path / MANIFEST} does not list {name}; the {kind} directory is incomplete")
        try:
            status = (path / name).lstat()
        except FileNotFoundError:
            raise ModelLoadError(f"{path / name} is missing; re-save or re-download the {kind}") from None
        if not stat.S_ISREG(status.st_mode):  # a link could point anywhere (/dev/zero, a file outside)
            raise ModelLoadError(f"{path / name} is a link or not a plain file; a saved {kind} holds plain files: "
                                 f"re-save or re-download the {kind}")
        # the size first, so a file of another size is never read whole
        data = (path / name).read_bytes() if status.st_size == entry.get("bytes") else b""
        if len(data) != entry.get("bytes") or sha256(data) != entry.get("sha256"):
            raise ModelLoadError(f"{path / name} does not match its SHA-256 in the manifest: the file is truncated "
                                 "or was modified after saving; refusing to load it")
        contents[name] = data
    return contents


def load_detector(cls: type["Detector"], path_or_uri: str | Path) -> "Detector":
    path = resolve_model_path(path_or_uri)
    with named_as(path_or_uri, path):
        return _load_detector(cls, path)


@contextmanager
def named_as(path_or_uri: str | Path, path: Path) -> Iterator[None]:
    """Errors about a downloaded model name the URI it came from, not the temporary folder it was
    downloaded to (gone when the user reads the message)."""
    try:
        yield
    except ModelLoadError as exc:
        # a local directory is named as it is ("model/" is the folder model, not a name to put in its place)
        if str(path_or_uri) == str(path) or not re.match(r"[A-Za-z][A-Za-z0-9+.-]+:", str(path_or_uri)):
            raise
        raise ModelLoadError(str(exc).replace(str(path), str(path_or_uri))) from None


def _load_detector(cls: type["Detector"], path: Path) -> "Detector":
    contents = read_verified(path)
    try:
        return _build_detector(cls, path, contents)
    except ModelLoadError:
        raise
    # the files match their manifest, but what they say does not build a model (edited, or written by a
    # tool that is not this one): one line, never a traceback, and never retried as if it were a glitch
    except (ValueError, KeyError, TypeError, AttributeError, AssertionError, IndexError, OverflowError,
            RecursionError, RuntimeError, MemoryError) as exc:
        raise ModelLoadError(f"{path} holds a model file this version cannot build ({type(exc).__name__}: "
                             f"{str(exc)[:200]}); re-save the model") from None


def _build_detector(cls: type["Detector"], path: Path, contents: dict[str, bytes]) -> "Detector":
    try:
        config = json.loads(contents["config.json"])
        schema = Schema.from_dict(json.loads(contents["schema.json"]))
        preprocessor = Preprocessor.from_dict(json.loads(contents["preprocess.json"]), schema)
        calibration = Calibration.from_dict(json.loads(contents["calibration.json"]))
        cls = _class_for(config.get("kind", "detector"), cls, path)
        params = {k: v for k, v in config["params"].items() if k not in RETIRED_PARAMS}
        if isinstance(params.get("covariates"), list):  # JSON has no tuple; the default is ()
            params["covariates"] = tuple(params["covariates"])
        detector = cls(**params)
        spec, n_members = config["model_spec"], int(config["n_members"])
        if detector.model not in detector._models:  # a model family added after this version
            raise ModelLoadError(f"{path} holds a {detector.model!r} model, which anomaly_ae {__version__} does not "
                                 f"know (it was saved by anomaly_ae {config.get('anomaly_ae_version', '?')}); load it "
                                 "with that version or a newer one")
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{path} has a malformed model file ({exc}); re-save the model") from None
    try:
        state = load_safetensors(contents["weights.safetensors"])
    except Exception as exc:  # safetensors raises its own error types for malformed headers
        raise ModelLoadError(f"{path / 'weights.safetensors'} is not a valid safetensors file: {exc}") from None
    device = resolve_device(detector.device, fall_back_to_cpu=True)
    specs = {f"member{i}": spec for i in range(n_members)}
    if config.get("n_reference"):
        input_shape = config.get("input_shape") or spec["input_shape"]  # older models: from the network spec
        specs["neighbors"] = {"family": "neighbors", "input_shape": input_shape,
                              "n_reference": int(config["n_reference"]), "k": detector._resolved("neighbors")}
        steps = config.get("neighbor_steps")
        if steps is not None:
            if not isinstance(steps, list) or not steps or not all(type(s) is int for s in steps):
                raise ModelLoadError(f"{path} has a malformed model file (neighbor_steps {steps!r}); re-save the model")
            specs["neighbors"].update(family="multiscale_neighbors", steps=steps)
    if {k.split(".", 1)[0] for k in state} != set(specs):
        raise ModelLoadError(f"the weights in {path} do not fit the model they declare: they hold "
                             f"{sorted({k.split('.', 1)[0] for k in state})[:5]}, the config {sorted(specs)[:5]}")
    for prefix, module_spec in specs.items():
        if prefix != "member0" and prefix.startswith("member"):
            continue  # the members share one spec: one check
        with torch.device("meta"):  # shapes only, no memory: a config declaring a huge network fails here
            shapes = {f"{prefix}.{k}": tuple(v.shape) for k, v in build_model(module_spec).state_dict().items()}
        found = {k: tuple(v.shape) for k, v in state.items() if k.startswith(prefix + ".")}
        if shapes != found:
            raise ModelLoadError(f"the weights in {path} do not fit the model they declare ({prefix}: "
                                 f"{sorted(set(shapes.items()) ^ set(found.items()))[:2]})")
    modules = {prefix: build_model(module_spec) for prefix, module_spec in specs.items()}
    expected = {f"{prefix}.{k}" for prefix, m in modules.items() for k in m.state_dict()}
    if set(state) != expected:
        raise ModelLoadError(f"the weights in {path} do not fit the model they declare: "
                             f"unexpected {sorted(set(state) - expected)[:3]}, missing {sorted(expected - set(state))[:3]}")
    for prefix, module in modules.items():
        try:
            module.load_state_dict({k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")},
                                   strict=True)
        except RuntimeError as exc:
            raise ModelLoadError(f"the weights in {path} do not fit the model they declare: {exc}") from None
        module.to(device).eval()
    scorer = ModelScorer([modules[f"member{i}"] for i in range(n_members)], config["score_type"], device=device,
                         n_samples=detector.n_samples, seed=detector.random_state,
                         neighbors=modules.get("neighbors"), term_scales=config.get("term_scales", {}))
    detector.schema_, detector.preprocessor_, detector.model_spec_ = schema, preprocessor, spec
    detector.score_type_, detector.device_ = config["score_type"], device
    detector.input_shape_ = config.get("input_shape") or spec["input_shape"]
    detector.history_ = [History(**h) for h in config.get("training", [])]
    detector.training_metadata_ = config.get("training_metadata", {})
    if "series" in config:
        try:
            detector.framing_ = SeriesFraming.from_dict(config["series"]["framing"])
            detector.alert_rule_ = AlertRule(**config["series"]["alert_rule"])
            detector.alert_stats_ = config["series"].get("alert_stats", {})
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(f"{path} has a malformed series section in config.json ({exc}); re-save the model") from None
        _check_window_fits(detector, config.get("neighbor_steps"), path)
    detector._set_fitted(scorer, calibration)
    return detector


def _check_window_fits(detector: "Detector", neighbor_steps: list[int] | None, path: Path) -> None:
    """A series model's window must be the one its modules were built for (a window the config declares
    otherwise would fail at the first score, with a shape error)."""
    window = int(detector.framing_.window)
    shape = [int(d) for d in detector.input_shape_]
    width = detector.preprocessor_.n_outputs + 2 * len(detector.framing_.covariates)  # a step: sin, cos each
    expected = [window, width] if detector._models[detector.model].sequence else [window * width]
    if shape != expected or (neighbor_steps and max(neighbor_steps) != window):
        raise ModelLoadError(f"{path} declares a window of {window} steps that its model's inputs {shape} (neighbour "
                             f"lengths {neighbor_steps}) were not built for; re-save the model")


def _class_for(kind: str, requested: type["Detector"], path: Path) -> type["Detector"]:
    """The class a saved `kind` loads as: that kind's class, when it is the requested one or a subclass."""
    if kind not in KIND_CLASSES:
        raise ModelLoadError(f"{path} holds a kind of model this version does not know ({kind!r}); "
                             "load it with the anomaly_ae version that saved it")
    module_name, name = KIND_CLASSES[kind].split(":")
    saved = getattr(importlib.import_module(module_name), name)
    if issubclass(saved, requested):
        return saved
    raise ModelLoadError(f"{path} holds a {saved.__name__}, not a {requested.__name__}; load it with "
                         f"{saved.__name__}.load")


def resolve_model_path(path_or_uri: str | Path, kind: str = "detector") -> Path:
    """A local directory as it is; a models:/ or runs:/ URI downloaded and hash-checked (mlflow-artifacts:/
    goes to the registry too, which refuses it with the URIs to use)."""
    text = str(path_or_uri)
    if text.startswith(REMOTE_SCHEMES):
        module_name, function = REMOTE_RESOLVER.split(":")
        try:
            download_model = getattr(importlib.import_module(module_name), function)
        except ImportError as exc:
            raise ModelLoadError(f"loading {text} needs MLflow, a dependency of anomaly-ae: reinstall the package "
                                 f"or pip install 'mlflow>=3,<4' ({exc})") from None
        return download_model(text, kind=kind)
    return Path(text).expanduser()
