"""Request and response shapes: the one definition each, used both to validate and to document.

`ScoreRequestParser` (one per app: the limits come from settings) holds the request model, two
variants behind a callable discriminator (`records`, or `columns` + `data`; JSON Schema `oneOf`).
It parses a body with orjson (which, unlike pydantic's parser, refuses NaN, Infinity and numbers
beyond float range) and validates it with that model, mapping pydantic's errors to the service's
stable error codes. Cell values stay plain JSON here: which types a column takes comes from the
served model's schema, checked by `Schema.check_columns` with the column and rows named; when a
model is loaded, `model_request_schema` writes those types into the OpenAPI document too.

`ScoreResponse` is what /v1/score returns (score_handler.py serialises through it).

Series models (`SeriesDetector`) take the same two forms with their time and series columns among
the columns, and the option `score_last` (N): the last N rows of each series are new and are the
only ones returned; the rows before them are context that completes the windows of the new rows
(see `anomaly_ae.series_stream` and docs/serving.md, "Series models").
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional, Union

import orjson
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, StrictBool, StrictInt, StrictStr, Tag,
                      TypeAdapter, ValidationError, ValidationInfo, WithJsonSchema, field_validator, model_validator)
from pydantic_core import PydanticCustomError

from anomaly_ae.exceptions import SchemaError
from anomaly_ae.service.errors import ApiError

EXAMPLE_RECORD = {"mode": "day", "cpu_util_pct": 55.2, "mem_util_pct": 61.0, "requests_per_s": 790.0,
                  "latency_ms": 118.0, "error_rate_pct": 0.48, "disk_io_mb_s": 41.0, "net_in_mb_s": 79.5,
                  "temperature_c": 55.1}
FLOAT_MAX = sys.float_info.max
# A cell as documented before a model is loaded: any JSON scalar. Validation leaves cells as they
# are: the model's schema decides per column (and names the column and row when it refuses one).
SCALAR_SCHEMA = {"type": ["number", "string", "boolean", "null"]}
Cell = Annotated[Any, WithJsonSchema(SCALAR_SCHEMA)]


def _integral(value: Any) -> Any:
    """JSON Schema's "integer" includes 18.0; a bool (an int to Python) is still refused."""
    return int(value) if type(value) is float and value.is_integer() else value


Integer = Annotated[StrictInt, BeforeValidator(_integral)]
RowId = Union[StrictStr, StrictInt]
REQUEST_FIELDS = ("records", "columns", "data", "ids", "explain", "top_k", "score_last")
SCORE_LAST = "score_last"
MAX_SERIES_ID_CHARS = 256  # as the request's `ids` (max_id_length's default): an id is echoed in notes


@dataclass(frozen=True)
class ParsedScoreRequest:
    columns: dict[str, Any]
    n_rows: int
    ids: list[Any] | None
    top_k: int  # 0 = no explanation
    score_last: int | None = None  # series models: the last N rows of each series are new (None: all rows)


def _request_form(body: Any) -> str | None:
    """Which variant a body is: None (refused as invalid_body) unless exactly one form is present."""
    if not isinstance(body, dict):
        return None
    records, columnar = "records" in body, "columns" in body or "data" in body
    if records == columnar:
        return None
    return "records" if records else "columns"


def _bad_rows(flags: list[bool]) -> list[int]:
    return [i for i, bad in enumerate(flags) if bad][:5]


