"""anomaly-ae: learn what normal looks like, score how badly each new sample fits it.

The public classes load on first use (PEP 562), so `import anomaly_ae.exceptions` or
`anomaly-ae --help` never pay for importing torch, scikit-learn or MLflow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from anomaly_ae.version import __version__

if TYPE_CHECKING:
    from anomaly_ae.augment.generator import Generator
    from anomaly_ae.detector import Detector
    from anomaly_ae.series_detector import SeriesDetector

__all__ = ["Detector", "Generator", "SeriesDetector", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Detector":
        from anomaly_ae.detector import Detector

        return Detector
    if name == "SeriesDetector":
        from anomaly_ae.series_detector import SeriesDetector

        return SeriesDetector
    if name == "Generator":
        from anomaly_ae.augment.generator import Generator

        return Generator
    raise AttributeError(f"module 'anomaly_ae' has no attribute {name!r}")
