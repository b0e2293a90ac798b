"""Where the tracking server is, how long we wait for it, and how its errors read to a user.

Bounded network time. MLflow's HTTP client retries each request 7 times with exponential backoff
and a 120 s timeout by default: a stopped or hung server stalls a caller for minutes. Every
MLflow call this package makes runs inside `mlflow_errors(target, ...)`, which applies the
target's `HttpBounds` for the duration of that call: by default a 5 s timeout per connect / read
and 2 retries with 0 s then 2 s between attempts, never honouring a "Retry-After: 600", so an
unreachable server fails at once (connection refused) and a hung one within about 17 s. The
service passes tighter bounds (`tracking_target(..., bounds=...)`). MLflow reads its bounds only
from `MLFLOW_HTTP_*` environment variables, on every request, and takes no per-call argument, so
the call sets them and restores them afterwards, under a lock; a variable the user exported
wins. MLflow's download progress bars and "View run at" lines are turned off the same way.

The tracking URI is the one given, else MLFLOW_TRACKING_URI, else the embedded default: a SQLite
tracking + registry database ``mlflow.db`` and an artifact folder ``mlartifacts/`` in the working
directory, created by the first run that logs to them.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import unquote, urlsplit

from anomaly_ae.exceptions import AnomalyAEError, RegistryError, RegistryUnavailableError


@dataclass(frozen=True)
class HttpBounds:
    """How long one MLflow call may wait on the tracking server."""

    timeout_s: float = 5.0  # per connect / read
    max_retries: int = 2
    backoff_factor: float = 1.0
    backoff_jitter: float = 0.2

    def environment(self) -> dict[str, str]:
        return {
            "MLFLOW_HTTP_REQUEST_TIMEOUT": f"{max(1, round(self.timeout_s))}",
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(self.max_retries),
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": f"{self.backoff_factor:g}",
            "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": f"{self.backoff_jitter:g}",
            "MLFLOW_HTTP_RESPECT_RETRY_AFTER_HEADER": "false",  # a 503 with "Retry-After: 600" must not stall us
            # display only: no download progress bars or "View run at" lines (the CLI prints its own)
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
            "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
        }


# To the LAST @ of the URL (greedy, then back to it): a password written with a raw @ or / in it
# (base64 tokens have /) still works as basic auth, or at least must not be printed in part.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/\s:@]*):[^\s'\"<>]*@")
# a user part alone may be a token (https://TOKEN@host), and a query string may carry one (?token=...)
_TOKEN_USER = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^\s'\"<>:*]+@")
_QUERY_VALUE = re.compile(r"(?P<key>[?&][^=&#\s/]*(?:token|key|pass|secret|auth|sig|cred)[^=&#\s/]*=)[^&#\s'\"`)]+",
                          re.IGNORECASE)


def redacted(text: str) -> str:
    """`text` with the secrets a URL in it may carry replaced by ***: the password of scheme://user:password@host,
    a user part alone (scheme://token@host) and query-string values named like a secret (token, key, password,
    signature...): a tracking URI may carry them, and messages and logs must not."""
    text = _USERINFO.sub(r"\g<scheme>\g<user>:***@", text)
    text = _TOKEN_USER.sub(r"\g<scheme>***@", text)
    return _QUERY_VALUE.sub(r"\g<key>***", text)


DEFAULT_BOUNDS = HttpBounds()
_USER_SET = frozenset(k for k in DEFAULT_BOUNDS.environment() if k in os.environ)  # exported by the user: theirs
_bounds_changed = threading.Condition()
# what the open blocks share, and the callers waiting their turn, first come first served
_applied: dict[str, Any] = {"bounds": None, "blocks": 0, "saved": {}, "queue": collections.deque()}
_inside = threading.local()


@contextlib.contextmanager
def bounded(bounds: HttpBounds) -> Iterator[None]:
    """Apply `bounds` to the MLflow calls made inside the block. Blocks with equal bounds run at once (a slow
    download no longer holds up a resolve in another thread); a block with other bounds waits until they end,
    and callers that wait go in the order they came (none is starved by a stream of others). A block inside
    another on the same thread runs under the outer one's bounds."""
    if getattr(_inside, "depth", 0):
        _inside.depth += 1
        try:
            yield
        finally:
            _inside.depth -= 1
        return

    def may_enter() -> bool:
        return not _applied["blocks"] or _applied["bounds"] == bounds

    entered = False
    try:
        with _bounds_changed:
            queue = _applied["queue"]
            if queue or not may_enter():
                turn = object()
                queue.append(turn)
                try:
                    while queue[0] is not turn or not may_enter():
                        _bounds_changed.wait()
                finally:
                    queue.remove(turn)
                    _bounds_changed.notify_all()  # the next in line may join these bounds too
            if not _applied["blocks"]:
                _applied["saved"] = {k: os.environ.get(k) for k in bounds.environment()}
                os.environ.update({k: v for k, v in bounds.environment().items() if k not in _USER_SET})
                _applied["bounds"] = bounds
            _applied["blocks"] += 1
            entered = True
        _inside.depth = 1
        yield
    finally:
        _inside.depth = 0
        if entered:
            with _bounds_changed:
                _applied["blocks"] -= 1
                if not _applied["blocks"]:
                    for key, value in _applied["saved"].items():
                        if value is None:
                            os.environ.pop(key, None)
                        else:
                            os.environ[key] = value
                    _applied["bounds"] = None
                    _bounds_changed.notify_all()


