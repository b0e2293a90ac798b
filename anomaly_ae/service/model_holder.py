"""The served model: loaded only through `Detector.load`, swapped atomically, reloaded in the background.

Requests read `holder.current` once and use that `LoadedModel` to the end, so a swap never mixes two
versions in one response. Every registry call and every load runs in a daemon thread under a time
limit, so a slow or dead registry can delay only the next reload, never a scoring request, and the
service stays ready once a model is loaded. A version that fails to load or to score its smoke batch
is refused (remembered, so polls do not retry it) and the last good model keeps serving; transient
registry failures are retried at the next poll.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import gc
import hashlib
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from anomaly_ae import exceptions
from anomaly_ae.data.windows import MAX_KNOWN_SERIES
from anomaly_ae.exceptions import ModelLoadError
from anomaly_ae.persistence import REMOTE_SCHEMES
from anomaly_ae.registry.connection import DEFAULT_BOUNDS, HttpBounds, redacted
from anomaly_ae.service import metrics
from anomaly_ae.service.multiproc import process_alive
from anomaly_ae.service.scorer import Scorer, SmokeTestError
from anomaly_ae.service.settings import ServiceSettings

log = logging.getLogger("anomaly_ae.service")

# Failures that say nothing about the version itself: retried at the next poll, never refused.
TRANSIENT_ERRORS = tuple(t for t in (getattr(exceptions, "RegistryUnavailableError", None), ConnectionError,
                                     TimeoutError, OSError) if t is not None)
MAX_STUCK_THREADS = 3  # registry calls still running after their timeout; beyond this, skip polls
# An admin reload that finds another refresh running (a poll, or with several workers the reload
# another worker's admin call passed on) waits this long for it rather than answering 503 at once.
STOP_WAIT_S = 5.0  # how long shutdown waits for the reload loops (a load in a thread runs to its end)
ADMIN_WAIT_S = 5.0
REPEAT_LOG_S = 300.0  # a failure that repeats unchanged is logged again at most this often
RELOAD_REQUEST = "reload-request.json"  # in settings.control_dir: an admin reload, for every worker
SERVING_PREFIX = "serving-"  # in settings.control_dir: serving-PID, written by a worker once it has a model
# An absolute file path in an error message (the registry downloads into temporary folders): a
# caller is told the file's name, never where the server keeps it.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/(?:[^\s/'\"]+/)+([^\s/'\"]+)")
# Credentials in a URL (https://user:token@host): never logged or returned.
_URL_CREDENTIALS = re.compile(r"(\b[a-zA-Z][\w+.-]*://)[^\s'\"<>]*@")  # to the last @: a password may hold @ or /


@dataclass(frozen=True)
class LocalModelRef:
    """What `anomaly_ae.registry.resolve_model` returns, for a local model directory."""

    uri: str
    name: str
    version: str
    alias: str | None = None
    run_id: str | None = None


@dataclass(frozen=True)
class LoadedModel:
    scorer: Scorer
    ref: Any
    model_type: str
    loaded_at: float
    load_seconds: float
    drift: metrics.DriftTracker
    series_metrics: metrics.SeriesMetrics | None = None  # series models only

    @property
    def version(self) -> str:
        return version_of(self.ref)

    @property
    def labels(self) -> tuple[str, str, str, str]:
        return (str(self.ref.name or ""), self.version, str(self.ref.alias or ""), self.model_type)

    def describe(self) -> dict[str, Any]:
        return {"name": str(self.ref.name or ""), "version": self.version, "alias": self.ref.alias}


@dataclass
class RefreshOutcome:
    status: str  # loaded | unchanged | refused | failed | busy
    version: str | None = None
    reason: str | None = None
    message: str | None = None


# ---------------------------------------------------------------------------- resolving and loading
def input_of(scorer: Scorer) -> dict[str, Any]:
    """What a request to this model must hold: its kind, input columns, and a series model's time and series keys."""
    contract = scorer.contract
    return {"kind": scorer.kind, "columns": list(scorer.schema.names),
            "time_col": contract.time_col if contract is not None else None,
            "series_col": contract.series_col if contract is not None else None}


