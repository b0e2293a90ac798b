"""HTTP routes: translate a request into one library call and its result into JSON."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from anomaly_ae.service import metrics
from anomaly_ae.service.auth import SECURITY, require_admin, require_score
from anomaly_ae.service.errors import ApiError
from anomaly_ae.service.model_holder import LoadedModel, ModelHolder
from anomaly_ae.service.schemas import (ErrorResponse, ModelInfo, ReloadResponse, ScoreRequest, ScoreResponse,
                                        parse_score_request)
from anomaly_ae.service.settings import ServiceSettings

router = APIRouter()
_timeout = getattr(asyncio, "timeout", None)

_ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 403, 408, 413, 415, 422, 503)}
_SCORE_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": ScoreRequest.model_json_schema()}}}, **SECURITY}


def _json(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


def _serving(request: Request) -> LoadedModel:
    model = request.app.state.holder.current
    if model is None:
        metrics.REQUESTS_REJECTED.labels("not_ready").inc()
        raise ApiError(503, "model_not_loaded", "no model is loaded yet; retry shortly", headers={"Retry-After": "5"})
    return model


async def _read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The body, refusing with 413 as soon as it is known to exceed `limit` (before reading it all),
    and with 408 if it takes longer than `timeout` (a slow client must not hold a scoring slot)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "invalid_header", "Content-Length must be a non-negative integer")
        if int(declared) > limit:
            raise ApiError(413, "body_too_large", f"the body is {declared} bytes; the limit is {limit}")
    try:
        if _timeout is not None:  # Python 3.11+: a deadline on this task, cheaper than wait_for's extra task
            async with _timeout(timeout):
                return await _receive(request, limit, declared is not None)
        return await asyncio.wait_for(_receive(request, limit, declared is not None), timeout)
    except asyncio.TimeoutError:
        raise ApiError(408, "body_timeout", f"the request body did not arrive within {timeout:g}s",
                       headers={"Connection": "close"}) from None


async def _receive(request: Request, limit: int, declared: bool) -> bytes:
    if declared:
        return await request.body()
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "body_too_large", f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@router.post("/v1/score", dependencies=[Depends(require_score)], response_model=ScoreResponse,
             responses=_ERRORS, openapi_extra=_SCORE_BODY, summary="Score a batch of samples")
async def score(request: Request) -> Response:
    """Score samples sent as `records` or as `columns` + `data`; optionally explain each score."""
    model = _serving(request)
    settings: ServiceSettings = request.app.state.settings
    content_type = request.headers.get("content-type", "")
    if content_type.split(";", 1)[0].strip().lower() != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the body as JSON with 'Content-Type: application/json'")
    body = await _read_body(request, settings.max_body_bytes, settings.body_timeout_s)
    parsed = parse_score_request(body, settings.max_rows, settings.max_top_k, settings.max_id_length)
    result = model.scorer.score(parsed.columns, parsed.top_k)
    metrics.record_scores(result.scores, result.p_values, result.severity)
    model.drift.update(result.checked, result.missing, result.unseen, result.model_input)

    scores, p_values = result.scores.tolist(), result.p_values.tolist()
    flags, severity = result.is_anomaly.tolist(), result.severity.tolist()
    notes = result.notes or [[]] * len(scores)
    rows = [{"score": s, "p_value": p, "is_anomaly": a, "severity": v, "notes": n}
            for s, p, a, v, n in zip(scores, p_values, flags, severity, notes)]
    if result.top_features is not None:
        for row, names, shares in zip(rows, result.top_features, result.top_contributions):
            row["top_features"] = [{"feature": f, "contribution": c} for f, c in zip(names, shares)]
    if parsed.ids is not None:
        rows = [{"id": i, **row} for i, row in zip(parsed.ids, rows)]
    return _json({"model": model.describe(), "threshold": model.scorer.threshold, "n_rows": len(rows),
                  "n_anomalies": int(result.is_anomaly.sum()), "results": rows})


@router.get("/v1/model", dependencies=[Depends(require_score)], response_model=ModelInfo, responses=_ERRORS,
            openapi_extra=SECURITY, summary="The served model and its input schema")
async def model_info(request: Request) -> Response:
    model = _serving(request)
    detector = model.scorer.detector
    return _json({**model.describe(), "uri": request.app.state.settings.model_uri, "model_type": model.model_type,
                  "score_type": detector.score_type_, "threshold": model.scorer.threshold,
                  "target_fpr": float(detector.calibration_.target_fpr), "schema": detector.schema_.to_dict(),
                  "loaded_at": dt.datetime.fromtimestamp(model.loaded_at, dt.timezone.utc).isoformat(),
                  "load_seconds": round(model.load_seconds, 4)})


@router.post("/v1/admin/reload", dependencies=[Depends(require_admin)], response_model=ReloadResponse,
             responses={**_ERRORS, 409: {"model": ErrorResponse}}, openapi_extra=SECURITY,
             summary="Re-resolve the model URI and reload now")
async def reload(request: Request, force: bool = Query(False, description="Reload even if the version is unchanged, "
                                                                          "or retry a refused version.")) -> Response:
    holder: ModelHolder = request.app.state.holder
    outcome = await holder.refresh("admin", force=force)
    holder.broadcast_reload(force)  # with several workers, the others reload too
    if outcome.status in ("loaded", "unchanged") and holder.current is not None:
        return _json({"status": outcome.status, "model": holder.current.describe()})
    if outcome.status == "refused":
        raise ApiError(409, outcome.reason or "refused", outcome.message or "the version was refused")
    raise ApiError(503, outcome.reason or "reload_failed", outcome.message or "reload failed",
                   headers={"Retry-After": "5"})


@router.get("/healthz", summary="The process is alive")
async def healthz() -> Response:
    return _json({"status": "ok"})


@router.get("/readyz", responses={503: {"model": ErrorResponse}}, summary="A model is loaded and serving")
async def readyz(request: Request) -> Response:
    model = request.app.state.holder.current
    if model is None:
        raise ApiError(503, "not_ready", "no model loaded yet", headers={"Retry-After": "5"})
    return _json({"status": "ready", "model": model.describe()})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def prometheus_metrics() -> Response:
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)
