"""The input contract of a fitted model: which columns, of which kind, with which categories.

The schema is inferred at fit, saved as JSON beside the weights, and every later input is
checked against it before anything is computed, so a bad request fails with a message that
names the column and rows instead of producing a silently wrong score.
"""

from __future__ import annotations

import datetime as dt
import itertools
import numbers
import re
import warnings
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import pandas as pd

from anomaly_ae.exceptions import DataError, SchemaError

ColumnKind = Literal["numeric", "categorical"]

# Numeric dtypes stay numeric (0/1 flags keep their order); text, bool and category dtypes are
# categorical. Errors name at most this many offending rows.
MAX_ROWS_NAMED_IN_ERRORS = 5


@dataclass(frozen=True)
class Column:
    name: str
    kind: ColumnKind
    allow_missing: bool = False
    categories: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class ImageSpec:
    """Shape (C, H, W) of image input; images have no per-column schema."""

    channels: int
    height: int
    width: int


@dataclass
class CheckReport:
    """What a successful check found that the caller may want to report (not an error)."""

    unseen_categories: dict[str, int] = field(default_factory=dict)
    missing_values: dict[str, int] = field(default_factory=dict)


class _Positions:
    """Stands in for a RangeIndex when rows are positions (building one costs more than a 1-row check)."""

    def __getitem__(self, positions: np.ndarray) -> np.ndarray:
        return positions


def _rows(mask: np.ndarray, index: pd.Index) -> list[int]:
    return [int(i) if isinstance(i, (int, np.integer)) else i
            for i in index[np.flatnonzero(mask)[:MAX_ROWS_NAMED_IN_ERRORS]]]


