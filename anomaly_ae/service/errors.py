"""One JSON error shape for every failed request, and the one place that maps errors to statuses.

    {"error": {"status": 422, "code": "missing_value", "message": "...", "column": "cpu", "rows": [3]}}

`code` is a short, stable machine-readable reason (also the `reason` label of the validation-error
metric); `message` says what is wrong and what to do. `column`/`rows` appear when known. A message
may quote the caller's own values back to them; logs never do (they record only the code).
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from anomaly_ae.data.schema import short_repr
from anomaly_ae.exceptions import AnomalyAEError, DataError, ModelLoadError, ScoringError
from anomaly_ae.service import metrics

# Codes that count as input validation errors (the validation-error metric's reasons).
VALIDATION_STATUSES = {400, 408, 413, 415, 422}


class ApiError(Exception):
    """An error the service answers with on purpose."""

    def __init__(self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None,
                 **fields: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}
        self.fields = {k: v for k, v in fields.items() if v is not None}


def error_body(status: int, code: str, message: str, **fields: Any) -> bytes:
    return orjson.dumps({"error": {"status": status, "code": code, "message": message, **fields}})


def error_response(error: ApiError) -> Response:
    if error.status in VALIDATION_STATUSES:
        metrics.VALIDATION_ERRORS.labels(error.code).inc()
    return Response(error_body(error.status, error.code, error.message, **error.fields), status_code=error.status,
                    media_type="application/json", headers=error.headers)


def from_package_error(exc: AnomalyAEError) -> ApiError:
    """The package's own exceptions: bad input is the caller's to fix (4xx)."""
    if isinstance(exc, DataError):
        return ApiError(422, exc.reason, str(exc), column=exc.column, rows=exc.rows or None)
    if isinstance(exc, ScoringError):
        return ApiError(422, "score_overflow", str(exc))
    if isinstance(exc, ModelLoadError):
        return ApiError(503, "model_unavailable", str(exc), headers={"Retry-After": "5"})
    return ApiError(422, "invalid_request", str(exc))


_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 408: "body_timeout",
               405: "method_not_allowed", 406: "not_acceptable", 413: "body_too_large",
               415: "unsupported_media_type", 429: "too_many_requests", 503: "unavailable"}


def _no_route(request: Request) -> str:
    paths = sorted(request.app.openapi()["paths"])  # the documented ones (built once, then cached)
    path = request.url.path
    hint = f" (did you mean {path.rstrip('/')}?)" if path.endswith("/") and path.rstrip("/") in paths else ""
    return f"no route {short_repr(path)}{hint}; the service's paths are {', '.join(paths)}"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return error_response(exc)

    @app.exception_handler(AnomalyAEError)
    async def _package_error(request: Request, exc: AnomalyAEError) -> Response:
        return error_response(from_package_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        if exc.status_code == 404 and message == "Not Found":  # no route: say which paths there are
            message = _no_route(request)
        return error_response(ApiError(exc.status_code, code, message, headers=dict(exc.headers or {})))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        message = f"{where}: {first.get('msg', 'invalid value')}" if where else str(first.get("msg", "invalid request"))
        if first.get("type") == "bool_parsing":  # pydantic's text does not say which words it takes
            message += "; use true or false"
        return error_response(ApiError(422, "invalid_parameter", message, field=where or None))
