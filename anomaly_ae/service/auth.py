"""API-key authentication as FastAPI dependencies.

`Authorization: Bearer <key>`. Scoring keys (ANOMALY_AE_API_KEYS) may score and read the model;
admin keys (ANOMALY_AE_ADMIN_KEYS) may do that and reload. A presented key is hashed and compared
with every configured key's hash in constant time (hmac.compare_digest, no early exit), so the
response time says nothing about how much of a key was right. Missing or unknown key: 401; a
valid key without the right: 403. With no keys configured, auth is off (and `serve` warns).
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Request

from anomaly_ae.service import metrics
from anomaly_ae.service.errors import ApiError
from anomaly_ae.service.settings import ServiceSettings

SCORE, ADMIN = "score", "admin"
SCHEME = "apiKey"
# OpenAPI: the security scheme (added to components by app.py) and the per-route requirement.
SECURITY_SCHEME = {"type": "http", "scheme": "bearer",
                   "description": "An API key: scoring keys (ANOMALY_AE_API_KEYS) score and read the model; "
                                  "admin keys (ANOMALY_AE_ADMIN_KEYS) also reload."}
SECURITY = {"security": [{SCHEME: []}]}


class KeyRing:
    def __init__(self, settings: ServiceSettings) -> None:
        self.enabled = settings.auth_enabled
        self._score = [self._digest(k.get_secret_value()) for k in settings.api_keys]
        self._admin = [self._digest(k.get_secret_value()) for k in settings.admin_keys]

    @staticmethod
    def _digest(key: str) -> bytes:
        return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()

    def rights(self, key: str) -> set[str]:
        digest = self._digest(key)
        admin = score = False
        for known in self._admin:
            admin |= hmac.compare_digest(known, digest)
        for known in self._score:
            score |= hmac.compare_digest(known, digest)
        return {SCORE, ADMIN} if admin else ({SCORE} if score else set())


def _unauthorized(message: str) -> ApiError:
    metrics.AUTH_FAILURES.labels("401").inc()
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


def bearer_key(request: Request) -> str | None:
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    key = key.strip()
    return key if scheme.lower() == "bearer" and key else None


def require(right: str):
    """A dependency that admits keys with `right`. It reads the header itself (a nested HTTPBearer
    dependency costs a sizeable share of a 1-row request); /docs learns of the scheme from
    `SECURITY` in each protected route's OpenAPI entry."""

    async def dependency(request: Request) -> None:
        keys: KeyRing = request.app.state.keys
        if not keys.enabled:
            return
        key = bearer_key(request)
        if key is None:
            sent = "authorization" in request.headers  # a header in another form (Basic, a tab): not "missing"
            raise _unauthorized("malformed Authorization header: send 'Authorization: Bearer <key>', with one space"
                                if sent else "missing API key: send 'Authorization: Bearer <key>'")
        rights = keys.rights(key)
        if not rights:
            raise _unauthorized("invalid API key")
        if right not in rights:
            metrics.AUTH_FAILURES.labels("403").inc()
            raise ApiError(403, "forbidden", f"this API key lacks the '{right}' right")

    dependency.__name__ = f"require_{right}"
    return dependency


require_score = require(SCORE)
require_admin = require(ADMIN)
