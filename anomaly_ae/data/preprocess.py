"""Turns checked input into the float32 matrix a model sees, identically at fit and at scoring.

Every learned quantity is a plain number or string, so the whole transform round-trips through
JSON: the saved model carries it and nothing has to be unpickled to apply it.
"""

from __future__ import annotations

import warnings

from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from anomaly_ae.data.schema import Schema, mostly_numbers
from anomaly_ae.exceptions import DataError

UNKNOWN = "__unknown__"
MISSING = "__missing__"
# Standardised values are clipped here: far enough out to keep any realistic anomaly extreme,
# near enough that squared errors stay finite in float32 for every finite input.
CLIP = 1e4


class Preprocessor:
    """Standardise numeric columns, one-hot categorical ones, impute missing values with an indicator.

    - numeric: missing values (allowed only where training had them) become the training median and
      an indicator feature ``<col>__missing``; values are standardised with the training mean and
      standard deviation, a constant column keeping scale 1 so it is only centred.
    - categorical: one indicator per training category (the ``max_categories`` most frequent), plus
      an ``__unknown__`` bucket for anything else and a ``__missing__`` bucket where allowed.
    - images: scaled to [0, 1] with the training minimum and maximum.

    ``flags_as_indicators=True`` (series models) leaves numeric columns whose training values are
    all 0 or 1 as they are, like the one-hot indicators of categorical columns: standardising a
    flag that is rarely set divides it by a tiny standard deviation, and then every toggle of an
    on/off state outweighs the metrics in a window's error.
    """

    def __init__(self, max_categories: int = 50, flags_as_indicators: bool = False) -> None:
        self.max_categories = max_categories
        self.flags_as_indicators = flags_as_indicators
        self.numeric: dict[str, dict[str, float]] = {}
        self.categorical: dict[str, list[str]] = {}
        self.image_range: tuple[float, float] | None = None
        self.feature_names: list[str] = []
        self.groups: dict[str, list[int]] = {}
        self._numeric_plan: _NumericPlan | None = None  # set with the layout

    def fit(self, data: pd.DataFrame | np.ndarray, schema: Schema) -> "Preprocessor":
        if schema.image is not None:
            lo, hi = float(np.min(data)), float(np.max(data))
            self.image_range = (lo, hi if hi > lo else lo + 1.0)
            return self
        assert isinstance(data, pd.DataFrame)
        for col in schema.columns:
            values = data[col.name]
            if col.kind == "numeric":
                arr = values.to_numpy(dtype=np.float64)
                finite = arr[np.isfinite(arr)]
                if not finite.size:  # its scale would be made up, and any value it later takes judged by it
                    raise DataError(f"column '{col.name}' has no value in the training rows (all missing), so "
                                    "nothing can be learned about it; drop it (--drop-cols in the CLI), or train on "
                                    "data where it is measured", column=str(col.name))
                mean, std, median = _location_scale(finite)
                if self.flags_as_indicators and finite.size and np.isin(finite, (0.0, 1.0)).all():
                    mean, std = 0.0, 1.0
                self.numeric[col.name] = {
                    "mean": mean,
                    "scale": std if std > 0 else 1.0,
                    "median": median,
                    "missing_indicator": bool(col.allow_missing),
                }
            else:
                counts = values.dropna().value_counts()
                taken = [b for b in (UNKNOWN, MISSING) if b in counts.index]
                if taken:  # one bucket would stand for two things, and the encoder's names would repeat
                    raise DataError(f"column '{col.name}' has the category {taken[0]!r}, the name the encoder gives "
                                    "unseen or missing values; rename that category", column=str(col.name),
                                    reason="invalid_data")
                # most frequent first, ties by name, so the vocabulary is deterministic
                ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
                vocab = sorted(k for k, _ in ranked[: self.max_categories])
                buckets = vocab + [UNKNOWN] + ([MISSING] if col.allow_missing else [])
                self.categorical[col.name] = buckets
        self._layout(schema)
        return self

    def _layout(self, schema: Schema) -> None:
        names: list[str] = []
        self.groups = {}
        for col in schema.columns:
            start = len(names)
            if col.name in self.numeric:
                names.append(col.name)
                if self.numeric[col.name]["missing_indicator"]:
                    names.append(f"{col.name}__missing")
            else:
                names.extend(f"{col.name}={b}" for b in self.categorical[col.name])
            self.groups[col.name] = list(range(start, len(names)))
        self.feature_names = names
        # what `transform` needs for the numeric columns, as arrays once (per call it was a tenth of a
        # 1-row request's preprocessing)
        numeric = [name for name in self.groups if name in self.numeric]
        params = [self.numeric[name] for name in numeric]
        flagged = [j for j, p in enumerate(params) if p["missing_indicator"]]
        self._numeric_plan = _NumericPlan(
            names=numeric, median=np.array([p["median"] for p in params]),
            mean=np.array([p["mean"] for p in params]), scale=np.array([p["scale"] for p in params]),
            positions=np.array([self.groups[name][0] for name in numeric], dtype=np.intp),
            flagged=np.array(flagged, dtype=np.intp),
            flag_positions=np.array([self.groups[numeric[j]][1] for j in flagged], dtype=np.intp))

    @property
    def n_outputs(self) -> int:
        return len(self.feature_names)

    def transform(self, data: pd.DataFrame | np.ndarray | dict[str, np.ndarray]) -> np.ndarray:
        if self.image_range is not None:
            lo, hi = self.image_range
            return np.clip((np.asarray(data, dtype=np.float64) - lo) / (hi - lo), -CLIP, CLIP).astype(np.float32)
        # A checked DataFrame, or the dict of 1-D arrays that Schema.check_columns returns.
        n_rows = len(data) if isinstance(data, pd.DataFrame) else len(next(iter(data.values()), ()))
        out = np.zeros((n_rows, self.n_outputs), dtype=np.float32)
        plan = self._numeric_plan
        assert plan is not None, "transform before fit"
        numeric = plan.names
        if numeric:
            # Every numeric column in one vectorised step: the same arithmetic as column by column,
            # without per-column overhead (which dominates small batches such as 1-row requests).
            if isinstance(data, pd.DataFrame):
                x = data[numeric].to_numpy(dtype=np.float64)
            else:
                x = np.empty((n_rows, len(numeric)))
                for j, name in enumerate(numeric):
                    x[:, j] = data[name]
            missing = np.isnan(x)
            if missing.any():
                x = np.where(missing, plan.median, x)
            out[:, plan.positions] = np.clip((x - plan.mean) / plan.scale, -CLIP, CLIP)
            if len(plan.flagged):
                out[:, plan.flag_positions] = missing[:, plan.flagged]
        for name, idx in self.groups.items():
            if name in self.numeric:
                continue
            else:
                values = data[name]
                buckets = self.categorical[name]
                position = {b: i for i, b in enumerate(buckets)}
                unknown = position[UNKNOWN]
                missing_pos = position.get(MISSING, unknown)
                codes = np.fromiter(
                    (missing_pos if v is None or (isinstance(v, float) and np.isnan(v)) else position.get(str(v), unknown)
                     for v in np.asarray(values, dtype=object)),
                    dtype=np.int64, count=len(values))
                out[np.arange(len(values)), np.asarray(idx)[codes]] = 1.0
        return out

    def inverse_transform(self, matrix: np.ndarray) -> pd.DataFrame | np.ndarray:
        """Map model-space rows (e.g. decoder or generator output) back to input columns.

        - numeric: ``x * scale + mean``; the ``<col>__missing`` indicator columns are dropped, so
          every value comes back present.
        - categorical: the argmax over the column's category buckets, which need not be one-hot
          (softmax outputs are fine). ``__unknown__`` stands for no particular value, so it is
          never chosen: the best real category wins. ``__missing__`` (only where training had
          missing values) comes back as None.
        - images: ``x * (max - min) + min``, an array of the input's pixel range.
        """
        matrix = np.asarray(matrix, dtype=np.float64)
        if self.image_range is not None:
            lo, hi = self.image_range
            return matrix * (hi - lo) + lo
        if matrix.ndim != 2 or matrix.shape[1] != self.n_outputs:
            raise ValueError(f"expected a (rows, {self.n_outputs}) matrix, got shape {matrix.shape}")
        out: dict[str, Any] = {}
        for name, idx in self.groups.items():
            if name in self.numeric:
                p = self.numeric[name]
                out[name] = matrix[:, idx[0]] * p["scale"] + p["mean"]
                continue
            buckets = self.categorical[name]
            scores = matrix[:, idx].copy()
            unknown = buckets.index(UNKNOWN)
            if len(buckets) > 1 + (MISSING in buckets):  # at least one real category to fall back to
                scores[:, unknown] = -np.inf
            labels = np.array([None if b == MISSING else b for b in buckets], dtype=object)
            out[name] = labels[np.argmax(scores, axis=1)]
        return pd.DataFrame(out)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        return {
            "max_categories": self.max_categories,
            "numeric": self.numeric,
            "categorical": self.categorical,
            "image_range": list(self.image_range) if self.image_range else None,
        }

    @classmethod
    def from_dict(cls, payload: dict[str, Any], schema: Schema) -> "Preprocessor":
        pre = cls(max_categories=int(payload["max_categories"]))
        pre.numeric = {k: {kk: (bool(vv) if kk == "missing_indicator" else float(vv)) for kk, vv in v.items()}
                       for k, v in payload["numeric"].items()}
        pre.categorical = {k: [str(b) for b in v] for k, v in payload["categorical"].items()}
        pre.image_range = tuple(payload["image_range"]) if payload.get("image_range") else None
        if pre.image_range is None:
            pre._layout(schema)
        return pre