class Schema:
    """Columns of tabular input, or the shape of image input."""

    def __init__(self, columns: list[Column] | None = None, image: ImageSpec | None = None,
                 from_array: bool = False, ignored: Sequence[str] = ()) -> None:
        self.columns = columns or []
        self.image = image
        # Models fitted on a bare 2-D array accept arrays of the same width at scoring time.
        self.from_array = from_array
        # Columns the model was told to ignore (ids, labels): left out of the input where present.
        self.ignored = tuple(ignored)

    # ------------------------------------------------------------------ construction
    @classmethod
    def infer(cls, data: pd.DataFrame | np.ndarray) -> "Schema":
        if isinstance(data, np.ndarray) and data.ndim in (3, 4):
            _require_rows(len(data))
            shape = data.shape[1:] if data.ndim == 4 else (1, *data.shape[1:])
            return cls(image=ImageSpec(*map(int, shape)))
        from_array = isinstance(data, np.ndarray)
        frame = as_frame(data)
        _require_rows(len(frame))
        columns = []
        for name in frame.columns:
            values = _na_text_as_missing_numbers(frame[name])
            missing = bool(values.isna().any())
            _check_trainable(name, values)
            if _is_numeric(values) or _numbers_as_objects(values):
                columns.append(Column(name, "numeric", allow_missing=missing))
            else:
                if values.dtype == object:
                    nested = values.map(lambda v: isinstance(v, (list, tuple, dict, set, np.ndarray))).to_numpy()
                    if nested.any():
                        rows = _rows(nested, values.index)
                        raise DataError(f"column '{name}' holds a {type(values[nested].iloc[0]).__name__} in rows "
                                        f"{rows}; each cell must be one number or one category (text)",
                                        column=str(name), rows=rows)
                _warn_of_numbers_with_stray_text(name, values)
                cats = sorted({str(v) for v in values.dropna().unique()})
                columns.append(Column(name, "categorical", allow_missing=missing, categories=tuple(cats)))
        return cls(columns=columns, from_array=from_array)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def n_features(self) -> int:
        return len(self.columns)

    @property
    def text_columns(self) -> list[str]:
        """The categorical columns a CSV reader should keep as text: their categories are the training
        data's text, which a number read from it may not give back ("01234" is not 1234, "2" not 2.0).
        Columns of True/False only are left to the reader, which reads "true" and "TRUE" as True too."""
        return [c.name for c in self.columns if c.kind == "categorical" and not set(c.categories) <= {"False", "True"}]

    # ------------------------------------------------------------------ checking
    def check(self, data: pd.DataFrame | np.ndarray) -> tuple[pd.DataFrame | np.ndarray, CheckReport]:
        """Validate input against the schema; return it in canonical form and what was noticed."""
        if self.image is not None:
            return self._check_image(data), CheckReport()
        if isinstance(data, np.ndarray):
            if data.ndim != 2:
                raise SchemaError(f"expected a 2-D array (rows x {self.n_features} features), got shape {data.shape}",
                                  reason="shape")
            if data.shape[1] != self.n_features:
                raise SchemaError(
                    f"expected {self.n_features} columns, got {data.shape[1]}; pass the same features the model "
                    f"was trained on ({', '.join(self.names[:10])}{'...' if self.n_features > 10 else ''})",
                    reason="columns")
            if not self.from_array and self.names != [f"x{i}" for i in range(self.n_features)]:
                # as scikit-learn does: an array's columns are taken by position, so a different order
                # would be scored silently wrong (models saved before `from_array` have x0, x1, ... names)
                warnings.warn(f"X is an array, but this model was fitted on named columns "
                              f"({_listed(self.names)}): its columns are taken in that order; pass a DataFrame "
                              "so that the names are checked", UserWarning, stacklevel=5)
            data = pd.DataFrame(data, columns=self.names)
        if not isinstance(data, pd.DataFrame):
            raise DataError(f"expected a pandas DataFrame or a numpy array, got {type(data).__name__}")
        if len(data) == 0:
            raise DataError("the input has no rows; send at least one sample")
        _refuse_multiindex(data)
        names = pd.Index([str(c) for c in data.columns])
        if names.duplicated().any():
            raise SchemaError(f"duplicate column names: {sorted(set(names[names.duplicated()]))}; give each "
                              "column once", column=str(names[names.duplicated()][0]), reason="duplicate_column")
        self._check_column_names(list(names))
        if not all(isinstance(c, str) for c in data.columns):
            data = data.copy()
            data.columns = [str(c) for c in data.columns]
        report = CheckReport()
        numeric = self._check_numeric_frame(data)
        if numeric is not None and numeric.shape[1] == len(self.columns):
            return numeric, report
        out = {col.name: numeric[col.name] if numeric is not None and col.kind == "numeric"
               else self._check_column(col, data[col.name], report) for col in self.columns}
        return pd.DataFrame(out, index=data.index), report

    def _check_numeric_frame(self, data: pd.DataFrame) -> pd.DataFrame | None:
        """The numeric columns at once when they are numpy numbers, all finite (the common case): one
        float64 block, where the column-by-column checks cost about 1 ms per column; None otherwise,
        and the column-by-column checks then report the first problem with its rows."""
        names = [col.name for col in self.columns if col.kind == "numeric"]
        if not data.columns.is_unique or not all(isinstance(d, np.dtype) and d.kind in "iuf"
                                                 for d in data.dtypes[names]):
            return None
        block = data[names].to_numpy(dtype=np.float64)
        if not np.isfinite(block).all():
            return None
        return pd.DataFrame(block, index=data.index, columns=names)

    def _check_column_names(self, present: list[str]) -> None:
        known, given = set(self.names) | set(self.ignored), set(present)
        missing = [n for n in self.names if n not in given]
        extra = [c for c in present if c not in known]
        if missing:
            # a header written by hand often differs only by case or spaces: name the column that was meant
            near = {str(c).strip().casefold(): c for c in extra}
            alike = [f"{short_repr(str(near[str(n).strip().casefold()]), 60)} for '{n}'" for n in missing
                     if str(n).strip().casefold() in near][:5]
            hint = f" (the input has {', '.join(alike)}: rename them)" if alike else (
                f"; the input also has column(s) it was not trained on: {_listed(extra)}" if extra else "")
            raise SchemaError(f"missing column(s): {_listed(missing)}; the model needs every training column{hint}",
                              column=missing[0], reason="missing_column")
        if extra:
            raise SchemaError(f"unexpected column(s): {_listed(extra)}; drop them or retrain with them",
                              column=extra[0][:200], reason="extra_column")

    def _check_column(self, col: Column, values: pd.Series, report: CheckReport) -> pd.Series:
        if col.kind == "numeric":
            # pd.to_numeric would turn times into nanoseconds and keep complex numbers (then cut to their
            # real part)
            what = _not_real_numbers(values)
            if what is not None:
                raise SchemaError(f"column '{col.name}' must be numeric but holds {what} ({values.dtype}); "
                                  "convert it to a number first, or drop it", column=col.name, reason="dtype")
            # True/False would be read as 1/0 silently (the service refuses them in JSON; at fit a bool
            # column is categorical)
            flags = values.map(lambda v: isinstance(v, (bool, np.bool_))).to_numpy(dtype=bool) \
                if values.dtype == object else np.full(len(values), pd.api.types.is_bool_dtype(values))
            if flags.any():
                rows = _rows(flags, values.index)
                raise SchemaError(f"column '{col.name}' must be numeric but holds True/False in rows {rows}; the "
                                  "model learned numbers there: send 1/0 if that is what they mean",
                                  column=col.name, rows=rows, reason="dtype")
            if values.dtype == object or pd.api.types.is_string_dtype(values):
                values = values.mask(values.isin(NA_TEXT))  # read from a CSV, a number's "NA" is missing
            numeric = pd.to_numeric(values, errors="coerce")
            bad = numeric.isna() & values.notna()
            if bad.any():
                rows = _rows(bad.to_numpy(), values.index)
                raise SchemaError(
                    f"column '{col.name}' must be numeric but has non-numeric values in rows {rows} "
                    f"(e.g. {values[bad].iloc[0]!r}); fix or drop those rows",
                    column=col.name, rows=rows, reason="dtype")
            arr = numeric.to_numpy(dtype=np.float64, na_value=np.nan)
            _check_numbers(col, arr, values.index, report, missing=" (NaN)")
            return pd.Series(arr, index=values.index, name=col.name)
        # categorical: compare as strings so 1 and "1" mean the same category
        isna = values.isna().to_numpy()
        # Built element-wise: Series.where(..., None) turns None back into NaN, which str() makes "nan".
        text = np.empty(len(values), dtype=object)
        text[:] = [None if missing else str(v) for v, missing in zip(values.to_numpy(dtype=object), isna)]
        read_as_missing = [t for t in NA_TEXT if t not in col.categories]  # a model from before CSVs kept them
        if read_as_missing:
            na = np.isin(text, read_as_missing)
            if na.any():
                text[na], isna = None, isna | na
        _same_truth_words(col, text)
        _check_categories(col, text, isna, values.index, report, missing="")
        return pd.Series(text, index=values.index, dtype=object, name=col.name)

    def check_columns(self, columns: Mapping[str, Sequence[Any]]) -> tuple[dict[str, np.ndarray], CheckReport]:
        """Validate already-parsed JSON values, one equal-length sequence per column, without pandas.

        The scoring service's fast path: the same checks and SchemaError reasons as `check`, but
        stricter on types, as JSON has real types where a CSV has only text. A numeric column takes
        numbers only (int or float; never a bool or a numeric string) and None for missing; a
        categorical column takes text, numbers or booleans (compared as text, like `check`) and None.
        Returns float64 arrays (NaN = missing) for numeric columns and object arrays of str/None for
        categorical ones; `Preprocessor.transform` accepts that dict like a checked DataFrame.
        Rows in errors are positions (0-based).
        """
        if self.image is not None:
            raise SchemaError("this model scores images, not columns; pass an image array", reason="shape")
        names = self.names
        self._check_column_names([str(c) for c in columns])
        lengths = {len(columns[n]) for n in names}
        if len(lengths) != 1:
            raise SchemaError(f"columns have different lengths {sorted(lengths)}; every column needs one value per row",
                              reason="shape")
        if lengths == {0}:
            raise DataError("the input has no rows; send at least one sample")
        report = CheckReport()
        out = self._check_numeric_block(columns, report)
        for col in self.columns:
            if col.kind == "categorical":
                out[col.name] = self._check_values(col, columns[col.name], report)
        return {name: out[name] for name in names}, report

    def _check_numeric_block(self, columns: Mapping[str, Sequence[Any]], report: CheckReport) -> dict[str, np.ndarray]:
        """All numeric columns at once when they are clean (the common case); the first problem is
        then reported by the column-by-column checks, with the same messages."""
        numeric = [col for col in self.columns if col.kind == "numeric"]
        if not numeric:
            return {}
        try:
            if not set(map(type, itertools.chain.from_iterable(columns[c.name] for c in numeric))) <= _JSON_NUMBER_TYPES:
                raise ValueError
            block = np.array([columns[c.name] for c in numeric], dtype=np.float64)
        except (ValueError, TypeError, OverflowError):
            block = None
        if block is None or block.ndim != 2 or not np.isfinite(block).all():
            return {col.name: self._check_values(col, columns[col.name], report) for col in numeric}
        return {col.name: block[j] for j, col in enumerate(numeric)}

    def _check_values(self, col: Column, values: Sequence[Any], report: CheckReport) -> np.ndarray:
        positions = _Positions()
        types = set(map(type, values))
        if col.kind == "numeric":
            if not types <= _JSON_NUMBER_TYPES:
                bad = np.fromiter((not _is_number_or_none(v) for v in values), dtype=bool, count=len(values))
                if bad.any():
                    rows = _rows(bad, positions)
                    raise SchemaError(
                        f"column '{col.name}' must be numeric but has non-numeric values in rows {rows} "
                        f"(e.g. {short_repr(values[rows[0]])}); send numbers (null for missing)",
                        column=col.name, rows=rows, reason="dtype")
            try:
                arr = np.array(values, dtype=np.float64)
            except OverflowError:
                bad = np.fromiter((_overflows(v) for v in values), dtype=bool, count=len(values))
                rows = _rows(bad, positions)
                raise SchemaError(f"column '{col.name}' has values too large for a 64-bit float in rows {rows}; "
                                  "check them for unit or sensor errors", column=col.name, rows=rows,
                                  reason="overflow") from None
            if arr.ndim != 1:
                raise SchemaError(f"column '{col.name}' must hold one number per row", column=col.name, reason="shape")
            _check_numbers(col, arr, positions, report, missing=" (null)")
            return arr
        if not types <= _JSON_TEXT_TYPES:
            bad = np.fromiter((not isinstance(v, (str, numbers.Real)) and v is not None for v in values),
                              dtype=bool, count=len(values))
            if bad.any():
                rows = _rows(bad, positions)
                raise SchemaError(
                    f"column '{col.name}' is categorical but has values that are not text, numbers or booleans "
                    f"in rows {rows} (e.g. {short_repr(values[rows[0]])})", column=col.name, rows=rows, reason="dtype")
            values = [None if v is None or (isinstance(v, float) and v != v) else str(v) for v in values]
            types = set(map(type, values))
        arr = np.empty(len(values), dtype=object)
        arr[:] = values
        isna = (arr == None) if type(None) in types else np.zeros(len(arr), dtype=bool)  # noqa: E711
        _same_truth_words(col, arr)
        _check_categories(col, arr, isna, positions, report, missing=" (null)")
        return arr

    def _check_image(self, data: Any) -> np.ndarray:
        spec = self.image
        assert spec is not None
        arr = np.asarray(data)
        if arr.ndim == 3 and spec.channels == 1:
            arr = arr[:, None]
        if arr.ndim != 4 or arr.shape[1:] != (spec.channels, spec.height, spec.width):
            raise SchemaError(f"expected images of shape (N, {spec.channels}, {spec.height}, {spec.width}), "
                              f"got {arr.shape}", reason="shape")
        if len(arr) == 0:
            raise DataError("the input has no images; send at least one")
        if not np.issubdtype(arr.dtype, np.number):
            raise SchemaError(f"images must be numeric, got dtype {arr.dtype}", reason="dtype")
        arr = arr.astype(np.float64)
        bad = ~np.isfinite(arr).reshape(len(arr), -1).all(axis=1)
        if bad.any():
            raise SchemaError(f"images {np.flatnonzero(bad)[:MAX_ROWS_NAMED_IN_ERRORS].tolist()} contain NaN or "
                              "infinite pixels; fix or drop them", reason="non_finite")
        return arr

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        return {
            "columns": [{**asdict(c), "categories": list(c.categories)} for c in self.columns],
            "image": asdict(self.image) if self.image else None,
            "from_array": self.from_array,
            "ignored": list(self.ignored),
        }

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> "Schema":
        columns = [Column(c["name"], c["kind"], bool(c["allow_missing"]), tuple(c["categories"]))
                   for c in payload["columns"]]
        image = ImageSpec(**payload["image"]) if payload.get("image") else None
        return cls(columns=columns, image=image, from_array=bool(payload.get("from_array", False)),
                   ignored=tuple(payload.get("ignored", ())))