def build_request_model(max_rows: int, max_top_k: int, max_id_length: int) -> Any:
    """The request model for these limits: an annotated union of the two forms (a TypeAdapter input)."""
    ids_description = (f"Optional caller ids, one per sample (as many as there are samples, which JSON Schema cannot "
                       f"say), echoed back; strings of at most {max_id_length} characters or 64-bit integers.")
    # integer ids within 64 bits: they are echoed back, and JSON's readers (orjson's writer too) stop there
    Ids = Optional[list[Union[Annotated[StrictStr, Field(max_length=max_id_length)],
                              Annotated[StrictInt, Field(ge=-2 ** 63, le=2 ** 63 - 1), BeforeValidator(_integral)]]]]

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        ids: Ids = Field(None, max_length=max_rows, description=ids_description)
        explain: StrictBool = Field(False, description="Return each sample's top contributing features.")
        top_k: Integer = Field(3, ge=1, le=max_top_k,
                                 description="How many contributing features to return with explain=true.")
        score_last: Optional[Annotated[StrictInt, Field(ge=1, le=max_rows), BeforeValidator(_integral)]] = Field(
            None,
            description="Series models only: the last N rows of each series (in time order) are new and are the "
                        "only ones scored into the response; the rows before them are context that completes "
                        "their windows (send the `context_rows` that GET /v1/model gives). Absent or null: every "
                        "row is returned.")

        # each form below defines n_rows(): how many samples it carries
        @model_validator(mode="after")
        def _one_id_per_sample(self) -> "Options":
            if self.ids is not None and len(self.ids) != self.n_rows():
                raise PydanticCustomError("invalid_ids", "'ids' must be a list with one id per sample ({n})",
                                          {"n": self.n_rows(), "field": "ids"})
            return self

    class RecordsScoreRequest(Options):
        """Samples as JSON objects keyed by column name (see GET /v1/model for the columns)."""

        model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
            {"records": [EXAMPLE_RECORD], "ids": ["host-17"], "explain": True, "top_k": 3}]})

        records: list[dict[str, Cell]] = Field(min_length=1, max_length=max_rows,
                                               description="Samples as objects keyed by column name.")

        def n_rows(self) -> int:
            return len(self.records)

        def columns_of(self) -> dict[str, Any]:
            records = self.records
            if len(records) == 1:
                return {name: [value] for name, value in records[0].items()}
            names = list(dict.fromkeys(name for record in records for name in record))  # first seen first
            columns = {name: [r.get(name, _ABSENT) for r in records] for name in names}
            uneven = [name for name in names if _ABSENT in columns[name]]
            if uneven:
                # the field fewest records have is named (a misspelt or extra one in a few records, rather
                # than every other record blamed for lacking it); the same answer on every worker
                name = min(uneven, key=lambda n: sum(v is not _ABSENT for v in columns[n]))
                present = [v is not _ABSENT for v in columns[name]]
                if 2 * sum(present) <= len(records):
                    rows = _bad_rows(present)
                    raise SchemaError(f"records in rows {rows} have the field '{name}' that the other records lack; "
                                      "every record needs the same columns (check its spelling)", column=name,
                                      rows=rows, reason="extra_column")
                rows = _bad_rows([not p for p in present])
                raise SchemaError(f"records in rows {rows} lack the field '{name}' that the other records have; "
                                  "every record needs every column", column=name, rows=rows,
                                  reason="missing_column")
            return columns

    class ColumnarScoreRequest(Options):
        """Samples as arrays, one value per name in `columns`, in that order."""

        model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
            {"columns": list(EXAMPLE_RECORD), "data": [list(EXAMPLE_RECORD.values())]}]})

        columns: list[StrictStr] = Field(min_length=1, json_schema_extra={"uniqueItems": True},
                                         description="Column names for `data`, each once.")
        data: list[list[Cell]] = Field(min_length=1, max_length=max_rows,
                                       description="Samples as arrays in `columns` order, each as long as "
                                                   "`columns`.")

        @field_validator("columns")
        @classmethod
        def _unique(cls, names: list[str]) -> list[str]:
            if len(set(names)) != len(names):
                dupes = sorted(n for n, k in Counter(names).items() if k > 1)  # names.count per name: quadratic
                raise PydanticCustomError("duplicate_column", "duplicate column name(s): {names}",
                                          {"names": ", ".join(dupes)[:200]})
            return names

        @field_validator("data")
        @classmethod
        def _not_ragged(cls, data: list[list[Any]], info: ValidationInfo) -> list[list[Any]]:
            names = info.data.get("columns")
            if names is not None:
                width = len(names)
                if set(map(len, data)) != {width}:
                    rows = _bad_rows([len(r) != width for r in data])
                    raise PydanticCustomError("invalid_row", "every row of 'data' must be an array of {width} "
                                              "values, one per column; rows {rows} are not",
                                              {"width": width, "rows": rows})
            return data

        def n_rows(self) -> int:
            return len(self.data)

        def columns_of(self) -> dict[str, Any]:
            return dict(zip(self.columns, zip(*self.data)))

    return Annotated[Union[Annotated[RecordsScoreRequest, Tag("records")],
                           Annotated[ColumnarScoreRequest, Tag("columns")]],
                     Discriminator(_request_form, custom_error_type="invalid_body",
                                   custom_error_message="send either 'records' or 'columns' + 'data'")]


