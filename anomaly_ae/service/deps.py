"""FastAPI dependencies: the settings, the model holder, the current model and a scoring call.

Each is `async def`: FastAPI runs plain `def` dependencies in its thread pool, which would cost a
thread hop on every request. The scoring route's dependencies read `app.state` themselves rather
than through nested dependencies, and POST /v1/score takes everything in one (`ScoreCall`): each
dependency FastAPI resolves costs tens of microseconds on every request (five of them were a tenth
of a 1-row request in process).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from anomaly_ae.service import metrics
from anomaly_ae.service.auth import require_score
from anomaly_ae.service.errors import ApiError
from anomaly_ae.service.limits import Admission
from anomaly_ae.service.model_holder import LoadedModel, ModelHolder
from anomaly_ae.service.schemas import ScoreRequestParser
from anomaly_ae.service.settings import ServiceSettings


async def get_settings(request: Request) -> ServiceSettings:
    return request.app.state.settings


async def get_holder(request: Request) -> ModelHolder:
    return request.app.state.holder


async def get_current_model(request: Request) -> LoadedModel:
    """The model this request uses to the end (a reload swaps `holder.current`, never this object)."""
    model = request.app.state.holder.current
    if model is None:
        metrics.REQUESTS_REJECTED.labels("not_ready").inc()
        raise ApiError(503, "model_not_loaded", "no model is loaded yet; retry shortly", headers={"Retry-After": "5"})
    return model


SettingsDep = Annotated[ServiceSettings, Depends(get_settings)]
HolderDep = Annotated[ModelHolder, Depends(get_holder)]
CurrentModel = Annotated[LoadedModel, Depends(get_current_model)]


async def read_score_body(request: Request) -> bytes:
    """A JSON body, read under the body-read bound (size, time and concurrent reads)."""
    content_type = request.headers.get("content-type", "")
    media_type, _, parameters = content_type.partition(";")
    if media_type.strip().lower() != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the body as JSON with 'Content-Type: application/json'")
    charset = next((v.strip().strip('"').lower() for k, _, v in (p.partition("=") for p in parameters.split(";"))
                    if k.strip().lower() == "charset"), "utf-8")
    if charset not in ("utf-8", "utf8"):  # read as UTF-8 all the same, a body in it would fail as unreadable
        raise ApiError(415, "unsupported_media_type", f"the body is declared {charset[:40]!r}; send it as UTF-8 "
                                                      "(charset=utf-8, or no charset)")
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):  # would be read as the JSON itself
        raise ApiError(415, "unsupported_media_type", f"compressed bodies (Content-Encoding: {encoding[:40]}) are "
                                                      "not accepted; send the JSON uncompressed")
    state = request.app.state
    settings: ServiceSettings = state.settings
    return await state.admission.read_body(request, settings.max_body_bytes, settings.body_timeout_s)


@dataclass(frozen=True)
class ScoreCall:
    """What POST /v1/score needs: the model it uses to the end, the body, and where to score it."""

    model: LoadedModel
    body: bytes
    admission: Admission
    parser: ScoreRequestParser


async def score_call(request: Request) -> ScoreCall:
    """The key (401/403 before anything else is read), the current model (503 without one), then the body:
    the checks the separate dependencies made, in their order, as one."""
    await require_score(request)
    if request.query_params:  # e.g. ?explain=true: options go in the body, and would be silently ignored here
        names = ", ".join(sorted(set(request.query_params)))[:200]
        raise ApiError(422, "unknown_parameter", f"unknown query parameter(s) {names}; /v1/score takes none: put "
                                                 "explain, top_k, ids and score_last in the JSON body")
    model = await get_current_model(request)
    body = await read_score_body(request)
    state = request.app.state
    return ScoreCall(model, body, state.admission, state.parser)


ScoreCallDep = Annotated[ScoreCall, Depends(score_call)]