EMBEDDED_DB = "mlflow.db"
EMBEDDED_ARTIFACTS = "mlartifacts"


@dataclass(frozen=True)
class TrackingTarget:
    """A resolved tracking/registry location."""

    uri: str
    artifact_location: str | None = None  # for experiments this package creates (SQLite stores only)
    embedded_db: Path | None = None       # set when this is the embedded default
    bounds: HttpBounds = field(default=DEFAULT_BOUNDS, compare=False)

    @property
    def shown(self) -> str:
        """The URI as messages show it: without its secrets."""
        return _without_password(redacted(self.uri), self.uri)

    def short(self) -> str:
        return f"the embedded store {self.embedded_db}" if self.embedded_db is not None else self.shown

    def experiment_artifacts(self, experiment: str) -> str | None:
        """Artifact location for a new experiment: <mlartifacts>/<experiment name> beside a SQLite store's
        database; None (the server's own default) otherwise."""
        if self.artifact_location is None:
            return None
        return f"{self.artifact_location}/{re.sub(r'[^A-Za-z0-9._-]+', '_', experiment).strip('.') or 'experiment'}"

    def describe(self) -> str:
        if self.embedded_db is not None:
            return (f"embedded MLflow store {self.embedded_db} with artifacts in "
                    f"{self.embedded_db.parent / EMBEDDED_ARTIFACTS} (set MLFLOW_TRACKING_URI or "
                    "--tracking-uri to use a tracking server)")
        if self.artifact_location is not None:  # sqlite:///PATH given: a store, not a server
            return f"MLflow store {self.shown} with artifacts in {self.artifact_location}"
        return f"MLflow tracking server {self.shown}"


def tracking_target(tracking_uri: str | None = None, *, create: bool = False,
                    bounds: HttpBounds = DEFAULT_BOUNDS) -> TrackingTarget:
    """The explicit URI, else MLFLOW_TRACKING_URI, else the embedded SQLite store in the working directory.

    With ``create=False`` (loading models) a missing embedded database is an error instead of
    being created empty."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        database = _sqlite_file(uri)
        if not create and database is not None and not database.exists():  # MLflow would create it, empty
            raise RegistryError(f"there is no MLflow database at {database} ({redacted(uri)}): check the path; "
                                "nothing was created")
        # beside the database, as for the embedded store: MLflow's default is ./mlruns of whichever directory
        # the command runs in, so the same store's artifacts scattered over working directories
        artifacts = None if database is None else (database.resolve().parent / EMBEDDED_ARTIFACTS).as_uri()
        return TrackingTarget(uri=uri, artifact_location=artifacts, bounds=bounds)
    db = (Path.cwd() / EMBEDDED_DB).resolve()
    if not create and not db.exists():
        raise RegistryError(
            f"no MLflow tracking server is configured and there is no embedded store {db}: set "
            "MLFLOW_TRACKING_URI (e.g. http://mlflow:5000) or run from the directory that holds mlflow.db")
    return TrackingTarget(uri=f"sqlite:///{db}", artifact_location=(db.parent / EMBEDDED_ARTIFACTS).as_uri(),
                          embedded_db=db, bounds=bounds)


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a `sqlite:///PATH` tracking URI (None for other stores and in-memory ones)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path if path.startswith("/") else f"./{path}")


@functools.lru_cache(maxsize=8)
def client(uri: str):
    """One MlflowClient per tracking URI (cheap to reuse for polling; it holds no open request)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return MlflowClient(tracking_uri=uri, registry_uri=uri)
    except MlflowException as exc:  # a scheme MLflow has no store for (ftp://, a bare word, ...)
        raise RegistryError(redacted(f"cannot use {uri!r} as the MLflow tracking URI ({_first_line(str(exc))}); "
                                     "give http(s)://host:port of a tracking server, or sqlite:///path/mlflow.db"
                                     )) from None
    except ImportError as exc:  # a database store whose driver is not installed (postgresql://, mysql://)
        raise RegistryError(redacted(f"the tracking URI {uri!r} needs the Python package {exc.name or 'its driver'}, "
                                     "which is not installed: pip install it, or use another store")) from None
    except Exception as exc:  # the store's own errors (SQLAlchemy: a file that is no database, a locked one)
        raise RegistryError(redacted(f"cannot open the MLflow store at {uri!r} ({type(exc).__name__}: "
                                     f"{_first_line(str(exc))}); check that it is an MLflow database")) from None


