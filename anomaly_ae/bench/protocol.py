"""The one-class (novelty detection) split of the ADBench "Classical" anchor.

Implements ``/work/shared/bench/PROTOCOL.md`` bit-for-bit:

* :func:`load` reads an ADBench ``.npz`` file (``X`` -> float64, ``y`` -> int64, flattened).
* :func:`split` draws the train / test split for one seed (train = normals only).
* :func:`split_indices` returns the underlying row indices (what the fingerprints hash).
* :func:`verify_fingerprints` checks a data folder against ``protocol_fingerprint.json``.
* :func:`standardize` is the harness preprocessing used for PyOD detectors (not part of
  ``split``; anomaly_ae detectors do their own scaling).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

TRAIN_FRACTION_NUM = 6  # n_train = min((6 * n_normal) // 10, MAX_TRAIN)
TRAIN_FRACTION_DEN = 10
MAX_TRAIN = 10_000
MAX_TEST_NORMAL = 20_000
MAX_TEST_ANOM = 5_000


def dataset_name(path: str | Path) -> str:
    """Dataset name = file name without ``.npz`` (e.g. ``10_cover``)."""
    name = Path(path).name
    return name[:-4] if name.endswith(".npz") else name


def load(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Load an ADBench ``.npz``: ``X`` as float64 (n x d), ``y`` as flattened int64 (1 = anomaly).

    No rows are dropped, no de-duplication, no NaN handling.
    """
    with np.load(path, allow_pickle=False) as f:
        X = np.asarray(f["X"]).astype(np.float64)
        y = np.asarray(f["y"]).astype(np.int64).ravel()
    if X.ndim != 2:
        raise ValueError(f"{path}: X must be 2-D, got shape {X.shape}")
    if len(y) != X.shape[0]:
        raise ValueError(f"{path}: X has {X.shape[0]} rows but y has {len(y)} labels")
    return X, y


def split_indices(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices ``(train, test_normal, test_anom)`` for ``seed`` (PROTOCOL.md steps 1-7)."""
    y = np.asarray(y).ravel()
    rng = np.random.default_rng(int(seed))
    normal = np.flatnonzero(y == 0).astype(np.int64)
    anom = np.flatnonzero(y == 1).astype(np.int64)
    normal = rng.permutation(normal)  # first ...
    anom = rng.permutation(anom)  # ... then, continuing the same stream
    n_normal, n_anom = len(normal), len(anom)
    n_train = min((TRAIN_FRACTION_NUM * n_normal) // TRAIN_FRACTION_DEN, MAX_TRAIN)
    train = normal[:n_train]
    test_normal = normal[n_train:n_train + MAX_TEST_NORMAL]
    test_anom = anom[:min(n_anom, MAX_TEST_ANOM)]
    return train, test_normal, test_anom


def split(X: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(X_train, X_test, y_test)``: train = normals only; test = normals then anomalies."""
    train, test_normal, test_anom = split_indices(y, seed)
    X = np.asarray(X)
    X_train = X[train].astype(np.float64)
    X_test = np.concatenate([X[test_normal], X[test_anom]]).astype(np.float64)
    y_test = np.concatenate([np.zeros(len(test_normal), dtype=np.int64),
                             np.ones(len(test_anom), dtype=np.int64)])
    return X_train, X_test, y_test


def split_sha256(y: np.ndarray, seed: int) -> str:
    """SHA-256 of the concatenated little-endian int64 index arrays, as in the fingerprint file."""
    train, test_normal, test_anom = split_indices(y, seed)
    blob = np.concatenate([train, test_normal, test_anom]).astype("<i8").tobytes()
    return hashlib.sha256(blob).hexdigest()


def fingerprint_entry(y: np.ndarray, seed: int) -> dict:
    """The fingerprint fields for one (dataset, seed), same keys as ``protocol_fingerprint.json``."""
    train, test_normal, test_anom = split_indices(y, seed)
    return {
        "n_train": int(len(train)),
        "n_test_normal": int(len(test_normal)),
        "n_test_anom": int(len(test_anom)),
        "train_first5": [int(i) for i in train[:5]],
        "test_normal_first5": [int(i) for i in test_normal[:5]],
        "test_anom_first5": [int(i) for i in test_anom[:5]],
        "sha256": split_sha256(y, seed),
    }


def load_fingerprints(fingerprint_json: str | Path) -> dict[tuple[str, int], dict]:
    """``{(dataset, seed): entry}`` from ``protocol_fingerprint.json``."""
    data = json.loads(Path(fingerprint_json).read_text())
    return {(e["dataset"], int(e["seed"])): e for e in data["entries"]}


def check_entry(expected: dict, y: np.ndarray, seed: int) -> list[str]:
    """Differences between a fingerprint entry and our split of ``y`` (empty list = identical)."""
    got = fingerprint_entry(y, seed)
    return [f"{k}: expected {expected[k]!r}, got {got[k]!r}"
            for k in got if k in expected and expected[k] != got[k]]


def verify_fingerprints(data_dir: str | Path, fingerprint_json: str | Path) -> list[str]:
    """Check every (dataset, seed) in the fingerprint file against our split of ``data_dir``.

    Returns a list of human-readable mismatches (empty = bit-for-bit identical). A dataset
    listed in the fingerprints but missing from ``data_dir`` is a mismatch; extra files in
    ``data_dir`` without a fingerprint are ignored.
    """
    data_dir = Path(data_dir)
    mismatches: list[str] = []
    by_dataset: dict[str, list[dict]] = {}
    for (name, _), entry in load_fingerprints(fingerprint_json).items():
        by_dataset.setdefault(name, []).append(entry)
    for name in sorted(by_dataset):
        path = data_dir / f"{name}.npz"
        if not path.exists():
            mismatches.append(f"{name}: file {path} not found")
            continue
        _, y = load(path)
        for entry in sorted(by_dataset[name], key=lambda e: e["seed"]):
            seed = int(entry["seed"])
            mismatches.extend(f"{name} seed {seed}: {d}" for d in check_entry(entry, y, seed))
    return mismatches


def fit_scaler(X_train: np.ndarray):
    """The harness scaler for the PyOD detectors (PROTOCOL.md), fit on ``X_train`` only.

    ``StandardScaler`` (population variance); columns whose training std is exactly 0 or
    non-finite get scale 1 (they are only centred). sklearn's own near-constant guard is kept.
    No clipping.
    """
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(np.asarray(X_train, dtype=np.float64))
    std = np.sqrt(scaler.var_)
    bad = (std == 0) | ~np.isfinite(std)
    scaler.scale_ = np.where(bad, 1.0, scaler.scale_)
    return scaler


def standardize(X_train: np.ndarray, X_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Harness preprocessing: :func:`fit_scaler` on ``X_train``, applied to both; float64."""
    scaler = fit_scaler(X_train)
    return (np.asarray(scaler.transform(X_train), dtype=np.float64),
            np.asarray(scaler.transform(X_test), dtype=np.float64))