class _NumericPlan(NamedTuple):
    names: list[str]          # numeric input columns, in output order
    median: np.ndarray        # their training medians (imputation), means and scales
    mean: np.ndarray
    scale: np.ndarray
    positions: np.ndarray     # each one's output column
    flagged: np.ndarray       # which of them have a missing indicator,
    flag_positions: np.ndarray  # and its output column


# A training value this many median absolute deviations from the median is taken for a unit or sensor
# error: it alone sets the column's standard deviation, and every other value then standardises to
# about the same number.
EXTREME_DEVIATIONS = 1e6


def warn_of_extreme_values(data: pd.DataFrame | np.ndarray, schema: Schema) -> None:
    """Warn of numeric training values EXTREME_DEVIATIONS median absolute deviations or more from their
    column's median (the rows that train and the rows that calibrate alike)."""
    if schema.image is not None or not isinstance(data, pd.DataFrame):
        return
    for col in schema.columns:
        if col.kind != "numeric":
            continue
        values = data[col.name]
        arr = values.to_numpy(dtype=np.float64)
        if np.isnan(arr).all():
            continue  # no value at all: fitting refuses the column
        with np.errstate(over="ignore", invalid="ignore"):
            gap = np.abs(arr - np.nanmedian(arr))
            mad = float(np.nanmedian(gap))
            extreme = np.isfinite(gap) & (gap > EXTREME_DEVIATIONS * mad) if mad > 0 else np.zeros(len(arr), bool)
        if extreme.any():
            rows = values.index[extreme][:5].tolist()
            warnings.warn(f"column '{col.name}' has training values more than {EXTREME_DEVIATIONS:,.0f} median "
                          f"absolute deviations from its median in rows {rows} (e.g. {arr[extreme][0]:.6g}): they set "
                          "its scale or its threshold; check them for unit or sensor errors, or drop those rows",
                          UserWarning, stacklevel=3)


