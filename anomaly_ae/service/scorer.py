"""The service's view of a loaded Detector: its one inference path, fed parsed JSON columns.

`InferencePath.score` with a mapping of columns validates with `Schema.check_columns` (strict
about JSON types, no pandas on the hot path) and then runs the same transform, scoring,
calibration, explanations and notes as every other adapter. `smoke_test` scores a small batch
built from the training reference as JSON columns and as a DataFrame and refuses a model whose
scores are not finite or disagree, so the two validators can never silently drift apart.

A series model (`SeriesDetector`) takes its time column (ISO 8601 text) and series column (text or
integers) among the columns, checked here as strictly as `check_columns` checks the metrics;
`score_new` scores the rows a request asked for (`score_last`) and gives their alerts
(`anomaly_ae.series_stream`).
"""

from __future__ import annotations

from concurrent.futures import Executor
from typing import Any

import numpy as np
import pandas as pd

from anomaly_ae.data.preprocess import UNKNOWN
from anomaly_ae.detector import Detector
from anomaly_ae.exceptions import ModelLoadError, SchemaError
from anomaly_ae.inference import ScoreResult
from anomaly_ae.service.schemas import MAX_SERIES_ID_CHARS
from anomaly_ae.series_stream import NewRows, StreamContract, score_new_rows

SMOKE_SERIES = "__smoke__"


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
        # series models: what a stream client must send (None for a row model)
        self.contract = StreamContract.of(self.path) if self.path.framing is not None else None

    @property
    def kind(self) -> str:
        return "detector" if self.contract is None else "series"

    def score(self, columns: dict[str, Any], top_k: int = 0, helper: Executor | None = None) -> ScoreResult:
        """`helper`: a second thread for a large batch of a row model (`InferencePath.score`)."""
        if self.contract is not None:
            self._check_keys(columns)
        return self.path.score(columns, top_k=top_k, helper=helper)

    def score_new(self, columns: dict[str, Any], top_k: int, score_last: int | None) -> tuple[ScoreResult, NewRows]:
        """Series models: score the last `score_last` rows of each series (all when None), the context
        only as far as their windows and alerts need it; the result's arrays follow `NewRows.rows`."""
        self._check_keys(columns)
        return score_new_rows(self.path, columns, score_last, top_k=top_k)

    def _check_keys(self, columns: dict[str, Any]) -> None:
        """The time column holds text (ISO 8601), the series column text or integers; none is missing."""
        contract = self.contract
        assert contract is not None
        for name, what in ((contract.time_col, "time"), (contract.series_col, "series")):
            if name is None:
                continue
            if name not in columns:
                raise SchemaError(f"column '{name}' is missing; the model was trained with it as its {what} column",
                                  column=name, reason="missing_column")
            values = columns[name]
            if what == "time":
                bad = [i for i, v in enumerate(values) if type(v) is not str]
                expected = "timestamps as ISO 8601 text (e.g. 2026-01-05T10:00:00Z)"
            else:
                if any(type(v) is float for v in values):
                    # JSON Schema's integers include 5.0, and JSON encoders may write one so: the id 5
                    values = columns[name] = [int(v) if type(v) is float and v.is_integer() and abs(v) < 2 ** 63
                                              else v for v in values]
                bad = [i for i, v in enumerate(values) if type(v) not in (str, int)]
                expected = "series ids as text or integers"
                odd = [i for i, v in enumerate(values) if (type(v) is str and not 0 < len(v) <= MAX_SERIES_ID_CHARS)
                       or (type(v) is int and not -2 ** 63 <= v < 2 ** 63)]
                if odd and not bad:  # an empty id, or one echoed into every note, or past a 64-bit integer
                    raise SchemaError(f"column '{name}' has series ids that are empty, longer than "
                                      f"{MAX_SERIES_ID_CHARS} characters or outside 64-bit integers in rows {odd[:5]}; "
                                      "send a short, non-empty id per series", column=name, rows=odd[:5],
                                      reason="dtype")
            if bad:
                nulls = all(values[i] is None for i in bad)
                raise SchemaError(f"column '{name}' {'is null' if nulls else 'has values of the wrong type'} in rows "
                                  f"{bad[:5]}; send {expected}", column=name, rows=bad[:5],
                                  reason="missing_value" if nulls else "dtype")

    def subset_report(self, result: ScoreResult, rows: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, int],
                                                                            dict[str, int]]:
        """(checked columns, missing counts, unseen-category counts) of some rows of a scored request: what
        the drift metrics see of a series request (its new rows, not the context sent again and again)."""
        checked = {name: values[rows] for name, values in result.checked.items()}
        missing, unseen = {}, {}
        for name in result.missing:
            values = checked[name]
            count = int(np.isnan(values).sum()) if values.dtype.kind == "f" else sum(v is None for v in values)
            if count:
                missing[name] = count
        for name in result.unseen:
            known = {b for b in self.preprocessor.categorical[name] if b != UNKNOWN}
            count = sum(v is not None and v not in known for v in checked[name])
            if count:
                unseen[name] = count
        return checked, missing, unseen

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
        contract = self.contract
        if contract is not None:  # one series on the training step, in time order
            if contract.time_col is not None:
                start = pd.Timestamp("2026-01-05T00:00:00Z")
                step = pd.Timedelta(seconds=contract.step_seconds or 60.0)
                columns[contract.time_col] = [(start + i * step).isoformat() for i in range(n)]
            if contract.series_col is not None:
                known = self.path.framing.known_series  # type: ignore[union-attr]
                columns[contract.series_col] = [known[0] if known else SMOKE_SERIES] * n
        return columns

    def smoke_test(self) -> None:
        """Score the smoke batch on this path and through `Detector.decision_function`; refuse on any
        error, non-finite score or disagreement."""
        columns = self.smoke_batch()
        try:
            result = self.score(columns, top_k=3)
            numeric = self.preprocessor.numeric
            frame = pd.DataFrame({name: pd.Series(values, dtype=np.float64 if name in numeric else object)
                                  for name, values in columns.items()})
            expected = self.detector.decision_function(frame)
        except Exception as exc:  # any failure to score refuses the model
            raise SmokeTestError(f"the model failed to score a smoke batch: {type(exc).__name__}: {exc}") from None
        if not np.all(np.isfinite(result.scores)) or not np.all(np.isfinite(result.p_values)):
            raise SmokeTestError("the model produced non-finite scores on a smoke batch built from its own "
                                 "training reference; its weights are broken")
        if not np.allclose(result.scores, expected, rtol=1e-4, atol=1e-6):
            raise SmokeTestError("the service's fast scoring path disagrees with Detector.decision_function on a "
                                 "smoke batch; this anomaly_ae version cannot serve the model")