_ABSENT = object()
# When several errors are found, the one reported is the first of these (as a caller would fix them).
_PRECEDENCE = ("invalid_body", "unknown_field", "invalid_field", "too_many_rows", "empty_batch", "duplicate_column",
               "invalid_record", "invalid_row", "invalid_ids")


_KEY_END = re.compile(rb'"\s*:')


def _repeated_key(body: bytes, payload: Any) -> str | None:
    """A key given twice in one object of the JSON body (orjson keeps the last value, silently), or None.

    Every key of a JSON text ends in a quote and a colon, which elsewhere only an escaped quote inside a
    string can precede; so when the body holds no more of them than the parsed objects have keys, no key
    was repeated (the common case, in a fraction of a millisecond for 1,000 records). Otherwise, or for
    objects nested where records are not expected, the body is parsed again, slower, to find the key."""
    if not isinstance(payload, dict):
        return None
    records = payload.get("records")
    keys = len(payload) + (sum(len(r) for r in records if isinstance(r, dict)) if isinstance(records, list) else 0)
    ends = body.count(b'":')
    if ends < keys:  # keys with a space before their colon
        ends = len(_KEY_END.findall(body))
    if ends <= keys:
        return None
    repeated: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        names = [k for k, _ in items]
        if not repeated and len(set(names)) < len(names):
            repeated.append(next(k for i, k in enumerate(names) if k in names[:i]))
        return dict(items)

    try:
        json.loads(body, object_pairs_hook=pairs)
    except ValueError:  # what orjson read, the standard parser reads too; should it not, nothing is known
        return None
    return repeated[0] if repeated else None


