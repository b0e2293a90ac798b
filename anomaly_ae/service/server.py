"""Running the app under uvicorn: one or several workers, TCP_NODELAY on every connection.

Two things measured on this project's 2-core machine decide the setup:
- uvicorn's multi-worker mode (uvicorn issue #3149) serves from a socket the supervisor bound; on
  the asyncio loop the accepted connections then lack TCP_NODELAY and each keep-alive response sat
  ~44 ms in Nagle's algorithm waiting for the client's delayed ACK (uvloop sets it itself). The
  HTTP protocol class here sets TCP_NODELAY on each accepted connection, whatever the loop and
  worker count, and writes each response in one send().
- torch's default of one intra-op thread per core made two workers on two cores fight (1000-row
  throughput fell ~10x); each worker gets `torch_threads` (default 1) via OMP/MKL variables set
  before any worker imports torch, the one place the service sets its thread count.

And one thing found by the reliability suite: uvicorn's httptools protocol puts no bound on a
request's head (the request line and headers), so one unauthenticated client could make a worker
buffer a 64 MiB header (measured: accepted, RSS +64 MiB). The protocol here answers 431 and closes
the connection once a head passes MAX_HEADER_BYTES; h11 gets the same bound.

Memory, also from the reliability suite: pandas imports pyarrow whenever it is installed, and each
worker then held 35-60 MiB of pyarrow's libraries that scoring never touches (JSON is parsed into
numpy columns). A serving process creates its app through `serving_app`, which leaves pyarrow out
before pandas is imported (unless settings.load_pyarrow); workers get there through the factory
`worker_app` of this module, which imports no pandas itself.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import orjson

from anomaly_ae.exceptions import ConfigurationError
from anomaly_ae.service.settings import ServiceSettings

log = logging.getLogger("anomaly_ae.service")


def _set_nodelay(transport: Any) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


class CoalescingTransport:
    """Holds a response's status line and headers until its body is written, so each response leaves
    in one send(): uvicorn writes the two separately, which with TCP_NODELAY costs a second syscall
    and a second packet per response (a tenth of the CPU of a 1-row request). Interim 1xx responses
    (100 Continue) go out at once; anything held is flushed before the connection closes."""

    __slots__ = ("_transport", "_held")

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._held = b""

    def write(self, data: bytes) -> None:
        if self._held:
            data, self._held = self._held + data, b""
        elif data[:5] == b"HTTP/" and data[-4:] == b"\r\n\r\n" and data[9:10] != b"1":
            self._held = bytes(data)
            return
        self._transport.write(data)

    def close(self) -> None:
        if self._held:
            self._transport.write(self._held)
            self._held = b""
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


MAX_HEADER_BYTES = 64 * 1024  # a request line and headers larger than this are refused with 431
_HEADERS_TOO_LARGE = orjson.dumps({"error": {"status": 431, "code": "headers_too_large", "message":
                                             f"the request line and headers exceed {MAX_HEADER_BYTES} bytes"}})
HEADERS_TOO_LARGE_RESPONSE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                              b"connection: close\r\ncontent-length: " + str(len(_HEADERS_TOO_LARGE)).encode()
                              + b"\r\n\r\n" + _HEADERS_TOO_LARGE)
# The longest wait for a request's head (its line and headers): a client that sends a head a byte at a time
# (slowloris) would otherwise hold a connection, and a file descriptor, for as long as it likes. `serving_app`
# sets it from the settings' body_timeout_s, in each serving process, before any connection is accepted.
HEAD_TIMEOUT_S = [30.0]
_HEAD_TIMEOUT = orjson.dumps({"error": {"status": 408, "code": "head_timeout", "message":
                                        "the request line and headers did not arrive in time"}})
HEAD_TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                         b"content-length: " + str(len(_HEAD_TIMEOUT)).encode() + b"\r\n\r\n" + _HEAD_TIMEOUT)


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class NoDelayHttpToolsProtocol(HttpToolsProtocol):
        """TCP_NODELAY, one send() per response, and bounds on the request head: its size (MAX_HEADER_BYTES)
        and the time it takes to arrive (HEAD_TIMEOUT_S)."""

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            _set_nodelay(transport)
            super().connection_made(transport)
            self.transport = CoalescingTransport(self.transport)
            self._in_head, self._head_bytes = True, 0
            self._head_timer: Any = None
            self._start_head_timer()

        def _start_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            self._head_timer = self.loop.call_later(HEAD_TIMEOUT_S[0], self._head_timed_out)

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self.transport.is_closing() or not self._in_head:
                return
            if self.cycle is not None and not self.cycle.response_complete:  # still answering the last request
                self._start_head_timer()
                return
            if self._head_bytes:  # part of a head came, too slowly: say why the connection closes
                self.transport.write(HEAD_TIMEOUT_RESPONSE)
            self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self.transport.is_closing():
                return
            if self._in_head:  # counted per chunk: a head is held to MAX_HEADER_BYTES + one read
                self._head_bytes += len(data)
            super().data_received(data)
            if self._in_head and self._head_bytes > MAX_HEADER_BYTES and not self.transport.is_closing():
                self.transport.write(HEADERS_TOO_LARGE_RESPONSE)
                self.transport.close()

        def on_headers_complete(self) -> None:
            self._in_head = False
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._in_head, self._head_bytes = True, 0
            self._start_head_timer()
except ImportError:  # pragma: no cover - httptools is a dependency
    NoDelayHttpToolsProtocol = None  # type: ignore[assignment,misc]

from uvicorn.protocols.http.h11_impl import H11Protocol  # noqa: E402


class NoDelayH11Protocol(H11Protocol):
    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        _set_nodelay(transport)
        super().connection_made(transport)
        self.transport = CoalescingTransport(self.transport)


def http_protocol() -> str:
    """uvicorn's fastest available HTTP/1.1 protocol with TCP_NODELAY set on each connection, as an
    import string: uvicorn imports it inside each worker after the worker answers health checks
    (a class would be unpickled, importing torch, before the worker can answer, and be killed)."""
    name = "NoDelayHttpToolsProtocol" if NoDelayHttpToolsProtocol is not None else "NoDelayH11Protocol"
    return f"{__name__}:{name}"


def prepare_environment(settings: ServiceSettings, created: list[str] | None = None) -> dict[str, str]:
    """Environment every worker needs, set in this process before uvicorn spawns any worker. The
    temporary folders it makes are appended to `created` (the caller removes them on exit)."""
    created = [] if created is None else created
    env = settings.to_env()
    threads = str(settings.torch_threads)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env.setdefault(name, os.environ.get(name, threads))
    if settings.workers > 1 and not settings.control_dir:
        env["ANOMALY_AE_CONTROL_DIR"] = tempfile.mkdtemp(prefix="anomaly-ae-control-")
        created.append(env["ANOMALY_AE_CONTROL_DIR"])
    mp_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if settings.workers > 1 and not mp_dir:
        mp_dir = tempfile.mkdtemp(prefix="anomaly-ae-metrics-")
        created.append(mp_dir)
    if mp_dir:
        path = Path(mp_dir)
        try:
            path.mkdir(parents=True, exist_ok=True)
            for stale in path.glob("*.db"):  # counters from a previous run must not leak into this one
                stale.unlink()
            probe = path / f".write-test-{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError as exc:
            raise ConfigurationError(
                f"the metrics directory PROMETHEUS_MULTIPROC_DIR={path} is not usable ({exc.strerror or exc}): make it "
                f"a writable directory for this user (uid {os.getuid()}), e.g. a tmpfs mounted with "
                "uid=10001,gid=10001 (docker/compose) or a pod securityContext fsGroup: 10001 (Kubernetes)") from None
        env["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    os.environ.update(env)
    return env


def without_pyarrow() -> bool:
    """Make `import pyarrow` fail in this process so that pandas, imported after, runs without it (as where
    pyarrow is not installed); True when pyarrow is now left out. Nothing changes, and False, once pandas or
    pyarrow is imported already: pandas decides at its import."""
    if sys.modules.get("pyarrow", False) is None:
        return True
    if "pyarrow" in sys.modules or "pandas" in sys.modules:
        return False
    sys.modules["pyarrow"] = None  # the import system's "not importable" marker: ImportError, which pandas expects
    return True


def serving_app(settings: ServiceSettings) -> Any:
    """The app a serving process runs, created before anything in it imports pandas: pyarrow left out unless
    settings.load_pyarrow."""
    if not settings.load_pyarrow:
        without_pyarrow()
    HEAD_TIMEOUT_S[0] = settings.body_timeout_s
    from anomaly_ae.service.app import create_app

    return create_app(settings)


def worker_app() -> Any:
    """uvicorn factory for each worker process of `--workers N`: settings from the ANOMALY_AE_* variables
    `prepare_environment` set. Importing this module (not anomaly_ae.service.app) keeps pandas out of the
    worker until `serving_app` has decided about pyarrow."""
    return serving_app(ServiceSettings())


def warn_if_open(settings: ServiceSettings) -> None:
    if not settings.auth_enabled:
        message = ("WARNING: no API keys configured (ANOMALY_AE_API_KEYS / ANOMALY_AE_ADMIN_KEYS): anyone who can "
                   "reach this port can score and reload models")
        print(f"\033[1;31m{message}\033[0m" if sys.stderr.isatty() else message, file=sys.stderr, flush=True)
    elif not settings.admin_keys:
        log.warning("no admin keys configured (ANOMALY_AE_ADMIN_KEYS): /v1/admin/reload is refused to everyone")


@contextlib.contextmanager
def temporary_folders() -> Iterator[list[str]]:
    """A list to put temporary folders in; they are removed when the block ends, however it ends."""
    created: list[str] = []
    try:
        yield created
    finally:
        for path in created:
            shutil.rmtree(path, ignore_errors=True)


def start_metrics_server(settings: ServiceSettings) -> None:
    """/metrics on its own port, from a daemon thread of this process: the one process there is with
    one worker, the supervisor with several (it reads every worker's files in multiprocess mode)."""
    # Not through anomaly_ae.service.metrics: importing it here would define this process's own
    # series, and with several workers the supervisor's model_ready=0 would drag the merged value to 0.
    from prometheus_client import REGISTRY, CollectorRegistry, multiprocess, start_http_server

    from anomaly_ae.service.multiproc import forget_dead_processes

    registry = REGISTRY
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        class Merged(CollectorRegistry):  # a killed worker's gauges must not be merged in
            def collect(self):  # type: ignore[override]
                forget_dead_processes(directory)
                return super().collect()

        registry = Merged()
        multiprocess.MultiProcessCollector(registry)
    host = settings.metrics_host or settings.host
    try:
        start_http_server(settings.metrics_port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigurationError(f"cannot serve metrics on {host}:{settings.metrics_port}: "
                                 f"{exc.strerror or exc}") from None
    log.info("metrics on http://%s:%s/metrics", host, settings.metrics_port)


def run(settings: ServiceSettings) -> None:
    with temporary_folders() as created:
        _run(settings, created)


def _run(settings: ServiceSettings, created: list[str]) -> None:
    import uvicorn

    prepare_environment(settings, created)
    warn_if_open(settings)
    if settings.metrics_port is not None:
        start_metrics_server(settings)
    if settings.workers > 1 and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # uvicorn restarts a killed worker without a hook to learn its pid: watch the metrics files
        from anomaly_ae.service.multiproc import start_dead_process_reaper

        start_dead_process_reaper(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    log_config["loggers"]["anomaly_ae"] = {"handlers": ["default"], "level": settings.log_level.upper(),
                                           "propagate": False}
    options: dict[str, Any] = dict(log_config=log_config, host=settings.host, port=settings.port, log_level=settings.log_level,
                                   access_log=settings.access_log,
                                   http=http_protocol() if settings.tcp_nodelay else "httptools",
                                   timeout_graceful_shutdown=int(settings.graceful_timeout_s) or None,
                                   proxy_headers=False, server_header=False,
                                   h11_max_incomplete_event_size=MAX_HEADER_BYTES,
                                   # a worker imports torch before it is ready: slow on a busy machine
                                   timeout_worker_healthcheck=60)
    options["loop"] = settings.event_loop
    if settings.workers == 1:
        uvicorn.run(serving_app(settings), **options)
    else:
        notice_dead_workers_during_health_checks()
        refuse_new_connections_when_stopping()
        uvicorn.run(f"{__name__}:worker_app", factory=True, workers=settings.workers, **options)


def notice_dead_workers_during_health_checks() -> None:
    """uvicorn's multi-worker supervisor (0.54) pings each worker every 0.5 s over a pipe and waits up to
    timeout_worker_healthcheck (60 s here) for the answer, but keeps its own copy of the worker's end of
    that pipe: a worker that dies while being pinged never closes the pipe, so the supervisor waits the
    whole 60 s before it replaces the worker (measured by the reliability suite: a worker killed under
    load was replaced after 60 s instead of 1). Closing the supervisor's copy once the worker has
    started makes its death end the wait at once (EOF); the worker keeps the end it inherited."""
    from uvicorn.supervisors import multiprocess

    process = getattr(multiprocess, "Process", None)
    start = getattr(process, "start", None)
    if start is None or getattr(start, "closes_child_end", False):
        return

    def start_and_close_child_end(self: Any) -> None:
        start(self)
        child_end = getattr(self, "child_conn", None)
        if child_end is not None:
            child_end.close()

    start_and_close_child_end.closes_child_end = True  # type: ignore[attr-defined]
    process.start = start_and_close_child_end


def refuse_new_connections_when_stopping() -> None:
    """On SIGTERM each uvicorn worker stops accepting and finishes its requests in flight, but the
    multi-worker supervisor keeps its copy of the listening socket open until every worker has exited:
    new connections then sit unanswered in the kernel's backlog for the whole graceful shutdown (up to
    graceful_timeout_s) and are reset at the end (measured by the reliability suite). Closing the
    supervisor's copy when it starts stopping the workers lets them be refused at once, so clients and
    load balancers go elsewhere straight away."""
    from uvicorn.supervisors import multiprocess

    supervisor = getattr(multiprocess, "Multiprocess", None)
    terminate_all = getattr(supervisor, "terminate_all", None)
    if terminate_all is None or getattr(terminate_all, "closes_listeners", False):
        return

    def close_listeners_and_terminate_all(self: Any) -> None:
        for sock in getattr(self, "sockets", []):
            with contextlib.suppress(OSError):
                sock.close()
        terminate_all(self)

    close_listeners_and_terminate_all.closes_listeners = True  # type: ignore[attr-defined]
    supervisor.terminate_all = close_listeners_and_terminate_all
