"""Benchmark of anomaly_ae detectors against PyOD on ADBench (one-class protocol).

Public API::

    from anomaly_ae.bench import load, split, verify_fingerprints, run_benchmark, write_report

* :func:`load`, :func:`split`, :func:`verify_fingerprints` - the split of
  ``PROTOCOL.md`` (bit-for-bit; checked with ``protocol_fingerprint.json``).
* :func:`make_detector` - detector factories by name (``ae``, ``dae``, ``sae``, ``vae``,
  ``aae``, ``pca``, ``default`` for anomaly_ae; PyOD class names for PyOD).
* :func:`run_benchmark` - the resumable run loop writing one CSV row per
  (dataset, seed, detector); :func:`write_report` - the markdown report.
* ``anomaly_ae.bench.command.benchmark`` - the ``anomaly-ae benchmark`` typer command.

Nothing here imports torch, PyOD or ``anomaly_ae.Detector`` at import time.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> submodule; loaded on first use so `anomaly-ae --help` does not import numpy and pandas
_EXPORTS = {
    **dict.fromkeys(("ALL_DETECTORS", "ANOMALY_AE_DETECTORS", "PYOD_DETECTORS", "available", "make_detector"),
                    "detectors"),
    **dict.fromkeys(("fit_scaler", "load", "split", "split_indices", "standardize", "verify_fingerprints"),
                    "protocol"),
    "write_report": "report",
    **dict.fromkeys(("COLUMNS", "BenchmarkError", "evaluate", "read_rows", "run_benchmark"), "runner"),
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