def _location_scale(finite: np.ndarray) -> tuple[float, float, float]:
    """Mean, standard deviation and median of finite values. Values near the float64 limit make
    the plain sums overflow (1e308 + 1e308); those are computed on values divided by their largest
    magnitude instead, so every statistic stays finite (the plain path is kept otherwise: it is
    what every saved model was fitted with)."""
    if finite.size == 0:
        return 0.0, 0.0, 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        stats = (float(finite.mean()), float(finite.std()), float(np.median(finite)))
    if all(np.isfinite(stats)):
        return stats
    peak = float(np.abs(finite).max())
    scaled = finite / peak
    return float(scaled.mean()) * peak, float(scaled.std()) * peak, float(np.median(scaled)) * peak


def warn_of_identifiers(schema: Schema, n_rows: int, max_categories: int) -> None:
    """A text column with a value for (nearly) every row is an identifier (a host name, a request id):
    only its `max_categories` most frequent values are kept, and every new one is an unseen category."""
    for col in schema.columns:  # numbers with stray text have a warning of their own (Schema.infer)
        if col.kind == "categorical" and len(col.categories) > max(max_categories, n_rows // 2) \
                and not mostly_numbers(col.categories):
            warnings.warn(f"column '{col.name}' has {len(col.categories)} distinct values in {n_rows} rows: it looks "
                          "like an identifier, and new values will be unseen categories; drop it (--drop-cols in "
                          "the CLI) unless it is a real category", UserWarning, stacklevel=3)
