"""Detector factories for the benchmark, by name.

Two families:

* ``anomaly_ae`` (plain lowercase names): ``ae``, ``dae``, ``sae``, ``vae``, ``aae``, ``ddae``,
  ``pca``, ``knn``, the variants in ``ANOMALY_AE_VARIANTS`` (``knn_proto``, ``ddae_knn``: a model
  with options) and ``default``. Built as ``anomaly_ae.Detector(model=name, random_state=seed,
  verbose=False)`` (``default``: ``Detector(random_state=seed, verbose=False)``) and fed raw
  float64 data: the detector does its own scaling. Their ``predict`` (threshold calibrated for
  1% FPR) is used for the ``fpr_at_threshold`` column.
* ``pyod`` (PyOD class names, as in the anchor CSV): ``IForest``, ``KNN``, ``LOF``, ``LUNAR``,
  ``OCSVM``, ``ECOD``, ``PCA``, ``AutoEncoder``, ``VAE``, ``DeepSVDD``. PyOD defaults, with
  ``random_state=seed`` where the constructor accepts it, progress output switched off, and
  the harness preprocessing of PROTOCOL.md (:func:`anomaly_ae.bench.protocol.standardize`).

Names are case-sensitive: ``pca``/``vae`` are anomaly_ae models, ``PCA``/``VAE`` are PyOD's.
Both libraries are imported lazily, inside the factories.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .protocol import fit_scaler

AAE_FAMILY = "anomaly_ae"
PYOD_FAMILY = "pyod"

# Benchmark names that are a model with options other than its defaults: name -> (model, options).
ANOMALY_AE_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "knn_proto": ("knn", {"neighbor_reference": "prototypes"}),  # 2,000 k-means prototypes, no raw rows
    "ddae_knn": ("ddae", {"neighbors": 5}),  # the hybrid rule: DDAE + mean-5-NN, each standardised
}
ANOMALY_AE_DETECTORS: tuple[str, ...] = ("ae", "dae", "sae", "vae", "aae", "ddae", "pca", "knn",
                                         *ANOMALY_AE_VARIANTS, "default")

# name -> (module, class). Order = cheap first (also the column order in reports).
_PYOD_CLASSES: dict[str, tuple[str, str]] = {
    "ECOD": ("pyod.models.ecod", "ECOD"),
    "IForest": ("pyod.models.iforest", "IForest"),
    "PCA": ("pyod.models.pca", "PCA"),
    "KNN": ("pyod.models.knn", "KNN"),
    "LOF": ("pyod.models.lof", "LOF"),
    "OCSVM": ("pyod.models.ocsvm", "OCSVM"),
    "AutoEncoder": ("pyod.models.auto_encoder", "AutoEncoder"),
    "VAE": ("pyod.models.vae", "VAE"),
    "DeepSVDD": ("pyod.models.deep_svdd", "DeepSVDD"),
    "LUNAR": ("pyod.models.lunar", "LUNAR"),
}
PYOD_DETECTORS: tuple[str, ...] = tuple(_PYOD_CLASSES)

ALL_DETECTORS: tuple[str, ...] = ANOMALY_AE_DETECTORS + PYOD_DETECTORS


class DetectorUnavailable(RuntimeError):
    """The library behind a detector is not installed / not importable (yet)."""


def family(name: str) -> str:
    """``"anomaly_ae"`` or ``"pyod"`` for a known detector name."""
    if name in ANOMALY_AE_DETECTORS:
        return AAE_FAMILY
    if name in _PYOD_CLASSES:
        return PYOD_FAMILY
    raise KeyError(f"unknown detector {name!r}; known: {', '.join(ALL_DETECTORS)}")


def is_anomaly_ae(name: str) -> bool:
    return name in ANOMALY_AE_DETECTORS


def check_available(name: str) -> None:
    """Raise :class:`DetectorUnavailable` if the detector's library cannot be imported."""
    fam = family(name)
    if fam == AAE_FAMILY:
        try:
            mod = importlib.import_module("anomaly_ae")
        except Exception as e:  # pragma: no cover - depends on the state of the package
            raise DetectorUnavailable(f"cannot import anomaly_ae: {type(e).__name__}: {e}") from e
        if not hasattr(mod, "Detector"):
            raise DetectorUnavailable("anomaly_ae.Detector does not exist (yet)")
    else:
        module, _ = _PYOD_CLASSES[name]
        try:
            importlib.import_module(module)
        except Exception as e:
            raise DetectorUnavailable(
                f"PyOD detector {name} needs pyod (pip install 'anomaly-ae[bench]'): "
                f"{type(e).__name__}: {e}") from e


