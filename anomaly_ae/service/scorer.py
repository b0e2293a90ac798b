"""The service's view of a loaded Detector: its one inference path, fed parsed JSON columns.

`InferencePath.score` with a mapping of columns validates with `Schema.check_columns` (strict
about JSON types, no pandas on the hot path) and then runs the same transform, scoring,
calibration, explanations and notes as every other adapter. `smoke_test` scores a small batch
built from the training reference as JSON columns and as a DataFrame and refuses a model whose
scores are not finite or disagree, so the two validators can never silently drift apart.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from anomaly_ae.detector import Detector
from anomaly_ae.exceptions import ModelLoadError
from anomaly_ae.inference import ScoreResult


class SmokeTestError(ModelLoadError):
    """A model loaded but could not score a smoke batch correctly; it is not served."""


class Scorer:
    """A Detector's inference path for JSON columns, plus the checks that admit a model to serving."""

    def __init__(self, detector: Detector) -> None:
        schema = detector.schema_
        if schema.image is not None:
            raise ModelLoadError("this model scores images; the scoring service serves tabular models only")
        self.detector = detector
        self.schema = schema
        self.preprocessor = detector.preprocessor_
        self.path = detector.inference_
        self.threshold = float(detector.threshold_)

    def score(self, columns: dict[str, Any], top_k: int = 0) -> ScoreResult:
        return self.path.score(columns, top_k=top_k)

    # ------------------------------------------------------------------ smoke test
    def smoke_batch(self) -> dict[str, list[Any]]:
        """A few rows built from the training reference: medians, means, +-2 std, each category."""
        pre = self.preprocessor
        n = 4
        columns: dict[str, list[Any]] = {}
        for col in self.schema.columns:
            if col.kind == "numeric":
                p = pre.numeric[col.name]
                values: list[Any] = [p["median"], p["mean"], p["mean"] + 2 * p["scale"], p["mean"] - 2 * p["scale"]]
                if col.allow_missing:
                    values[3] = None
            else:
                cats = [b for b in pre.categorical[col.name] if not b.startswith("__")] or ["__smoke_unseen__"]
                values = [cats[i % len(cats)] for i in range(n)]
                if col.allow_missing:
                    values[3] = None
            columns[col.name] = values
        return columns

    def smoke_test(self) -> None:
        """Score the smoke batch on this path and through `Detector.decision_function`; refuse on any
        error, non-finite score or disagreement."""
        columns = self.smoke_batch()
        try:
            result = self.score(columns, top_k=3)
            frame = pd.DataFrame({name: pd.Series(values, dtype=object if name in self.preprocessor.categorical
                                                  else np.float64) for name, values in columns.items()})
            expected = self.detector.decision_function(frame)
        except Exception as exc:  # any failure to score refuses the model
            raise SmokeTestError(f"the model failed to score a smoke batch: {type(exc).__name__}: {exc}") from None
        if not np.all(np.isfinite(result.scores)) or not np.all(np.isfinite(result.p_values)):
            raise SmokeTestError("the model produced non-finite scores on a smoke batch built from its own "
                                 "training reference; its weights are broken")
        if not np.allclose(result.scores, expected, rtol=1e-4, atol=1e-6):
            raise SmokeTestError("the service's fast scoring path disagrees with Detector.decision_function on a "
                                 "smoke batch; this anomaly_ae version cannot serve the model")