# ---------------------------------------------------------------------- checks shared by both input forms
def _check_numbers(col: Column, arr: np.ndarray, index: Any, report: CheckReport, *, missing: str) -> None:
    """A numeric column as float64: no infinities; NaN only where training had missing values.
    `missing` names how the input spells a missing value in messages (" (NaN)" in tables, " (null)" in JSON)."""
    inf = np.isinf(arr)
    if inf.any():
        rows = _rows(inf, index)
        raise SchemaError(f"column '{col.name}' has infinite values in rows {rows}; replace them with "
                          "finite numbers or drop those rows", column=col.name, rows=rows, reason="non_finite")
    nan = np.isnan(arr)
    if nan.any():
        if not col.allow_missing:
            rows = _rows(nan, index)
            raise SchemaError(
                f"column '{col.name}' has missing values{missing} in rows {rows} but had none in training; "
                "impute them, drop those rows, or retrain on data that includes missing values",
                column=col.name, rows=rows, reason="missing_value")
        report.missing_values[col.name] = int(nan.sum())


# 1 and 0 as a yes/no column's values: a database's or Parquet's integer flag, a JSON client's number
_TRUTH_NUMBERS = {"1": "true", "1.0": "true", "0": "false", "0.0": "false"}


def _same_truth_words(col: Column, text: np.ndarray) -> None:
    """A yes/no column takes true and false in any case, and 1 and 0, as its training spelling, in place: a
    CSV's `true` reaches the model as the bool True ('True'), a JSON client's as the text 'true'."""
    spelling = {c.lower(): c for c in col.categories}
    if not spelling or not set(spelling) <= {"true", "false"}:
        return
    for i, value in enumerate(text.tolist()):
        if value is not None and value not in col.categories:
            word = _TRUTH_NUMBERS.get(value, value.lower())
            if word in spelling:
                text[i] = spelling[word]


