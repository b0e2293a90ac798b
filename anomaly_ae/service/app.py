"""The app factory: `create_app(settings)` wires settings, auth, the model holder, routes and metrics.

The model is loaded in the background by the lifespan, so /healthz answers at once and /readyz
turns 200 when the first version has loaded and passed its smoke test. Each worker process of
`anomaly-ae serve --workers N` builds its app with `server.worker_app`. Tests pass their own
`resolver`/`loader` to drive the holder without a registry.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import os
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI

from anomaly_ae.version import __version__
from anomaly_ae.service import metrics
from anomaly_ae.service.auth import SCHEME, SECURITY_SCHEME, KeyRing
from anomaly_ae.service.errors import install_error_handlers
from anomaly_ae.service.limits import Admission
from anomaly_ae.service.middleware import ObservabilityMiddleware
from anomaly_ae.service.model_holder import ModelHolder, load, resolve
from anomaly_ae.service.routes import METRICS_PATH, router
from anomaly_ae.service.schemas import ScoreRequestParser, model_request_schema
from anomaly_ae.service.settings import ServiceSettings

DESCRIPTION = """Scores samples with a registered anomaly_ae model.

Send `Authorization: Bearer <key>`. `GET /v1/model` returns the input schema; `POST /v1/score` takes
`{"records": [{...}]}` or `{"columns": [...], "data": [[...]]}`. Every error has the same JSON shape:
`{"error": {"status", "code", "message", "column"?, "rows"?, "field"?}}`. Once a model is loaded, this
document describes its columns in the request body.

Series models score each row by the window of steps ending at it, per series: send each series' new rows
after the `context_rows` rows before them (`GET /v1/model` → `series`) with `"score_last": N` (the number of
new rows per series); only the new rows come back, with their `alert` flags."""


def create_app(settings: ServiceSettings | None = None, *, resolver: Callable[[str], Any] = resolve,
               loader: Callable[[str], tuple[Any, Any]] = load) -> FastAPI:
    settings = settings or ServiceSettings()
    holder = ModelHolder(settings, resolver=resolver, loader=loader)
    metrics.initialise_label_sets()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The ~300,000 objects of the imports (torch, pandas, ...) never become garbage; frozen, the
        # collector stops walking them: a full collection triggered by a large batch's rows held
        # the GIL ~400 ms (measured) and the event loop with it.
        gc.collect()
        gc.freeze()
        holder.start()
        if settings.workers > 1:  # a replacement worker accepts connections only once it can score
            await holder.wait_for_model_while_others_serve()
        try:
            yield
        finally:
            await holder.stop()
            app.state.admission.close()
            metrics.mark_process_dead()

    app = FastAPI(title="anomaly-ae scoring service", version=__version__, description=DESCRIPTION,
                  lifespan=lifespan, redirect_slashes=False)  # a 307 for /v1/score/ left POST clients stranded
    app.state.settings = settings
    app.state.holder = holder
    app.state.keys = KeyRing(settings)
    app.state.parser = ScoreRequestParser(settings.max_rows, settings.max_top_k, settings.max_id_length)
    app.state.admission = Admission(settings.max_concurrency, settings.max_body_reads, settings.scoring_threads,
                                    settings.memory_release_interval_s, split=_can_split(settings),
                                    inline_max_bytes=settings.inline_max_body_bytes)
    install_error_handlers(app)
    app.include_router(router)
    app.add_middleware(ObservabilityMiddleware)
    _document(app)
    return app


def _can_split(settings: ServiceSettings) -> bool:
    """Whether a request scored alone may take a second thread: only where every worker's torch threads
    have a spare core each (`split_large_requests`)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return settings.split_large_requests and cores >= 2 * settings.workers * settings.torch_threads


def _document(app: FastAPI) -> None:
    """The OpenAPI document: the security scheme, and the request body of /v1/score from the same
    model that validates it, with the served model's columns once one is loaded (rebuilt when the
    served version changes)."""
    build = app.openapi
    parser: ScoreRequestParser = app.state.parser
    holder: ModelHolder = app.state.holder
    cache: dict[str, Any] = {}

    def openapi() -> dict:
        if "base" not in cache:
            base = build()
            base.setdefault("components", {}).setdefault("securitySchemes", {})[SCHEME] = SECURITY_SCHEME
            if app.state.settings.metrics_port is not None:  # served on a port of its own
                base["paths"].pop(METRICS_PATH, None)
            cache["base"] = base
        model = holder.current
        version = None if model is None else (model.version, id(model))
        if cache.get("version", ()) != version or "schema" not in cache:
            contract = None if model is None else model.scorer.contract
            example = None if model is None else {k: v[0] for k, v in model.scorer.smoke_batch().items()}
            request = (parser.json_schema() if model is None else
                       model_request_schema(parser, model.scorer.detector.schema_.to_dict()["columns"],
                                            None if contract is None else contract.to_dict(), example))
            schema = copy.deepcopy(cache["base"])
            schema["components"].setdefault("schemas", {}).update(request.pop("$defs"))
            schema["paths"]["/v1/score"]["post"]["requestBody"] = {
                "required": True, "content": {"application/json": {"schema": request}}}
            cache.update(version=version, schema=schema)
        return cache["schema"]

    app.openapi = openapi  # type: ignore[method-assign]

