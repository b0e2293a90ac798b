"""HTTP routes: each takes its inputs as dependencies (deps.py) and makes one call.

Every status a route can answer is declared in its OpenAPI entry, with the one error shape.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from anomaly_ae.service import metrics
from anomaly_ae.service.auth import SECURITY, require_admin, require_score
from anomaly_ae.service.deps import CurrentModel, HolderDep, ScoreCallDep, SettingsDep
from anomaly_ae.service.errors import ApiError
from anomaly_ae.service.schemas import ErrorResponse, ModelInfo, Readiness, ReloadResponse, ScoreResponse, Status
from anomaly_ae.service.score_handler import score_batch

router = APIRouter()
METRICS_PATH = "/metrics"

_WHY = {400: "Malformed JSON or headers", 401: "Missing or unknown API key", 403: "The key lacks the right",
        408: "The body did not arrive within body_timeout_s", 409: "The version was refused",
        413: "Body or batch too large", 415: "Not application/json", 422: "Invalid request",
        500: "Internal error (the request was not processed)",
        503: "No model loaded yet, overloaded, or the registry unreachable (Retry-After)"}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorResponse, "description": _WHY[status]} for status in (*statuses, 500)}


def _json(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


@router.post("/v1/score", response_model=ScoreResponse, responses=_errors(400, 401, 403, 408, 413, 415, 422, 503),
             openapi_extra=SECURITY, summary="Score a batch of samples")
async def score(call: ScoreCallDep) -> Response:
    """Score samples sent as `records` or as `columns` + `data`; optionally explain each score. A series model
    takes its time and series columns too; with `score_last: N` the last N rows of each series are new and
    only they are returned (the rows before them complete their windows), each with its `row` and `alert`."""
    scored = await call.admission.score(score_batch, call.model, call.body, call.parser, size=len(call.body))
    return Response(scored, media_type="application/json")


@router.get("/v1/model", dependencies=[Depends(require_score)], response_model=ModelInfo,
            responses=_errors(401, 403, 503), openapi_extra=SECURITY, summary="The served model and its input schema")
async def model_info(model: CurrentModel, settings: SettingsDep) -> Response:
    """Name, version, schema and threshold; for a series model (`kind` series) also `series`: the window,
    the time and series columns, the step and `context_rows`, the rows of each series to send before
    its new ones."""
    detector, contract = model.scorer.detector, model.scorer.contract
    return _json({**model.describe(), "uri": settings.model_uri, "model_type": model.model_type,
                  "kind": model.scorer.kind, "series": None if contract is None else contract.to_dict(),
                  "score_type": detector.score_name_, "threshold": model.scorer.threshold,
                  "target_fpr": float(detector.calibration_.target_fpr), "schema": detector.schema_.to_dict(),
                  "loaded_at": dt.datetime.fromtimestamp(model.loaded_at, dt.timezone.utc).isoformat(),
                  "load_seconds": round(model.load_seconds, 4)})


@router.post("/v1/admin/reload", dependencies=[Depends(require_admin)], response_model=ReloadResponse,
             responses=_errors(401, 403, 409, 422, 503), openapi_extra=SECURITY,
             summary="Re-resolve the model URI and reload now")
async def reload(holder: HolderDep, request: Request,
                 force: bool = Query(False, description="Reload even if the version is unchanged, or retry a "
                                                        "refused version.")) -> Response:
    unknown = sorted(set(request.query_params) - {"force"})
    if unknown:  # e.g. ?version=9: the reload loads what the URI names, whatever else is asked
        raise ApiError(422, "unknown_parameter", f"unknown query parameter(s) {', '.join(unknown)[:200]}; a reload "
                       "takes only force=true and loads the version the model URI names (move the alias to "
                       "choose another)")
    if len(request.query_params.getlist("force")) > 1:  # one of them would win, silently
        raise ApiError(422, "invalid_parameter", "force is given more than once; give it once (force=true)")
    outcome = await holder.refresh("admin", force=force)
    holder.broadcast_reload(force)  # with several workers, the others reload too
    if outcome.status in ("loaded", "unchanged") and holder.current is not None:
        return _json({"status": outcome.status, "model": holder.current.describe()})
    if outcome.status == "refused":
        raise ApiError(409, outcome.reason or "refused", outcome.message or "the version was refused")
    raise ApiError(503, outcome.reason or "reload_failed", outcome.message or "reload failed",
                   headers={"Retry-After": "5"})


@router.get("/healthz", response_model=Status, responses=_errors(), summary="The process is alive")
async def healthz() -> Response:
    return _json({"status": "ok"})


@router.get("/readyz", response_model=Readiness, responses=_errors(503), summary="A model is loaded and serving")
async def readyz(holder: HolderDep) -> Response:
    model = holder.current
    if model is None:
        # the reason code only: the message may name hosts, and /readyz needs no key (the log has it all)
        why = f" (the last attempt failed: {holder.last_reason}; the service log says why)" if holder.last_reason \
            else ""
        raise ApiError(503, "not_ready", f"no model loaded yet{why}", headers={"Retry-After": "5"})
    return _json({"status": "ready", "model": model.describe()})


async def metrics_on_this_listener(settings: SettingsDep) -> None:
    """With settings.metrics_port, /metrics is served there (server.py) and is not found here (nor in
    the OpenAPI document: app.py)."""
    if settings.metrics_port is not None:
        raise ApiError(404, "not_found", "Not Found")


@router.get(METRICS_PATH, summary="Prometheus metrics", response_class=Response,
            dependencies=[Depends(metrics_on_this_listener)],
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                             "description": "Prometheus text exposition format"}, **_errors()})
async def prometheus_metrics() -> Response:
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)