def _check_categories(col: Column, text: np.ndarray, isna: np.ndarray, index: Any, report: CheckReport, *,
                      missing: str) -> None:
    """A categorical column as text (None = missing): missing only where training allowed it;
    categories never seen in training are counted, not refused (they are scored and noted)."""
    if isna.any():
        if not col.allow_missing:
            rows = _rows(isna, index)
            raise SchemaError(
                f"column '{col.name}' has missing values{missing} in rows {rows} but had none in training; "
                "fill them with a category or drop those rows", column=col.name, rows=rows, reason="missing_value")
        report.missing_values[col.name] = int(isna.sum())
    known = set(col.categories)
    unseen = sum(1 for v in text.tolist() if v is not None and v not in known)
    if unseen:
        report.unseen_categories[col.name] = unseen


def _refuse_multiindex(data: pd.DataFrame) -> None:
    """Tuples as column names would be read as their text, e.g. "('a', 'mode')", never as a column."""
    if isinstance(data.columns, pd.MultiIndex):
        raise DataError(f"the columns are a MultiIndex (e.g. {data.columns[0]!r}); flatten them to single names "
                        "first, e.g. frame.columns = frame.columns.get_level_values(-1)")


def as_frame(data: pd.DataFrame | np.ndarray) -> pd.DataFrame:
    if isinstance(data, pd.DataFrame):
        if len(data.columns) == 0:
            raise DataError("the input has no columns")
        _refuse_multiindex(data)
        out = data.copy()
        out.columns = [str(c) for c in out.columns]
        if out.columns.duplicated().any():
            raise DataError(f"duplicate column names: {sorted(set(out.columns[out.columns.duplicated()]))}")
        return out
    arr = np.asarray(data)
    if arr.ndim != 2:
        raise DataError(f"expected a 2-D array (rows x features) or a DataFrame, got shape {arr.shape}")
    return pd.DataFrame(arr, columns=[f"x{i}" for i in range(arr.shape[1])])


