"""The one pure-ASGI middleware: request metrics and the last-resort 500.

Pure ASGI (not BaseHTTPMiddleware) because it runs on every request and must add microseconds, not
a task per request. (The scoring concurrency bound is limits.py's: it must apply after the body is
read, which only the route knows.) An exception nothing else handled (a bug) is logged by type and
location only, never with its message or the payload, and answered with the JSON error shape.
"""

from __future__ import annotations

import logging
import time
import traceback
from typing import Any

from starlette.requests import ClientDisconnect

from anomaly_ae.service import metrics
from anomaly_ae.service.errors import error_body

log = logging.getLogger("anomaly_ae.service")

METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"})
_INTERNAL = error_body(500, "internal_error", "internal error; the request was not scored")


async def _send_json(send: Any, status: int, body: bytes, extra: list[tuple[bytes, bytes]] = ()) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *extra]})
    await send({"type": "http.response.body", "body": body})


# the documentation FastAPI serves (its default URLs, as the app keeps them): labelled by path, not "unmatched"
DOCUMENTATION_PATHS = frozenset({"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})


class ObservabilityMiddleware:
    def __init__(self, app: Any) -> None:
        self.app = app
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        method = scope["method"] if scope["method"] in METHODS else "OTHER"
        status = 500
        response_started = False

        async def send_and_watch(message: dict) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status, response_started = message["status"], True
            await send(message)

        metrics.HTTP_IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send_and_watch)
        except ClientDisconnect:  # the client left mid-body: nobody to answer, nothing broken (logged at debug)
            log.debug("client disconnected during %s %s", method, scope["path"][:100])
            status = 499
        except Exception as exc:
            frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
            log.error("unhandled %s at %s:%s on %s %s", type(exc).__name__, frame.filename if frame else "?",
                      frame.lineno if frame else "?", method, scope["path"][:100])
            status = 500
            if not response_started:
                await _send_json(send, 500, _INTERNAL)
        finally:
            metrics.HTTP_IN_FLIGHT.dec()
            route = getattr(scope.get("route"), "path", None)  # FastAPI's documentation routes set none
            self._record(route or (scope["path"] if scope["path"] in DOCUMENTATION_PATHS else "unmatched"), method,
                         status, started)

    def _record(self, route: str, method: str, status: int, started: float) -> None:
        key = (route, method, f"{status // 100}xx")
        children = self._children.get(key)
        if children is None:
            children = (metrics.HTTP_REQUESTS.labels(*key), metrics.HTTP_DURATION.labels(route, method))
            self._children[key] = children
        children[0].inc()
        children[1].observe(time.perf_counter() - started)