def input_change(served: Scorer, loaded: Scorer) -> str | None:
    """How the loaded model's input differs from the served one's, None when it takes the same."""
    old, new = input_of(served), input_of(loaded)
    if old == new:
        return None
    parts = []
    if old["kind"] != new["kind"]:
        parts.append(f"a {new['kind']} model where a {old['kind']} model serves")
    added = [c for c in new["columns"] if c not in old["columns"]]
    removed = [c for c in old["columns"] if c not in new["columns"]]
    if added:
        parts.append(f"new column(s) {', '.join(added[:5])}{' ...' if len(added) > 5 else ''}")
    if removed:
        parts.append(f"no more {', '.join(removed[:5])}{' ...' if len(removed) > 5 else ''}")
    for key in ("time_col", "series_col"):
        if old[key] != new[key]:
            parts.append(f"{key} {new[key]!r} instead of {old[key]!r}")
    return "; ".join(parts) or "the columns in another order"


def version_of(ref: Any) -> str:
    """A registry version, else the run id (runs:/ URIs), else the URI itself."""
    return str(ref.version or getattr(ref, "run_id", None) or ref.uri)


def is_remote(uri: str) -> bool:
    return uri.startswith(REMOTE_SCHEMES)


def resolve_local(uri: str) -> LocalModelRef:
    path = Path(uri).expanduser()
    try:
        digest = hashlib.sha256((path / "manifest.json").read_bytes()).hexdigest()
    except OSError:
        found = path.is_dir() and any((path / name).exists() for name in ("config.json", "weights.safetensors"))
        why = "its manifest.json is missing, so its files cannot be checked; save the model again" if found else \
            "expected a directory written by Detector.save"
        raise ModelLoadError(f"no saved model at {uri}: {why}") from None
    return LocalModelRef(uri=uri, name=path.resolve().name, version=digest[:12])


def registry_bounds(settings: ServiceSettings) -> HttpBounds:
    """MLflow retries a dead server for minutes by default; the service wants quick failures."""
    return HttpBounds(timeout_s=max(1.0, settings.registry_timeout_s / 2), max_retries=0, backoff_factor=1.0)


def resolve(uri: str, bounds: HttpBounds = DEFAULT_BOUNDS) -> Any:
    """Which concrete version `uri` points to now: cheap, bounded by `bounds`."""
    if not is_remote(uri):
        return resolve_local(uri)
    from anomaly_ae.registry import resolve_model

    return resolve_model(uri, bounds=bounds)


def load(uri: str, bounds: HttpBounds = DEFAULT_BOUNDS) -> tuple[Any, Any]:
    """(Detector, ref) through `Detector.load` (hash-checked, pickle-free), directly or via the registry."""
    from anomaly_ae.detector import Detector

    if not is_remote(uri):
        before = resolve_local(uri)
        detector = Detector.load(uri)
        if resolve_local(uri) != before:
            raise ConnectionError("the model directory changed while it was being loaded; retrying at the next poll")
        return detector, before
    from anomaly_ae.registry import load_model

    return load_model(uri, bounds=bounds)


def without_paths(message: str) -> str:
    """`message` with every absolute path cut to its last part (what the caller can act on)."""
    return _ABSOLUTE_PATH.sub(r"\1", _URL_CREDENTIALS.sub(r"\1***@", redacted(message)))