_JSON_NUMBER_TYPES = {int, float, type(None)}
_JSON_TEXT_TYPES = {str, type(None)}


def _is_number_or_none(value: Any) -> bool:
    return value is None or (isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)))


def _overflows(value: Any) -> bool:
    try:
        float(value)
    except (OverflowError, TypeError, ValueError):
        return True
    return False


def _listed(names: list[str], most: int = 10, limit: int = 60) -> str:
    """Column names for a message: at most `most`, each cut to `limit` characters (they may come from a
    client and be of any length)."""
    shown = [n if len(n) <= limit else n[: limit - 3] + "..." for n in names[:most]]
    shown = [repr(n) if not n.strip() else n for n in shown]  # a blank name, shown as ''
    return ", ".join(shown) + (f" and {len(names) - most} more" if len(names) > most else "")


def short_repr(value: Any, limit: int = 40) -> str:
    """A value's repr for a message, cut to `limit` characters: messages repeat input of any length."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _require_rows(n: int) -> None:
    if n == 0:
        raise DataError("the training data has no rows; pass at least a few hundred normal samples")


# Text that a CSV reader leaves to the column (data.io reads pandas' other missing markers as NaN): a missing
# value in a column of numbers (R writes NA there), a value in a column of text (North America, a plan),
# and missing in a text column that never held it in training (as pandas read it before).
NA_TEXT = ("NA", "None")


def _check_trainable(name: Any, values: pd.Series) -> None:
    """Refuse timestamps and durations in training data: one-hot encoded as text, every new row would be
    an unseen category (scoring refuses them in a numeric column for the same reason)."""
    present = values.dropna()
    what = _not_real_numbers(values)
    if what == "complex numbers":
        raise DataError(f"column '{name}' holds complex numbers ({values.dtype}); a model scores real numbers: "
                        "split it into its real and imaginary parts (or take its magnitude), or drop it",
                        column=str(name))
    times = (dt.date, dt.time, dt.timedelta, np.datetime64, np.timedelta64)
    if what is None and values.dtype == object and len(present) > 0 and present.map(
            lambda v: isinstance(v, times)).all():
        what = "times"
    if what is None and _all_iso_times(present):  # timestamps read from a CSV arrive as text
        what = "times"
    if what is not None:
        example = f", e.g. {short_repr(present.iloc[0])}" if len(present) else ""
        raise DataError(f"column '{name}' holds {'durations' if what == 'durations' else 'times'} "
                        f"({values.dtype}{example}); a model scores numbers and "
                        "categories: convert it to a number (e.g. hour of day) or drop it (--drop-cols); for "
                        "metric streams over time use SeriesDetector(time_col=...)", column=str(name))


# A date or a date and time as ISO 8601 writes them (what pandas and most exports write to CSV).
_ISO_TIME = r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?(?:Z|[+-]\d{2}:?\d{2})?"


def _all_iso_times(present: pd.Series) -> bool:
    """Whether every value of a column (missing ones dropped) is text holding an ISO 8601 date or time."""
    first = present.iloc[0] if len(present) else None
    if not isinstance(first, str) or re.fullmatch(_ISO_TIME, first) is None:  # most columns stop here
        return False
    text = present.map(lambda v: v if isinstance(v, str) else None)
    return bool(text.notna().all() and text.str.fullmatch(_ISO_TIME).all())


def _not_real_numbers(values: pd.Series) -> str | None:
    """What a column's dtype holds when it is no real number: "durations", "timestamps", "periods" or
    "complex numbers" (fitting and scoring refuse them alike); else None."""
    if isinstance(values.dtype, pd.PeriodDtype):
        return "periods"
    return {"m": "durations", "M": "timestamps", "c": "complex numbers"}.get(values.dtype.kind)


def _na_text_as_missing_numbers(values: pd.Series) -> pd.Series:
    """A text column of numbers and `NA_TEXT` (or of `NA_TEXT` alone) as numbers with NaN; others as they are."""
    if not (values.dtype == object or pd.api.types.is_string_dtype(values)):
        return values
    marker = values.isin(NA_TEXT)
    if not marker.any():
        return values
    rest = values[~marker & values.notna()]
    if len(rest) and pd.to_numeric(rest, errors="coerce").isna().any():
        return values  # text: the markers are values
    return pd.to_numeric(values.mask(marker), errors="coerce")


# A text column this much of whose values are numbers is numbers with a few bad cells, not categories.
MIN_NUMBER_SHARE = 0.9


def _warn_of_numbers_with_stray_text(name: Any, values: pd.Series) -> None:
    """A column of numbers with a few non-numeric cells (one 'abc', a unit, a sensor's 'ERR') is learned as
    categories, one per value: the model no longer watches it as a number. Said, not refused: such columns
    are also real categories (grades K, 1-12; status codes with '-'). Columns of the pandas dtype 'category',
    and codes written with leading zeros, are categories as they are."""
    if isinstance(values.dtype, pd.CategoricalDtype) or \
            not (values.dtype == object or pd.api.types.is_string_dtype(values)):
        return
    present = values.notna().to_numpy()
    text = values.astype(str).str.strip()
    number = pd.to_numeric(text.where(present, ""), errors="coerce").notna().to_numpy() & present
    if present.sum() < 10 or number.sum() == present.sum() or number.sum() < MIN_NUMBER_SHARE * present.sum() \
            or text[number].str.match(r"[+-]?0\d").any():
        return
    bad = present & ~number & ~text.isin(NA_TEXT).to_numpy()  # "NA" beside numbers reads as missing once fixed
    bad = bad if bad.any() else present & ~number
    warnings.warn(f"column '{name}' holds numbers but also text in rows {_rows(bad, values.index)} (e.g. "
                  f"{values[bad].iloc[0]!r}), so it is learned as categories, one per value, and not watched as a "
                  "number: fix or drop those rows if they are errors", UserWarning, stacklevel=4)


def mostly_numbers(categories: Sequence[str]) -> bool:
    """Whether MIN_NUMBER_SHARE of a categorical column's values read as numbers."""
    return bool(len(categories)) and \
        pd.to_numeric(pd.Series(categories), errors="coerce").notna().mean() >= MIN_NUMBER_SHARE


def _numbers_as_objects(values: pd.Series) -> bool:
    """An object column that holds only real numbers (Decimal from a database or a Parquet decimal
    column, Python ints and floats): numeric, as its values say. Read as text it would be one category
    per value, and a value far outside the training range only an unseen category."""
    if values.dtype != object:
        return False
    present = values.dropna()
    return bool(len(present)) and bool(present.map(
        lambda v: isinstance(v, (numbers.Real, Decimal)) and not isinstance(v, (bool, np.bool_))).all())


def _is_numeric(values: pd.Series) -> bool:
    if pd.api.types.is_bool_dtype(values):
        return False
    return pd.api.types.is_numeric_dtype(values)