class ScoreRequestParser:
    """Body bytes -> `ParsedScoreRequest`, or an `ApiError` with the service's stable code."""

    def __init__(self, max_rows: int, max_top_k: int, max_id_length: int) -> None:
        self.max_rows, self.max_top_k, self.max_id_length = max_rows, max_top_k, max_id_length
        self.adapter = TypeAdapter(build_request_model(max_rows, max_top_k, max_id_length))

    def json_schema(self) -> dict[str, Any]:
        """The request body's JSON Schema, with its variants under $defs."""
        schema = self.adapter.json_schema(ref_template="#/components/schemas/{model}")
        schema["description"] = ("Exactly one of `records` or `columns` + `data`. " +
                                 "Options: `ids`, `explain`, `top_k`; `score_last` for series models.")
        return schema

    def parse(self, body: bytes) -> ParsedScoreRequest:
        if not body:
            raise ApiError(400, "invalid_json", "the request body is empty; send a JSON object")
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            if "UTF-8" in str(exc):
                raise ApiError(400, "invalid_json", f"the body is not UTF-8 text ({exc}); send JSON encoded as UTF-8"
                               ) from None
            raise ApiError(400, "invalid_json", f"the body is not valid JSON ({exc}); note that NaN and Infinity are "
                                                "not JSON: send null for a missing value") from None
        repeated = _repeated_key(body, payload)
        if repeated is not None:
            raise ApiError(422, "duplicate_column", f"the key {repeated[:100]!r} is given twice in one object, and "
                                                    "only one of its values would count; give each key once",
                           field=repeated[:100])
        try:
            request = self.adapter.validate_python(payload)
        except ValidationError as exc:
            raise self._api_error(exc.errors(include_url=False)) from None
        return ParsedScoreRequest(columns=request.columns_of(), n_rows=request.n_rows(), ids=request.ids,
                                  top_k=request.top_k if request.explain else 0, score_last=request.score_last)

    def _api_error(self, errors: list[dict[str, Any]]) -> ApiError:
        mapped = [self._map(e) for e in errors]
        mapped.sort(key=lambda m: _PRECEDENCE.index(m[0].code) if m[0].code in _PRECEDENCE else len(_PRECEDENCE))
        error, row = mapped[0]
        if row is not None:  # every bad row of the same kind, as the first five positions
            rows = sorted({r for e, r in mapped if r is not None and e.code == error.code})[:5]
            error.fields["rows"] = rows
            error.message = error.message.format(rows=rows)
        return error

    def _map(self, error: dict[str, Any]) -> tuple[ApiError, int | None]:
        """One pydantic error -> (ApiError, the row it is about or None)."""
        kind, loc, context = error["type"], error["loc"][1:], error.get("ctx") or {}  # loc[0] is the variant tag
        field = str(loc[0]) if loc else None
        if kind == "invalid_body":
            payload = error.get("input")
            if not isinstance(payload, dict):
                message = "the body must be a JSON object with 'records' or 'columns' and 'data'"
            elif "records" in payload:
                message = "send either 'records' or 'columns' + 'data', not both"
            else:
                message = "the body needs 'records' (a list of objects) or 'columns' and 'data'"
            return ApiError(422, "invalid_body", message), None
        if kind == "invalid_ids":  # the model validator's: at the top level
            return ApiError(422, "invalid_ids", error["msg"], field="ids"), None
        if field is None:  # nothing else is reported at the top level; a clear error all the same
            return ApiError(422, "invalid_body", error["msg"]), None
        if kind == "extra_forbidden":
            return ApiError(422, "unknown_field", f"unknown field {field[:100]!r}; allowed: "
                                                  f"{', '.join(REQUEST_FIELDS)}", field=field[:100]), None
        if kind == "missing":
            return ApiError(422, "invalid_body", "the columnar form needs both 'columns' and 'data'",
                            field=field), None
        if field == "explain":
            return ApiError(422, "invalid_field", "'explain' must be true or false", field=field), None
        if field == "top_k":
            return ApiError(422, "invalid_field", f"'top_k' must be an integer from 1 to {self.max_top_k}",
                            field=field), None
        if field == SCORE_LAST:
            return ApiError(422, "invalid_field", f"'score_last' must be an integer from 1 to {self.max_rows} (or "
                                                  "null): how many of the last rows of each series are new",
                            field=field), None
        if field == "ids":
            if kind == "too_long" and len(loc) == 1:
                return ApiError(413, "too_many_rows", f"more than {self.max_rows} ids", field=field), None
            return ApiError(422, "invalid_ids", f"each id must be a string of at most {self.max_id_length} characters "
                                                "or an integer of at most 64 bits", field=field), None
        if field == "columns":
            if kind == "duplicate_column":
                return ApiError(422, "duplicate_column", error["msg"], field=field), None
            return ApiError(422, "invalid_field", "'columns' must be a non-empty list of column names",
                            field=field), None
        # records or data
        if len(loc) == 1:
            if kind == "too_short":
                return ApiError(422, "empty_batch", f"'{field}' is empty; send at least one sample", field=field), None
            if kind == "too_long":
                return ApiError(413, "too_many_rows", f"{context.get('actual_length', 'too many')} rows is more than "
                                                      f"this service accepts in one request ({self.max_rows}); "
                                                      "split the batch", field=field), None
            if kind == "invalid_row":
                rows = context.get("rows") or []
                return ApiError(422, "invalid_row", error["msg"], field=field, rows=rows), None
            return ApiError(422, "invalid_field", f"'{field}' must be a list", field=field), None
        row = loc[1] if len(loc) > 1 and isinstance(loc[1], int) else None
        if field == "records":
            return ApiError(422, "invalid_record", "every record must be a JSON object; rows {rows} are not",
                            field=field), row
        return ApiError(422, "invalid_row", "every row of 'data' must be an array of values, one per column; rows "
                                            "{rows} are not", field=field), row