# ---------------------------------------------------------------------------- the holder
class ModelHolder:
    def __init__(self, settings: ServiceSettings, resolver: Callable[[str], Any] | None = None,
                 loader: Callable[[str], tuple[Any, Any]] | None = None) -> None:
        self.settings = settings
        self.uri = settings.model_uri
        self.current: LoadedModel | None = None
        self.last_reason: str | None = None  # the last failure's reason code (readiness shows it)
        self._repeated: tuple[tuple[str, str] | None, float, int] = (None, 0.0, 0)  # last failure logged, when, repeats
        bounds = registry_bounds(settings)
        self._resolver = resolver or functools.partial(resolve, bounds=bounds)
        self._loader = loader or functools.partial(load, bounds=bounds)
        # version -> (reason, message, the local directory's files when refused: None for registry URIs)
        self._refused: dict[str, tuple[str, str, Any]] = {}
        self._desired: tuple[str, str] | None = None  # (name, version) the URI resolved to last
        self._lock = asyncio.Lock()
        self._last_outcome: RefreshOutcome | None = None
        self._stuck: list[threading.Thread] = []
        self._tasks: list[asyncio.Task] = []
        self._stopping = False
        self._signal_seen = 0

    # -------------------------------------------------------------- lifecycle
    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._run(), name="anomaly-ae-model-reload")]
        if self._signal_path() is not None:
            self._signal_seen = self._signal_stamp()
            self._tasks.append(loop.create_task(self._watch_reload_requests(), name="anomaly-ae-reload-requests"))

    async def wait_for_model_while_others_serve(self) -> None:
        """With several workers: a worker started while another one serves (a replacement for one that
        died, or a rolling restart) returns only once its own model is loaded, so it accepts no
        connection before then (the others take them all); otherwise at once. Measured before: a worker
        replaced under load answered 503 model_not_loaded to the requests it accepted while loading."""
        if self._others_serving() and self.current is None:
            log.info("another worker is serving: loading the model before accepting connections")
            while self.current is None and self._others_serving():
                await asyncio.sleep(0.1)

    def _serving_marker(self, pid: int | None = None) -> Path | None:
        if not self.settings.control_dir:
            return None
        return Path(self.settings.control_dir) / f"{SERVING_PREFIX}{os.getpid() if pid is None else pid}"

    def _others_serving(self) -> bool:
        if not self.settings.control_dir:
            return False
        try:
            names = os.listdir(self.settings.control_dir)
        except OSError:
            return False
        pids = {int(n[len(SERVING_PREFIX):]) for n in names if n.startswith(SERVING_PREFIX)
                and n[len(SERVING_PREFIX):].isdigit()}
        return any(pid != os.getpid() and process_alive(pid) for pid in pids)

    async def stop(self) -> None:
        marker = self._serving_marker()
        if marker is not None:
            marker.unlink(missing_ok=True)
        # The loops also stop at their next turn: a cancellation can be lost (Python 3.11's wait_for drops
        # one that lands as the awaited lock is acquired), and awaiting such a task hung the shutdown for
        # good when the port could not be bound while the model loaded (seen: 3 starts in 7).
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=STOP_WAIT_S)
            for task in pending:
                log.warning("%s did not stop within %g s; shutting down without it", task.get_name(), STOP_WAIT_S)

    # -------------------------------------------------------------- admin reloads across workers
    def _signal_path(self) -> Path | None:
        return Path(self.settings.control_dir) / RELOAD_REQUEST if self.settings.control_dir else None

    def _signal_stamp(self) -> int:
        try:
            return self._signal_path().stat().st_mtime_ns  # type: ignore[union-attr]
        except OSError:
            return 0

    def broadcast_reload(self, force: bool) -> None:
        """Ask the service's other workers to reload too (they check about once a second)."""
        path = self._signal_path()
        if path is None:
            return
        staging = path.with_name(f".{path.name}.{os.getpid()}")
        try:
            staging.write_text(json.dumps({"force": force, "pid": os.getpid(), "time": time.time()}))
            os.replace(staging, path)
        except OSError as exc:
            log.warning("could not pass the reload request to the other workers: %s", type(exc).__name__)
        self._signal_seen = self._signal_stamp()

    async def _watch_reload_requests(self) -> None:
        path = self._signal_path()
        assert path is not None
        while not self._stopping:
            await asyncio.sleep(1.0)
            stamp = self._signal_stamp()
            if stamp == self._signal_seen:
                continue
            self._signal_seen = stamp
            try:
                request = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if request.get("pid") != os.getpid():
                await self._safe_refresh("admin", force=bool(request.get("force")))

    async def _run(self) -> None:
        interval = self.settings.poll_interval_s
        while self.current is None and not self._stopping:
            await self._safe_refresh("startup")
            if self.current is None:
                await asyncio.sleep(min(interval, 5.0) if interval > 0 else 5.0)
        if interval <= 0:
            return
        while not self._stopping:
            await asyncio.sleep(interval)
            await self._safe_refresh("poll")

    async def _safe_refresh(self, trigger: str, force: bool = False) -> None:
        try:
            await self.refresh(trigger, force=force)
        except Exception as exc:  # the reload loop must outlive any bug in one attempt
            log.error("model refresh (%s) failed unexpectedly: %s", trigger, type(exc).__name__)

    # -------------------------------------------------------------- one refresh
    async def refresh(self, trigger: str, force: bool = False) -> RefreshOutcome:
        """Resolve the URI; load, smoke-test and swap in the version it points to if it is new.

        One refresh runs at a time. A poll that finds one running skips its turn. An admin reload
        waits for it (up to ADMIN_WAIT_S) and then makes its own, unless the one it waited for has
        just failed to reach the registry: that answer is returned rather than asking again at once.
        """
        busy = RefreshOutcome("busy", reason="reload_in_progress",
                              message="a reload or registry call is still running; try again shortly")
        if self._too_many_stuck():
            return busy
        waited = self._lock.locked()
        if waited and trigger != "admin":
            return busy
        try:
            await asyncio.wait_for(self._lock.acquire(), ADMIN_WAIT_S)
        except asyncio.TimeoutError:
            return busy
        try:
            previous = self._last_outcome
            if waited and previous is not None and previous.reason in ("registry_timeout", "registry_unavailable"):
                return previous
            self._last_outcome = outcome = await self._refresh(trigger, force)
            if outcome.status in ("loaded", "unchanged"):
                self._repeated, self.last_reason = (None, 0.0, 0), None
            return outcome
        finally:
            self._lock.release()

    async def _refresh(self, trigger: str, force: bool) -> RefreshOutcome:
        """One refresh, holding the lock."""
        try:
            ref = await self._in_thread(self._resolver, self.uri, timeout=self.settings.registry_timeout_s)
        except asyncio.TimeoutError:
            return self._failed(trigger, "registry_timeout", f"the registry did not answer within "
                                f"{self.settings.registry_timeout_s:g}s; still serving the last good model")
        except TRANSIENT_ERRORS as exc:
            return self._failed(trigger, "registry_unavailable",
                                f"could not reach the registry ({type(exc).__name__}); still serving the last "
                                "good model")
        except exceptions.AnomalyAEError as exc:
            return self._failed(trigger, "model_not_found", str(exc))
        except Exception as exc:
            return self._failed(trigger, "registry_unavailable",
                                f"could not reach the registry ({type(exc).__name__}); still serving the last "
                                "good model")
        version = version_of(ref)
        current = self.current
        self._set_desired((str(ref.name or ""), version))
        if current is not None and current.version == version and not force:
            return RefreshOutcome("unchanged", version=version)
        if version in self._refused and not force and self._refused[version][2] == self._local_files():
            reason, message, _ = self._refused[version]
            return RefreshOutcome("refused", version=version, reason=reason,
                                  message=f"{message} (not retried until it changes; reload with force=true "
                                          "to retry)")
        metrics.RELOAD_ATTEMPTS.labels(trigger).inc()
        started = time.perf_counter()
        try:
            loaded = await self._in_thread(self._load_and_check, timeout=self.settings.load_timeout_s)
        except asyncio.TimeoutError:
            return self._failed(trigger, "load_timeout", f"loading version {version} took longer than "
                                f"{self.settings.load_timeout_s:g}s; still serving the last good model")
        except SmokeTestError as exc:
            return self._refuse(trigger, version, "smoke_test_failed", str(exc))
        except Exception as exc:
            # a version that cannot load is refused until it changes; anything else (the registry or the
            # network, RegistryUnavailableError included, though it is a ModelLoadError) is retried
            if isinstance(exc, ModelLoadError) and not isinstance(exc, TRANSIENT_ERRORS):
                return self._refuse(trigger, version, "load_error", str(exc))
            return self._failed(trigger, "registry_unavailable",
                                f"could not download version {version} ({type(exc).__name__}); still serving "
                                "the last good model")
        change = input_change(current.scorer, loaded.scorer) if current is not None and not force else None
        if change is not None:
            # a valid model that takes other input would fail every client's next request
            return self._refuse(trigger, version, "schema_changed",
                                f"it takes other input than the served version {current.version} ({change}), so "
                                "every request sent for that one would fail; reload with force=true to switch on "
                                "purpose")
        if self.current is None:
            # The first load imported the registry client and its dependencies (mlflow for a models:/ URI),
            # after create_app froze the imports: frozen too, so that a full collection set off by a large
            # batch does not walk them (before this, the serving benchmark's 1000-row requests at concurrency
            # 1 had a p99 near 100 ms with a models:/ URI; docs/serving.md).
            gc.collect()
            gc.freeze()
        self._swap(loaded, time.perf_counter() - started)
        if self._desired is not None:
            self._set_desired(self._desired)
        log.info("serving model %s version %s (alias %s), loaded in %.2fs", loaded.ref.name, loaded.version,
                 loaded.ref.alias, loaded.load_seconds)
        return RefreshOutcome("loaded", version=loaded.version)

    def _load_and_check(self) -> LoadedModel:
        started = time.perf_counter()
        detector, ref = self._loader(self.uri)
        scorer = Scorer(detector)
        scorer.smoke_test()
        pre = detector.preprocessor_
        drift = metrics.DriftTracker(pre.numeric, pre.categorical, detector.schema_.names,
                                     self.settings.drift_max_features, self.settings.drift_window_rows,
                                     input_columns=pre.groups)
        series_metrics = None
        if scorer.contract is not None:
            framing = detector.inference_.framing
            series_metrics = metrics.SeriesMetrics(list(framing.known_series), self.settings.metrics_series_labels,
                                                   framing.series_col is not None, MAX_KNOWN_SERIES)
        return LoadedModel(scorer=scorer, ref=ref, model_type=str(detector.model), loaded_at=time.time(),
                           load_seconds=time.perf_counter() - started, drift=drift, series_metrics=series_metrics)

    def _swap(self, loaded: LoadedModel, seconds: float) -> None:
        previous = self.current
        self.current = loaded  # one reference assignment: requests see the old or the new model, never a mix
        marker = self._serving_marker()
        if previous is None and marker is not None:
            try:
                marker.touch()
            except OSError as exc:
                log.warning("could not mark this worker as serving in the control folder: %s", type(exc).__name__)
        metrics.MODEL_LOAD_DURATION.observe(seconds)
        metrics.set_model(previous.labels if previous else None, loaded.labels, loaded.scorer.threshold,
                          loaded.loaded_at)
        loaded.drift.publish()

    def _set_desired(self, desired: tuple[str, str]) -> None:
        """Publish the version the URI names now next to the served one (model_version_mismatch)."""
        current = self.current
        metrics.set_desired(self._desired, desired, mismatch=current is None or current.version != desired[1])
        self._desired = desired

    def _failed(self, trigger: str, reason: str, message: str) -> RefreshOutcome:
        message = without_paths(message)
        metrics.RELOAD_FAILURES.labels(reason).inc()
        self.last_reason = reason
        serving = f"version {self.current.version}" if self.current is not None else "no model"
        # The same failure on every retry (a model not registered yet: every 5 s) is logged when it first
        # happens and then every REPEAT_LOG_S with a count, so the log shows other events between them;
        # an operator's reload is always answered in the log.
        now, (last, since, repeats) = time.monotonic(), self._repeated
        if trigger != "admin" and last == (reason, message) and now - since < REPEAT_LOG_S:
            self._repeated = (last, since, repeats + 1)
        else:
            again = f" again ({repeats + 1} times in {now - since:.0f} s)" if last == (reason, message) else ""
            log.warning("model refresh (%s) of %s failed%s: %s: %s (serving %s)", trigger, self.uri_for_log, again,
                        reason, message, serving)
            self._repeated = ((reason, message), now, 0)
        return RefreshOutcome("failed", reason=reason, message=message)

    def _refuse(self, trigger: str, version: str, reason: str, message: str) -> RefreshOutcome:
        message = f"refused version {version}: {without_paths(message)}"
        self._refused[version] = (reason, message, self._local_files())
        outcome = self._failed(trigger, reason, message)
        outcome.status, outcome.version = "refused", version
        return outcome

    def _local_files(self) -> Any:
        """A local model directory's files as (name, size, mtime) when the URI names one, else None: its
        version is its manifest's hash, so a file repaired beside an unchanged manifest must count too."""
        if is_remote(self.uri):
            return None
        try:
            entries = [(e.name, e.stat()) for e in os.scandir(Path(self.uri).expanduser())]
            return tuple(sorted((name, st.st_size, st.st_mtime_ns) for name, st in entries))
        except OSError:
            return ()

    @property
    def uri_for_log(self) -> str:
        """The model URI as logs may show it: no credentials, a local directory by its name only."""
        return without_paths(self.uri)

    # -------------------------------------------------------------- threads with a time limit
    def _too_many_stuck(self) -> bool:
        self._stuck = [t for t in self._stuck if t.is_alive()]
        return len(self._stuck) >= MAX_STUCK_THREADS

    async def _in_thread(self, fn: Callable, *args: Any, timeout: float) -> Any:
        """Run a blocking call in a daemon thread; give up waiting after `timeout` (the thread may linger)."""
        future: concurrent.futures.Future = concurrent.futures.Future()

        def target() -> None:
            try:
                result = fn(*args)
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
                settle(future.set_exception, exc)
            else:
                settle(future.set_result, result)

        def settle(setter: Callable, value: Any) -> None:
            try:  # after a timeout the waiter has cancelled the future: the result is dropped
                setter(value)
            except concurrent.futures.InvalidStateError:
                pass

        thread = threading.Thread(target=target, name="anomaly-ae-registry", daemon=True)
        thread.start()
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except asyncio.TimeoutError:
            self._stuck.append(thread)
            raise
