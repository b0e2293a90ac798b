"""Request and response shapes: pydantic models that document the API, and the fast request parser.

The models below are what /docs and /openapi.json show. `parse_score_request` enforces the same
shape on the raw JSON (parsed by orjson) without building pydantic objects for every row, which
would cost more than scoring a 1-row request; the per-column types come from the model's own
schema (`Schema.check_columns`), which no static model can express.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional, Union

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from anomaly_ae.exceptions import SchemaError
from anomaly_ae.service.errors import ApiError

Value = Optional[Union[StrictFloat, StrictInt, StrictStr, StrictBool]]
RowId = Union[StrictStr, StrictInt]

EXAMPLE_RECORD = {"mode": "day", "cpu_util_pct": 55.2, "mem_util_pct": 61.0, "requests_per_s": 790.0,
                  "latency_ms": 118.0, "error_rate_pct": 0.48, "disk_io_mb_s": 41.0, "net_in_mb_s": 79.5,
                  "temperature_c": 55.1}


class ScoreRequest(BaseModel):
    """Either `records` (one JSON object per sample) or `columns` + `data` (one array per sample)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"records": [EXAMPLE_RECORD], "ids": ["host-17"], "explain": True, "top_k": 3},
        {"columns": list(EXAMPLE_RECORD), "data": [list(EXAMPLE_RECORD.values())]},
    ]})

    records: Optional[list[dict[str, Value]]] = Field(
        None, min_length=1, description="Samples as objects keyed by column name (see GET /v1/model for the schema).")
    columns: Optional[list[StrictStr]] = Field(None, min_length=1, description="Column names for `data`.")
    data: Optional[list[list[Value]]] = Field(None, min_length=1, description="Samples as arrays in `columns` order.")
    ids: Optional[list[RowId]] = Field(None, description="Optional caller ids, one per sample, echoed back.")
    explain: StrictBool = Field(False, description="Return each sample's top contributing features.")
    top_k: StrictInt = Field(3, ge=1, description="How many contributing features to return with explain=true.")


class FeatureContribution(BaseModel):
    feature: str
    contribution: float = Field(description="Share of the sample's misfit (shares of all features sum to 1).")


class ScoredSample(BaseModel):
    id: Optional[RowId] = Field(None, description="The caller's id, when ids were sent.")
    score: float = Field(description="Anomaly score: higher is more anomalous.")
    p_value: float = Field(description="Conformal p-value: share of held-out normal samples scoring at least as "
                                       "high.")
    is_anomaly: bool = Field(description="score > the model's threshold.")
    severity: Literal["normal", "low", "medium", "high", "critical"]
    top_features: Optional[list[FeatureContribution]] = Field(None, description="With explain=true.")
    notes: list[str] = Field(description="Remarks that are not errors: unseen categories, imputed values.")


class ModelRefOut(BaseModel):
    name: str
    version: str
    alias: Optional[str]


class ScoreResponse(BaseModel):
    model: ModelRefOut
    threshold: float
    n_rows: int
    n_anomalies: int
    results: list[ScoredSample]


class ModelInfo(BaseModel):
    name: str
    version: str
    alias: Optional[str]
    uri: str
    model_type: str
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


# ---------------------------------------------------------------------------- the fast parser
_FIELDS = frozenset(ScoreRequest.model_fields)
_ABSENT = object()


@dataclass
class ParsedScoreRequest:
    columns: dict[str, Any]
    n_rows: int
    ids: list[Any] | None
    top_k: int  # 0 = no explanation


