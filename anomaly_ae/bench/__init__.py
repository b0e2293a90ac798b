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

from .detectors import (ALL_DETECTORS, ANOMALY_AE_DETECTORS, PYOD_DETECTORS, available,
                        make_detector)
from .protocol import fit_scaler, load, split, split_indices, standardize, verify_fingerprints
from .report import write_report
from .runner import COLUMNS, BenchmarkError, evaluate, read_rows, run_benchmark

__all__ = [
    "ALL_DETECTORS", "ANOMALY_AE_DETECTORS", "PYOD_DETECTORS", "COLUMNS", "BenchmarkError",
    "available", "evaluate", "fit_scaler", "load", "make_detector", "read_rows",
    "run_benchmark", "split", "split_indices", "standardize", "verify_fingerprints",
    "write_report",
]
