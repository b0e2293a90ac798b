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

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from anomaly_ae.service import metrics
from anomaly_ae.service.errors import ApiError
from anomaly_ae.service.settings import ServiceSettings

SCORE, ADMIN = "score", "admin"
_bearer = HTTPBearer(auto_error=False, description="An API key: scoring keys score, admin keys also reload.")


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


def require(right: str):
    async def dependency(request: Request,
                         credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
        keys: KeyRing = request.app.state.keys
        if not keys.enabled:
            return
        if credentials is None:
            raise _unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        rights = keys.rights(credentials.credentials)
        if not rights:
            raise _unauthorized("invalid API key")
        if right not in rights:
            metrics.AUTH_FAILURES.labels("403").inc()
            raise ApiError(403, "forbidden", f"this API key lacks the '{right}' right")

    dependency.__name__ = f"require_{right}"
    return dependency


require_score = require(SCORE)
require_admin = require(ADMIN)