_UNREACHABLE_HINTS = (
    ("connection refused", "connection refused"),
    ("timed out", "no answer in time"),
    ("timeout", "no answer in time"),
    ("name or service not known", "unknown host"),
    ("nodename nor servname", "unknown host"),
    ("temporary failure in name resolution", "unknown host"),
    ("max retries exceeded", "connection failed"),
    ("failed to establish a new connection", "connection failed"),
    ("remote end closed connection", "connection closed by the server"),
    ("connection reset", "connection reset"),
    ("connection aborted", "connection aborted"),
)


def _unreachable_reason(exc: BaseException) -> str | None:
    import requests

    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    transport = any(isinstance(e, (requests.ConnectionError, requests.Timeout)) for e in chain)
    text = " ".join(str(e) for e in chain).lower()
    # MLflow wraps transport failures as MlflowException("API request to URL failed with ..."), and also a
    # server's answer ("failed with error code 401 != 200"): only a 5xx or 429 after its retries is transient.
    if not transport and "api request to" not in text:
        return None
    status = _http_status(text)
    if status is not None and status < 500 and status != 429:
        return None
    for needle, reason in _UNREACHABLE_HINTS:
        if needle in text:
            return reason
    return "connection failed"


def _http_status(text: str) -> int | None:
    """The HTTP status of MLflow's "API request to URL failed with error code N != 200", if that is the error."""
    found = re.search(r"error code (\d{3}) != 200", text)
    return int(found.group(1)) if found else None


_STATUS_ADVICE = {
    401: "the server wants credentials: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or "
         "MLFLOW_TRACKING_TOKEN",
    403: "the credentials given may not do this: check MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_TOKEN and "
         "their permissions",
    404: "there is no MLflow API at this address: check the URI's host, port and path prefix",
}


def _first_line(text: str, limit: int = 300) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    line = lines[0] if lines else ""
    if line.endswith(":") and len(lines) > 1:  # "... failures occurred while downloading ...:" names it below
        line = f"{line} {lines[1]}"
    line = re.sub(r"^(INVALID_PARAMETER_VALUE|RESOURCE_DOES_NOT_EXIST|RESOURCE_ALREADY_EXISTS|"
                  r"BAD_REQUEST|INTERNAL_ERROR):\s*", "", line)
    return line if len(line) <= limit else line[:limit] + "..."


