"""The app factory: `create_app(settings)` wires settings, auth, the model holder, routes and metrics.

The model is loaded in the background by the lifespan, so /healthz answers at once and /readyz
turns 200 when the first version has loaded and passed its smoke test. `app_from_env` is the
zero-argument factory that each worker process of `anomaly-ae serve --workers N` calls.
"""

from __future__ import annotations

import contextlib
from typing import AsyncIterator

from fastapi import FastAPI

from anomaly_ae.version import __version__
from anomaly_ae.service import metrics
from anomaly_ae.service.auth import SCHEME, SECURITY_SCHEME, KeyRing
from anomaly_ae.service.errors import install_error_handlers
from anomaly_ae.service.middleware import ObservabilityMiddleware
from anomaly_ae.service.model_holder import ModelHolder
from anomaly_ae.service.routes import router
from anomaly_ae.service.settings import ServiceSettings

DESCRIPTION = """Scores samples with a registered anomaly_ae model.

Send `Authorization: Bearer <key>`. `GET /v1/model` returns the input schema; `POST /v1/score` takes
`{"records": [{...}]}` or `{"columns": [...], "data": [[...]]}`. Every error has the same JSON shape:
`{"error": {"status", "code", "message", "column"?, "rows"?, "field"?}}`."""


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    settings = settings or ServiceSettings()
    holder = ModelHolder(settings)
    metrics.initialise_label_sets()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        holder.start()
        try:
            yield
        finally:
            await holder.stop()
            metrics.mark_process_dead()

    app = FastAPI(title="anomaly-ae scoring service", version=__version__, description=DESCRIPTION,
                  lifespan=lifespan)
    app.state.settings = settings
    app.state.holder = holder
    app.state.keys = KeyRing(settings)
    install_error_handlers(app)
    app.include_router(router)
    app.add_middleware(ObservabilityMiddleware, max_concurrency=settings.max_concurrency)
    _declare_security_scheme(app)
    return app


def _declare_security_scheme(app: FastAPI) -> None:
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {}).setdefault("securitySchemes", {})[SCHEME] = SECURITY_SCHEME
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def app_from_env() -> FastAPI:
    """uvicorn factory for worker processes: settings come from ANOMALY_AE_* variables."""
    return create_app(ServiceSettings())