def parse_score_request(body: bytes, max_rows: int, max_top_k: int, max_id_length: int) -> ParsedScoreRequest:
    if not body:
        raise ApiError(400, "invalid_json", "the request body is empty; send a JSON object")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON ({exc}); note that NaN and Infinity are not "
                                            "JSON: send null for a missing value") from None
    if not isinstance(payload, dict):
        raise ApiError(422, "invalid_body", "the body must be a JSON object with 'records' or 'columns' and 'data'")
    unknown = [k for k in payload if k not in _FIELDS]
    if unknown:
        raise ApiError(422, "unknown_field", f"unknown field(s): {', '.join(sorted(map(str, unknown)))[:200]}; "
                                             f"allowed: {', '.join(sorted(_FIELDS))}", field=str(unknown[0])[:100])
    explain = payload.get("explain", False)
    if type(explain) is not bool:
        raise ApiError(422, "invalid_field", "'explain' must be true or false", field="explain")
    top_k = payload.get("top_k", 3)
    if type(top_k) is not int or not 1 <= top_k <= max_top_k:
        raise ApiError(422, "invalid_field", f"'top_k' must be an integer from 1 to {max_top_k}", field="top_k")
    records, names, data = payload.get("records"), payload.get("columns"), payload.get("data")
    if records is not None:
        if names is not None or data is not None:
            raise ApiError(422, "invalid_body", "send either 'records' or 'columns' + 'data', not both")
        columns, n = _from_records(records, max_rows)
    elif names is not None or data is not None:
        columns, n = _from_columns(names, data, max_rows)
    else:
        raise ApiError(422, "invalid_body", "the body needs 'records' (a list of objects) or 'columns' and 'data'")
    ids = payload.get("ids")
    if ids is not None:
        _check_ids(ids, n, max_id_length)
    return ParsedScoreRequest(columns=columns, n_rows=n, ids=ids, top_k=top_k if explain else 0)


def _check_batch(rows: Any, field: str, max_rows: int) -> None:
    if not isinstance(rows, list):
        raise ApiError(422, "invalid_field", f"'{field}' must be a list", field=field)
    if not rows:
        raise ApiError(422, "empty_batch", f"'{field}' is empty; send at least one sample", field=field)
    if len(rows) > max_rows:
        raise ApiError(413, "too_many_rows", f"{len(rows)} rows is more than this service accepts in one request "
                                             f"({max_rows}); split the batch", field=field)


def _bad_rows(flags: list[bool]) -> list[int]:
    return [i for i, bad in enumerate(flags) if bad][:5]


def _from_records(records: Any, max_rows: int) -> tuple[dict[str, Any], int]:
    _check_batch(records, "records", max_rows)
    if set(map(type, records)) != {dict}:
        rows = _bad_rows([type(r) is not dict for r in records])
        raise ApiError(422, "invalid_record", f"every record must be a JSON object; rows {rows} are not",
                       field="records", rows=rows)
    first = records[0]
    if len(records) == 1:
        return {name: [value] for name, value in first.items()}, 1
    keys = set(first).union(*records[1:])
    columns = {}
    for name in keys:
        values = [r.get(name, _ABSENT) for r in records]
        if _ABSENT in values:
            rows = _bad_rows([v is _ABSENT for v in values])
            raise SchemaError(f"records in rows {rows} lack the field '{name}' that other records have; "
                              "every record needs every column", column=name, rows=rows, reason="missing_column")
        columns[name] = values
    return columns, len(records)


def _from_columns(names: Any, data: Any, max_rows: int) -> tuple[dict[str, Any], int]:
    if names is None or data is None:
        raise ApiError(422, "invalid_body", "the columnar form needs both 'columns' and 'data'",
                       field="columns" if names is None else "data")
    if not isinstance(names, list) or not names or set(map(type, names)) != {str}:
        raise ApiError(422, "invalid_field", "'columns' must be a non-empty list of column names", field="columns")
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ApiError(422, "duplicate_column", f"duplicate column name(s): {', '.join(dupes)[:200]}", field="columns")
    _check_batch(data, "data", max_rows)
    width = len(names)
    if set(map(type, data)) != {list} or set(map(len, data)) != {width}:
        rows = _bad_rows([type(r) is not list or len(r) != width for r in data])
        raise ApiError(422, "invalid_row", f"every row of 'data' must be an array of {width} values, one per column; "
                                           f"rows {rows} are not", field="data", rows=rows)
    return dict(zip(names, zip(*data))), len(data)


def _check_ids(ids: Any, n: int, max_length: int) -> None:
    if not isinstance(ids, list) or len(ids) != n:
        raise ApiError(422, "invalid_ids", f"'ids' must be a list with one id per sample ({n})", field="ids")
    if not set(map(type, ids)) <= {str, int}:
        raise ApiError(422, "invalid_ids", "each id must be a string or an integer", field="ids")
    if any(len(i) > max_length for i in ids if type(i) is str):
        raise ApiError(422, "invalid_ids", f"ids may be at most {max_length} characters", field="ids")
