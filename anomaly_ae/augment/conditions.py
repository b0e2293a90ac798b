"""Context columns a generator is conditioned on: one-hot codes, readable labels, and their frequencies.

A categorical context column is one-hot over its training categories. A numeric one is cut into
quantile buckets (`n_bins`) and one-hot over the buckets; its value itself is still generated.
The joint frequencies of the training contexts are kept so that unconditional sampling (or a
partial condition) draws contexts as often as the data had them. Everything is plain JSON.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import pandas as pd

from anomaly_ae.exceptions import DataError


class ConditionEncoder:
    def __init__(self, columns: list[dict[str, Any]] | None = None,
                 combos: list[tuple[list[str], int]] | None = None) -> None:
        self.columns = columns or []  # {"name", "kind", "values": [labels]} (+ "edges" when numeric)
        self.combos = combos or []    # ([label per column], training count)

    @classmethod
    def fit(cls, frame: pd.DataFrame, names: list[str], numeric: set[str], n_bins: int) -> "ConditionEncoder":
        columns = []
        for name in names:
            values = frame[name]
            if values.isna().any():
                raise DataError(f"condition column '{name}' has missing values; fill them or condition on "
                                "another column")
            if name in numeric:
                arr = values.to_numpy(dtype=np.float64)
                edges = np.unique(np.quantile(arr, np.linspace(0, 1, n_bins + 1)[1:-1]))
                # an edge at the minimum (over 1/n_bins of the rows there) would open a bucket [min, min)
                edges = edges[edges > arr.min()].tolist()
                bounds = [float(arr.min()), *edges, float(arr.max())]
                # half-open [lo, hi) but the last, [lo, hi]: a value on an edge belongs to the bucket above it
                labels = [f"[{lo:.4g}, {hi:.4g}{']' if i == len(bounds) - 2 else ')'}"
                          for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:]))]
                columns.append({"name": name, "kind": "numeric", "edges": edges, "values": labels,
                                "range": [float(arr.min()), float(arr.max())]})
            else:
                columns.append({"name": name, "kind": "categorical",
                                "values": sorted({str(v) for v in values})})
        encoder = cls(columns)
        labels = encoder.labels(frame)
        counts = pd.Series(list(map(tuple, labels))).value_counts(sort=False)
        encoder.combos = sorted(([list(k), int(v)] for k, v in counts.items()), key=lambda kv: kv[0])
        return encoder

    @property
    def names(self) -> list[str]:
        return [c["name"] for c in self.columns]

    @property
    def dim(self) -> int:
        return sum(len(c["values"]) for c in self.columns)

    def labels(self, frame: pd.DataFrame | Mapping[str, Any]) -> np.ndarray:
        """(N, n_columns) array of context labels (category, or the numeric value's bucket)."""
        out = []
        for col in self.columns:
            values = np.asarray(frame[col["name"]], dtype=object)
            if col["kind"] == "numeric":
                bins = np.searchsorted(np.asarray(col["edges"]), values.astype(np.float64), side="right")
                out.append(np.asarray(col["values"], dtype=object)[bins])
            else:
                text = np.array([str(v) for v in values], dtype=object)
                unknown = sorted(set(text) - set(col["values"]))
                if unknown:
                    raise DataError(f"condition column '{col['name']}' has value(s) {unknown[:5]} the generator "
                                    f"was not trained on; known values: {col['values']}")
                out.append(text)
        return np.stack(out, axis=1) if out else np.empty((len(frame), 0), dtype=object)

    def encode_labels(self, labels: np.ndarray) -> np.ndarray:
        """One-hot codes (N, dim) for an array of labels as `labels` returns them."""
        parts = []
        for j, col in enumerate(self.columns):
            position = {v: i for i, v in enumerate(col["values"])}
            codes = np.array([position[v] for v in labels[:, j]], dtype=np.int64)
            parts.append(np.eye(len(col["values"]), dtype=np.float32)[codes])
        return np.concatenate(parts, axis=1) if parts else np.zeros((len(labels), 0), dtype=np.float32)

    def resolve(self, condition: Mapping[str, Any]) -> dict[str, str]:
        """User condition {column: value} -> {column: label}; a numeric value picks its bucket."""
        unknown = sorted(set(condition) - set(self.names))
        if unknown:
            raise DataError(f"cannot condition on {unknown}: the generator was trained on condition column(s) "
                            f"{self.names or 'none'}")
        out = {}
        for col in self.columns:
            if col["name"] not in condition:
                continue
            value = condition[col["name"]]
            if col["kind"] == "numeric" and str(value) not in col["values"]:
                try:
                    value = float(value)
                except (TypeError, ValueError):
                    raise DataError(f"condition {col['name']}={value!r} is neither a number nor one of the "
                                    f"buckets {col['values']}") from None
                # beyond the training range the outer bucket would be drawn as if it were the value asked for
                low, high = col.get("range", (-math.inf, math.inf))  # generators saved before: no range
                if not math.isfinite(value):
                    raise DataError(f"condition {col['name']}={value!r} is not a finite number; choose a value "
                                    f"or one of the buckets {col['values']}")
                if not low <= value <= high:
                    raise DataError(f"condition {col['name']}={value!r} is outside the training range "
                                    f"{low:.6g}..{high:.6g}; choose a value inside it or one of the buckets "
                                    f"{col['values']}")
                out[col["name"]] = col["values"][int(np.searchsorted(np.asarray(col["edges"]), value, side="right"))]
            elif str(value) in col["values"]:
                out[col["name"]] = str(value)
            elif set(col["values"]) <= {"True", "False"} and str(value).capitalize() in col["values"]:
                out[col["name"]] = str(value).capitalize()  # true/false in any case, as detectors take
            else:
                raise DataError(f"condition {col['name']}={value!r} was never seen in training; "
                                f"choose one of {col['values']}")
        return out

    def draw(self, n: int, condition: Mapping[str, Any] | None, rng: np.random.Generator) -> np.ndarray:
        """n label rows: the training contexts in their frequencies, restricted to `condition`."""
        fixed = self.resolve(condition or {})
        names = self.names
        rows = [(labels, count) for labels, count in self.combos
                if all(labels[names.index(k)] == v for k, v in fixed.items())]
        if not rows:  # the model never saw this context: its rows would be guesses
            seen = [dict(zip(names, labels)) for labels, _ in self.combos[:5]]
            raise DataError(f"no training row had the context {fixed}: the generator never learnt it; choose a "
                            f"context seen in training (e.g. {seen}{' ...' if len(self.combos) > 5 else ''})")
        weights = np.array([c for _, c in rows], dtype=np.float64)
        picks = rng.choice(len(rows), size=n, p=weights / weights.sum())
        return np.array([rows[i][0] for i in picks], dtype=object).reshape(n, len(names))

    def to_dict(self) -> dict[str, Any]:
        return {"columns": self.columns, "combos": self.combos}

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> "ConditionEncoder":
        columns = [{**c, "values": [str(v) for v in c["values"]],
                    **({"edges": [float(e) for e in c["edges"]]} if c["kind"] == "numeric" else {}),
                    **({"range": [float(r) for r in c["range"]]} if "range" in c else {})}
                   for c in payload["columns"]]
        return cls(columns, [[list(map(str, k)), int(v)] for k, v in payload["combos"]])