def translate(exc: BaseException, uri: str, action: str, *, error: type[AnomalyAEError] = RegistryError,
              bounds: HttpBounds = DEFAULT_BOUNDS) -> AnomalyAEError:
    """An MLflow / requests / OS error as one of this package's errors, with what to do about it.

    A server that cannot be reached is always RegistryUnavailableError (transient); anything else
    becomes ``error``: RegistryError for registry operations, ModelLoadError when loading a model
    (so a caller that loads by URI sees only ModelLoadError and its transient subclass)."""
    if isinstance(exc, AnomalyAEError):
        return exc

    def clean(text: str) -> str:
        return _without_password(redacted(text), uri)

    reason = _unreachable_reason(exc)
    shown = clean(uri)
    if reason is not None:
        return RegistryUnavailableError(clean(
            f"cannot reach the MLflow tracking server at {shown} while {action} ({reason}; "
            f"{bounds.timeout_s:g} s timeout, {bounds.max_retries} retries): check that the "
            "server is running and that MLFLOW_TRACKING_URI / --tracking-uri points at it, then retry"))
    advice = _STATUS_ADVICE.get(_http_status(str(exc).lower()) or 0)
    if advice is not None:
        return error(clean(f"MLflow at {shown} refused {action}: {_first_line(str(exc), limit=160)}; {advice}"))
    if getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST" or isinstance(exc, OSError):
        return error(clean(f"{action} failed: {_first_line(str(exc))}"))
    return error(clean(f"MLflow at {shown} refused {action}: {_first_line(str(exc))}"))


def _without_password(text: str, uri: str) -> str:
    """`text` without the URI's password however it is spelled (quotes and other characters end the
    pattern `redacted` uses), as written and percent-decoded."""
    try:
        password = urlsplit(uri).password
    except ValueError:
        return text
    for spelling in {password, unquote(password)} if password else ():
        if len(spelling) >= 3:  # a one- or two-character password would blank unrelated text
            text = text.replace(spelling, "***")
    return text


@contextlib.contextmanager
def mlflow_errors(target: TrackingTarget, action: str, *, error: type[AnomalyAEError] = RegistryError
                  ) -> Iterator[None]:
    """Run the MLflow calls inside the block within the target's bounds, and turn whatever MLflow
    raises into one clear package error (no traceback in the CLI)."""
    from mlflow.exceptions import MlflowException
    from requests import RequestException

    try:
        with bounded(target.bounds):
            yield
    except (MlflowException, RequestException, OSError) as exc:
        # from None: MLflow's own error, shown by any printed traceback, holds the URI with its password
        raise translate(exc, target.uri, action, error=error, bounds=target.bounds) from None


def quiet_mlflow_logs() -> None:
    """Keep a command line to its own lines: MLflow logs progress at INFO (table creation, input-example
    validation, waiting for a registration). MLflow sets its logger's level on import, so import first."""
    import logging

    import mlflow  # noqa: F401

    logging.getLogger("mlflow").setLevel(logging.WARNING)


def check_connection(tracking_uri: str | None = None) -> TrackingTarget:
    """Fail fast (before a long training) if the tracking server cannot be reached: one bounded request."""
    target = tracking_target(tracking_uri, create=True)
    database = _sqlite_file(target.uri)
    if database is not None and database.exists():
        _check_writable_sqlite(database, target.uri)  # a run would be logged after the training, and fail
    if target.embedded_db is None:
        with mlflow_errors(target, "checking the connection"):
            client(target.uri).search_experiments(max_results=1)
    return target


def _check_writable_sqlite(database: Path, uri: str) -> None:
    """Refuse a SQLite file that is no database, or that this process cannot write (read-only file or folder)."""
    import sqlite3

    try:
        connection = sqlite3.connect(f"file:{database}?mode=rw", uri=True, timeout=5)
    except sqlite3.Error as exc:
        raise RegistryError(redacted(f"cannot open the MLflow database {database} ({exc}); check the path and its "
                                     f"permissions ({uri})")) from None
    try:
        try:
            connection.execute("PRAGMA schema_version")
        except sqlite3.DatabaseError as exc:
            if "locked" in str(exc):
                return
            raise RegistryError(redacted(f"{database} is not an SQLite database ({exc}): check the tracking URI "
                                         f"{uri}")) from None
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        # a change, rolled back: it opens the rollback journal, which fails on a read-only file or folder
        connection.execute("BEGIN IMMEDIATE")
        connection.execute(f"PRAGMA user_version = {int(version)}")
        connection.execute("ROLLBACK")
    except sqlite3.Error as exc:
        if "locked" in str(exc):  # another process writes to it right now: writable, only busy
            return
        raise RegistryError(redacted(f"the MLflow database {database} cannot be used for writing ({exc}); nothing "
                                     "was trained: make it (and its folder) writable, or give another tracking "
                                     "URI")) from None
    finally:
        connection.close()