def model_request_schema(parser: ScoreRequestParser, columns: list[dict[str, Any]],
                         series: dict[str, Any] | None = None, example: dict[str, Any] | None = None) -> dict[str, Any]:
    """The request body's JSON Schema for one served model: `records` items and `data` rows take the
    model's columns with the types each accepts. The columnar form is documented with the columns in
    the model's order (JSON Schema cannot tie each value's type to a name sent in another array); the
    service takes them in any order.

    `series` (a series model's `StreamContract.to_dict()`): its time column (ISO 8601 text) and series
    column (text or integer) come first, and `score_last` is offered; a row model has no `score_last`.
    `example` (one row of the model's columns) replaces the default rows in the documented examples, which
    /docs pre-fills: the default row-telemetry record does not fit another model."""
    names = [c["name"] for c in columns]
    cells = {c["name"]: _cell_schema(c) for c in columns}
    if series is not None:
        keys = {}
        if series.get("time_col") is not None:
            keys[series["time_col"]] = {"type": "string", "format": "date-time",
                                        "description": "Timestamp as ISO 8601 text (e.g. 2026-01-05T10:00:00Z), "
                                                       "years 1678 to 2261; each series in time order, one row "
                                                       "per step at most."}
        if series.get("series_col") is not None:
            keys[series["series_col"]] = {"type": ["string", "integer"], "minimum": -2 ** 63,
                                          "maximum": 2 ** 63 - 1, "minLength": 1, "maxLength": MAX_SERIES_ID_CHARS,
                                          "description": "Series id (e.g. a host)."}
        names = [*keys, *names]
        cells = {**keys, **cells}
    schema = parser.json_schema()
    defs = schema["$defs"]
    for name, variant in defs.items():
        properties = dict(variant["properties"])
        if series is None:
            properties.pop(SCORE_LAST, None)
        examples = variant.get("examples")
        if "records" in properties:
            properties["records"] = {**properties["records"], "items": {
                "type": "object", "properties": cells, "required": names, "additionalProperties": False}}
            if example is not None:
                examples = [{"records": [{n: example[n] for n in names}], "explain": True, "top_k": 3}]
        else:
            properties["columns"] = {**properties["columns"], "prefixItems": [{"const": n} for n in names],
                                     "items": False, "minItems": len(names), "maxItems": len(names)}
            properties["data"] = {**properties["data"], "items": {
                "type": "array", "prefixItems": [cells[n] for n in names], "items": False,
                "minItems": len(names), "maxItems": len(names)}}
            if example is not None:
                examples = [{"columns": names, "data": [[example[n] for n in names]]}]
        defs[name] = {**variant, "properties": properties, **({"examples": examples} if examples else {})}
    schema["$defs"] = defs
    return schema


def _cell_schema(column: dict[str, Any]) -> dict[str, Any]:
    """What `Schema.check_columns` accepts for a column: numbers (within float range) for a numeric
    one, text, numbers or booleans for a categorical one; null where training had missing values."""
    if column["kind"] == "numeric":
        types: list[str] = ["number"]
        schema: dict[str, Any] = {"minimum": -FLOAT_MAX, "maximum": FLOAT_MAX}
    else:
        types, schema = ["string", "number", "boolean"], {}
    if column.get("allow_missing"):
        types.append("null")
    return {"type": types if len(types) > 1 else types[0], **schema}