def available(name: str) -> bool:
    try:
        check_available(name)
    except DetectorUnavailable:
        return False
    return True


@dataclass
class BenchDetector:
    """Uniform wrapper: ``fit(X_train)``, ``decision_function(X_test)``, optional ``predict``.

    ``X_*`` are the raw float64 arrays from :func:`anomaly_ae.bench.protocol.split`; for PyOD
    detectors the harness scaler is fit inside :meth:`fit` (so it is timed as part of fitting)
    and applied inside :meth:`decision_function`.
    """

    name: str
    family: str
    _build: Callable[[int], Any]
    standardize: bool
    model: Any = None
    scaler: Any = None

    def fit(self, X_train: np.ndarray) -> "BenchDetector":
        X_train = np.asarray(X_train, dtype=np.float64)
        if self.standardize:
            self.scaler = fit_scaler(X_train)
        self.model = self._build(X_train.shape[1])
        self.model.fit(self._prep(X_train))
        return self

    def _prep(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if self.scaler is not None:
            X = np.asarray(self.scaler.transform(X), dtype=np.float64)
        return X

    def decision_function(self, X_test: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.decision_function(self._prep(X_test)), dtype=np.float64).ravel()

    @property
    def has_threshold(self) -> bool:
        return self.family == AAE_FAMILY

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict(self._prep(X))).ravel()


def _pyod_kwargs(cls: type, seed: int, n_features: int) -> dict[str, Any]:
    params = inspect.signature(cls.__init__).parameters
    kw: dict[str, Any] = {}
    if "random_state" in params:
        kw["random_state"] = int(seed)
    if "n_features" in params:  # DeepSVDD
        kw["n_features"] = int(n_features)
    if "verbose" in params and cls.__name__ in ("AutoEncoder", "VAE", "DeepSVDD", "LUNAR"):
        kw["verbose"] = 0  # output only (tqdm / per-epoch prints); no effect on results
    return kw


def make_detector(name: str, seed: int) -> BenchDetector:
    """A fresh, unfitted :class:`BenchDetector` for ``name`` and ``seed``."""
    fam = family(name)
    if fam == AAE_FAMILY:
        def build(n_features: int, _name: str = name) -> Any:
            from anomaly_ae.detector import Detector

            if _name == "default":
                return Detector(random_state=int(seed), verbose=False)
            model, options = ANOMALY_AE_VARIANTS.get(_name, (_name, {}))
            return Detector(model=model, random_state=int(seed), verbose=False, **options)

        return BenchDetector(name=name, family=fam, _build=build, standardize=False)

    module, cls_name = _PYOD_CLASSES[name]

    def build(n_features: int) -> Any:
        cls = getattr(importlib.import_module(module), cls_name)
        return cls(**_pyod_kwargs(cls, seed, n_features))

    return BenchDetector(name=name, family=fam, _build=build, standardize=True)


def warm_up(name: str, seed: int = 0) -> None:
    """Import the detector's library and run it once on tiny random data (untimed).

    Keeps one-off costs (imports, numba JIT, torch initialisation) out of the first timed
    row of each process. Failures are ignored: the real run will record them.
    """
    import warnings

    rng = np.random.default_rng(12345)
    X = rng.normal(size=(128, 4))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            d = make_detector(name, seed).fit(X[:96])
            d.decision_function(X[96:])
            if d.has_threshold:
                d.predict(X[96:])
    except Exception:  # noqa: BLE001
        pass
