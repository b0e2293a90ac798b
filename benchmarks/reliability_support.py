"""Tools of the reliability suite (benchmarks/reliability.py): load in threads, process figures from
/proc, raw sockets for bodies that stall or never end, and one place that stops every process.

Nothing here knows about the checks; the checks know nothing about /proc or sockets.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import httpx
import orjson

from anomaly_ae.service.multiproc import process_alive as alive  # noqa: F401  (for the checks; zombies count as dead)

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_MIB = os.sysconf("SC_PAGE_SIZE") / 2**20


# ---------------------------------------------------------------------------- processes
def children(pid: int) -> list[int]:
    """Direct children of `pid` (from /proc/PID/task/*/children)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return sorted(set(out))


def descendants(pid: int) -> list[int]:
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo += children(p)
    return seen


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def worker_pids(supervisor: int) -> list[int]:
    """The uvicorn worker processes of a multi-worker service (multiprocessing spawn children)."""
    return [p for p in children(supervisor) if "spawn_main" in cmdline(p) and "resource_tracker" not in cmdline(p)]


def status_field(pid: int, name: str) -> int:
    """A kB field of /proc/PID/status (VmRSS, VmHWM, RssAnon, RssFile), 0 if the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_mib(pid: int) -> float:
    return round(status_field(pid, "VmRSS") / 1024, 1)


def tree_rss_mib(pid: int) -> float:
    return round(sum(status_field(p, "VmRSS") for p in descendants(pid)) / 1024, 1)


def memory_breakdown(pid: int) -> dict[str, float]:
    """RSS of one process split into anonymous memory and mapped files, and its proportional share
    (PSS: shared pages divided among the processes sharing them), in MiB."""
    out = {"rss": status_field(pid, "VmRSS") / 1024, "anon": status_field(pid, "RssAnon") / 1024,
           "file": status_field(pid, "RssFile") / 1024, "peak": status_field(pid, "VmHWM") / 1024}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                out["pss"] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return {k: round(v, 1) for k, v in out.items()}


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU time of `pids` (each process's own, threads included)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
        except (OSError, IndexError, ValueError):
            continue
    return total / CLOCK_TICKS


def kill_group(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal a process's whole group (each started with start_new_session), ignoring a finished one."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGCONT)
        os.killpg(process.pid, sig)


_children: set[subprocess.Popen] = set()


def spawn(command: list[str], **kwargs: Any) -> subprocess.Popen:
    """Start a process in its own process group, remembered so that `stop_children` ends it."""
    process = subprocess.Popen(command, start_new_session=True, **kwargs)
    _children.add(process)
    return process


def stop_children() -> None:
    """Kill every process `spawn` started that still runs (the suite ends, however it ends)."""
    for process in list(_children):
        if process.poll() is None:
            kill_group(process)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
        _children.discard(process)


def run_hey(url: str, headers: dict[str, str], body: Path, concurrency: int, seconds: float) -> dict:
    """`hey` POSTing `body` to `url` for `seconds` at `concurrency`; its report parsed (serve_bench.parse_hey)."""
    import shutil

    from serve_bench import parse_hey

    command = [shutil.which("hey") or "hey", "-z", f"{seconds}s", "-c", str(concurrency), "-m", "POST",
               "-T", "application/json", "-D", str(body)]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    process = spawn(command + [url], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        out, _ = process.communicate(timeout=seconds + 120)
    finally:
        if process.poll() is None:
            kill_group(process)
            process.wait(10)
        _children.discard(process)
    return parse_hey(out or "")


class Sampler:
    """Calls `probe()` every `every_s` seconds in a thread; keeps (seconds since start, value)."""

    def __init__(self, probe: Callable[[], Any], every_s: float = 1.0) -> None:
        self.probe, self.every_s = probe, every_s
        self.samples: list[tuple[float, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.t0 = time.monotonic()

    def _run(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                self.samples.append((time.monotonic() - self.t0, self.probe()))
            if self._stop.wait(self.every_s):
                return

    def __enter__(self) -> "Sampler":
        self.t0 = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


# ---------------------------------------------------------------------------- load
@dataclass
class Outcome:
    start: float  # time.monotonic()
    end: float
    status: int | None  # None: no HTTP response (connection refused, reset, timeout)
    error: str | None = None
    version: str | None = None
    client: int = 0


@dataclass
class Load:
    """`threads` clients posting `bodies` (in turn) to `url` as fast as answered, each on its own
    keep-alive connection (or a new connection per request), until `stop()`. Every request is kept:
    when it started and ended, its status or the error, and the model version that answered."""

    url: str
    bodies: list[bytes]
    headers: dict[str, str]
    threads: int = 8
    new_connection: bool = False
    timeout_s: float = 60.0
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    def _client(self, index: int) -> None:
        headers = {"Content-Type": "application/json", **self.headers}
        client = httpx.Client(timeout=self.timeout_s, headers=headers)
        n = index
        try:
            while not self._stop.is_set():
                body = self.bodies[n % len(self.bodies)]
                n += 1
                start = time.monotonic()
                try:
                    response = client.post(self.url, content=body)
                except httpx.HTTPError as exc:
                    self.outcomes.append(Outcome(start, time.monotonic(), None, type(exc).__name__, client=index))
                    client.close()
                    client = httpx.Client(timeout=self.timeout_s, headers=headers)
                    continue
                version = None
                if response.status_code == 200:
                    with contextlib.suppress(Exception):
                        version = orjson.loads(response.content)["model"]["version"]
                error = None
                if response.status_code != 200:
                    with contextlib.suppress(Exception):
                        error = orjson.loads(response.content)["error"]["code"]
                self.outcomes.append(Outcome(start, time.monotonic(), response.status_code, error, version, index))
                if self.new_connection:
                    client.close()
                    client = httpx.Client(timeout=self.timeout_s, headers=headers)
        finally:
            client.close()

    def start(self) -> "Load":
        self._workers = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(self.threads)]
        for thread in self._workers:
            thread.start()
        return self

    def stop(self) -> list[Outcome]:
        self._stop.set()
        for thread in self._workers:
            thread.join(self.timeout_s + 10)
        return self.outcomes

    def __enter__(self) -> "Load":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def summarise(outcomes: list[Outcome]) -> dict[str, Any]:
    """Counts by status (or error), latency percentiles in ms, versions seen."""
    by: dict[str, int] = {}
    for o in outcomes:
        key = str(o.status) if o.status is not None else f"no response ({o.error})"
        if o.status not in (None, 200) and o.error:
            key += f" {o.error}"
        by[key] = by.get(key, 0) + 1
    latencies = sorted((o.end - o.start) * 1000 for o in outcomes)
    ok = sum(1 for o in outcomes if o.status == 200)
    return {"requests": len(outcomes), "ok": ok, "failed": len(outcomes) - ok, "by_status": by,
            **latency_figures(latencies)}


def latency_figures(latencies_ms: list[float]) -> dict[str, float | None]:
    if not latencies_ms:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    s = sorted(latencies_ms)
    return {"p50_ms": round(s[len(s) // 2], 1), "p99_ms": round(s[min(len(s) - 1, int(len(s) * 0.99))], 1),
            "max_ms": round(s[-1], 1)}


PROBE_SCRIPT = r"""
import http.client, json, sys, time, urllib.parse
urls, every, timeout = json.loads(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
n = 0
while True:
    url = urllib.parse.urlsplit(urls[n % len(urls)])
    n += 1
    t0 = time.monotonic()
    status = None
    try:
        connection = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
        connection.request("GET", url.path)
        status = connection.getresponse().status
        connection.close()
    except OSError:
        pass
    print(json.dumps([t0, url.path, status, time.monotonic() - t0]), flush=True)
    time.sleep(max(0.0, every - (time.monotonic() - t0)))
"""


class Prober:
    """A Kubernetes-style probe from a process of its own (as the kubelet is): a GET on a new
    connection every `every_s`, `timeout_s` allowed. A probe in this process would measure this
    process's own threads (the load generator's) as much as the server."""

    def __init__(self, urls: list[str], every_s: float = 0.2, timeout_s: float = 1.0) -> None:
        self.urls, self.every_s, self.timeout_s = urls, every_s, timeout_s
        self.results: list[tuple[float, str, int | None, float]] = []  # (t, path, status, seconds)
        self._process: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            with contextlib.suppress(ValueError):
                t0, path, status, seconds = orjson.loads(line)
                self.results.append((t0, path, status, seconds))

    def __enter__(self) -> "Prober":
        import json
        import sys

        self._process = spawn([sys.executable, "-c", PROBE_SCRIPT, json.dumps(self.urls), str(self.every_s),
                               str(self.timeout_s)], stdout=subprocess.PIPE)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 30
        while not self.results and time.monotonic() < deadline:  # started and probing
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            kill_group(self._process)
            self._process.wait(10)
        if self._reader is not None:
            self._reader.join(10)

    def figures(self, since: float | None = None, until: float | None = None) -> dict[str, Any]:
        """Probes started between `since` and `until` (time.monotonic(), the same clock in both processes)."""
        chosen = [r for r in self.results if (since is None or r[0] >= since) and (until is None or r[0] <= until)]
        bad = [r for r in chosen if r[2] != 200]
        latencies = [r[3] * 1000 for r in chosen]
        return {"probes": len(chosen), "probes_failed": len(bad),
                "probe_max_ms": round(max(latencies), 1) if latencies else None,
                "probe_p99_ms": latency_figures(latencies)["p99_ms"]}


# ---------------------------------------------------------------------------- raw sockets
def request_head(port: int, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_response_status(sock: socket.socket, timeout_s: float) -> tuple[int | None, float]:
    """(HTTP status of the next response on `sock`, or None if it closed or stayed silent; seconds waited)."""
    t0 = time.monotonic()
    sock.settimeout(timeout_s)
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    waited = time.monotonic() - t0
    try:
        return int(data.split(b" ", 2)[1]), waited
    except (IndexError, ValueError):
        return None, waited


def stalled_connections(port: int, n: int, headers: dict[str, str], declared: int = 100_000) -> list[socket.socket]:
    """`n` connections that send a scoring request's headers and one byte of a `declared`-byte body, then stall."""
    head = request_head(port, "/v1/score", {**headers, "Content-Type": "application/json",
                                            "Content-Length": str(declared)})
    out = []
    for _ in range(n):
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.sendall(head + b"{")
        out.append(sock)
    return out


def endless_chunked_body(port: int, headers: dict[str, str], give_up_bytes: int,
                         chunk: bytes = b" " * 65536) -> dict[str, Any]:
    """Send a chunked body that never ends, as fast as the server reads it, until the server answers
    (or closes) or `give_up_bytes` have been sent. Returns status, bytes sent, seconds."""
    import select

    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = request_head(port, "/v1/score", {**headers, "Content-Type": "application/json",
                                            "Transfer-Encoding": "chunked"})
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    sent, t0, closed_while_sending = 0, time.monotonic(), False
    try:
        sock.sendall(head)
        while sent < give_up_bytes:
            readable, writable, _ = select.select([sock], [sock], [], 10)
            if readable:
                break
            if writable:
                try:
                    sock.sendall(frame)
                except OSError:
                    closed_while_sending = True
                    break
                sent += len(chunk)
            if not readable and not writable:
                break
        status, _ = read_response_status(sock, 10)
    finally:
        sock.close()
    return {"status": status, "body_bytes_sent": sent, "seconds": round(time.monotonic() - t0, 2),
            "closed_while_sending": closed_while_sending}


def declared_oversize(port: int, headers: dict[str, str], declared: int) -> dict[str, Any]:
    """Headers announcing a `declared`-byte body and none of it: the answer must come before any body."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        sock.sendall(request_head(port, "/v1/score", {**headers, "Content-Type": "application/json",
                                                      "Content-Length": str(declared)}))
        status, waited = read_response_status(sock, 10)
    finally:
        sock.close()
    return {"status": status, "seconds": round(waited, 3)}


def oversized_headers(port: int, size: int) -> dict[str, Any]:
    """One header of `size` bytes: refused (4xx) or the connection closed; never a crash."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        with contextlib.suppress(OSError):
            sock.sendall(request_head(port, "/v1/score", {"X-Padding": "a" * size, "Content-Length": "0"}))
        status, waited = read_response_status(sock, 10)
    finally:
        sock.close()
    return {"status": status, "seconds": round(waited, 3)}


class HeldRequest:
    """A POST whose body is sent but for its last byte, so that it stays in flight until `finish()`."""

    def __init__(self, port: int, path: str, headers: dict[str, str], body: bytes) -> None:
        self.body = body
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sock.sendall(request_head(port, path, {**headers, "Content-Length": str(len(body))}) + body[:-1])

    def finish(self) -> None:
        self.sock.sendall(self.body[-1:])

    def response(self, timeout_s: float = 120.0) -> tuple[int | None, bytes]:
        """(status, body) of the response; (None, b"") if the connection closed without one."""
        self.sock.settimeout(timeout_s)
        data = b""
        try:
            while True:
                head, sep, rest = data.partition(b"\r\n\r\n")
                if sep:
                    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                                   if line.lower().startswith(b"content-length:")), None)
                    if length is not None and len(rest) >= length:
                        return int(head.split(b" ", 2)[1]), rest[:length]
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
        finally:
            self.sock.close()
        return None, b""


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None