# ---------------------------------------------------------------------------- responses
class FeatureContribution(BaseModel):
    feature: str
    contribution: float = Field(description="Share of the sample's misfit (shares of all features sum to 1).")


class ScoredSample(BaseModel):
    id: Optional[RowId] = Field(None, description="The caller's id, when ids were sent.")
    row: Optional[int] = Field(None, description="Series models: the row's position in the request (0-based), as "
                                                 "only the new rows are returned.")
    score: float = Field(description="Anomaly score: higher is more anomalous.")
    p_value: float = Field(description="Conformal p-value: share of held-out normal samples scoring at least as "
                                       "high.")
    is_anomaly: bool = Field(description="score > the model's threshold.")
    severity: Literal["normal", "low", "medium", "high", "critical"]
    top_features: Optional[list[FeatureContribution]] = Field(None, description="With explain=true.")
    alert: Optional[bool] = Field(None, description="Series models: the alert rule fires at this row (at least "
                                                    "min_steps of the last `within` steps flagged, and not at any "
                                                    "of the `cooldown` steps before).")
    notes: list[str] = Field(description="Remarks that are not errors: unseen categories, imputed values; for "
                                         "series models also warm-up (less history than the window), gaps and "
                                         "series not seen in training.")


class ModelRefOut(BaseModel):
    name: str
    version: str
    alias: Optional[str]


class ScoreResponse(BaseModel):
    model: ModelRefOut
    threshold: float
    n_rows: int = Field(description="Rows returned (series models with score_last: the new rows).")
    n_anomalies: int
    n_alerts: Optional[int] = Field(None, description="Series models: alerts among the returned rows.")
    n_context_rows: Optional[int] = Field(None, description="Series models: rows sent as context only (scored to "
                                                            "complete windows, not returned).")
    results: list[ScoredSample]


class AlertRuleInfo(BaseModel):
    min_steps: int
    within: int
    cooldown: int


class SeriesInfo(BaseModel):
    """What a stream client needs to send a series model the right rows."""

    window: int = Field(description="Steps in the window that scores a row (the row and the window - 1 before it).")
    context_rows: int = Field(description="Rows of each series to send before its new rows: window - 1 for exact "
                                          "scores, plus within - 1 + cooldown for exact alerts.")
    time_col: Optional[str] = Field(description="Timestamp column (ISO 8601 text); null: rows are in time order.")
    series_col: Optional[str] = Field(description="Series id column; null: one series.")
    step_seconds: Optional[float] = Field(description="The sampling step learned in training.")
    max_gap: int = Field(description="Gaps of at most this many steps are filled with the last value; longer ones "
                                     "restart the window (noted).")
    alert_rule: AlertRuleInfo
    n_known_series: int = Field(description="Series in the training data (others are scored, with a note).")
    covariates: list[str] = Field(default_factory=list,
                                  description="Calendar inputs the model reads from the time column (time_of_day, "
                                              "day_of_week); nothing to send.")


class ModelInfo(BaseModel):
    name: str
    version: str
    alias: Optional[str]
    uri: str
    model_type: str
    kind: Literal["detector", "series"] = Field(description="series: rows are scored by windows in time, per "
                                                            "series (see `series`).")
    series: Optional[SeriesInfo] = Field(None, description="Series models: the stream contract.")
    score_type: str
    threshold: float
    target_fpr: float
    schema_: dict[str, Any] = Field(alias="schema", description="Columns with kind, allow_missing and categories.")
    loaded_at: str = Field(description="ISO 8601 UTC time this version was loaded.")
    load_seconds: float


class ErrorDetail(BaseModel):
    status: int
    code: str = Field(description="Stable machine-readable reason, e.g. missing_column, invalid_json.")
    message: str
    column: Optional[str] = None
    rows: Optional[list[int]] = None
    field: Optional[str] = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ReloadResponse(BaseModel):
    status: Literal["loaded", "unchanged"]
    model: ModelRefOut


class Status(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready"]
    model: ModelRefOut
