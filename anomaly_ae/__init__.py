"""anomaly-ae: learn what normal looks like, score how badly each new sample fits it."""

__version__ = "0.1.0"

from anomaly_ae.detector import Detector  # noqa: E402
from anomaly_ae.augment.generator import Generator  # noqa: E402

__all__ = ["Detector", "Generator", "__version__"]
