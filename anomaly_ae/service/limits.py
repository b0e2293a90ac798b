"""Per-worker admission: how many request bodies may be read at once, and how many requests may score.

The two are bounded separately so that slow clients cannot starve scoring: a request's body is read
(bounded in size by max_body_bytes and in time by body_timeout_s) while it holds only a body-read
place, and it takes one of the `max_concurrency` scoring places only once the whole body is in.
Either bound, when full, answers 503 `overloaded` with Retry-After at once instead of queueing.
Scoring itself (parse, validate, score, build the response) runs in a worker thread through a
dedicated anyio CapacityLimiter of `scoring_threads` (default 2) threads, so the event loop keeps
answering /healthz and other requests while large batches score (torch releases the GIL in its
kernels). Admitted requests beyond that wait their turn without a thread: measured with 64
concurrent 10,000-row requests, one thread per admitted request (32 per worker) starved the event
loop of the GIL (7 of 127 liveness probes over 1 s) and held 1.5 GiB of batches at once.

A small request (a body of at most `inline_max_bytes`: a few rows) is scored on the event loop's own
thread instead, still holding a scoring place: its work is short (0.55 ms for one row of the default
model) and the hop to a worker thread and back added 0.2 ms to it (1.04 against 0.82 ms a request in
process, `benchmarks/results/experiments/issue11_inline.md`); a loop that scores it holds the GIL no
longer than the thread would.

A request that the worker scores alone may use a second thread (`split`: a one-thread executor passed
to the work as `helper`), where the worker's share of the cores would otherwise leave a core idle: the
two halves of a large row-model batch then score at once (`InferencePath.score`).

When the last admitted request has scored (the worker is idle), the memory its batches freed is handed
back to the operating system (`runtime.release_free_memory`, at most once per `release_interval_s`,
in a thread of its own): the allocator otherwise keeps it resident after a burst of large requests.
"""

from __future__ import annotations

import asyncio
import functools
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

import anyio
import anyio.to_thread
from starlette.requests import Request

from anomaly_ae.runtime import release_free_memory
from anomaly_ae.service import metrics
from anomaly_ae.service.errors import ApiError

T = TypeVar("T")
_timeout = getattr(asyncio, "timeout", None)


def overloaded(what: str) -> ApiError:
    metrics.REQUESTS_REJECTED.labels("overloaded").inc()
    return ApiError(503, "overloaded", f"too many {what} in flight; retry after a moment", headers={"Retry-After": "1"})


class Admission:
    def __init__(self, max_scoring: int, max_body_reads: int, threads: int = 2, release_interval_s: float = 1.0,
                 release: Callable[[], object] = release_free_memory, split: bool = False,
                 inline_max_bytes: int = 0) -> None:
        self.max_scoring = max_scoring
        self.inline_max_bytes = inline_max_bytes
        self.helper = ThreadPoolExecutor(1, thread_name_prefix="anomaly-ae-split") if split else None
        self.scoring = 0  # requests holding a scoring place (only the event loop's thread changes it)
        self.threads = anyio.CapacityLimiter(min(threads, max_scoring))
        self.body_reads = anyio.CapacityLimiter(max_body_reads)
        self.release_interval_s, self._release = release_interval_s, release
        self._released_at = -float("inf")
        self._releasing: asyncio.Future | None = None
        self._timer: asyncio.TimerHandle | None = None

    async def read_body(self, request: Request, limit: int, timeout: float) -> bytes:
        """The body, read while holding a body-read place (never a scoring place)."""
        try:
            self.body_reads.acquire_nowait()
        except anyio.WouldBlock:
            raise overloaded("request bodies") from None
        try:
            return await read_body(request, limit, timeout)
        finally:
            self.body_reads.release()

    async def score(self, work: Callable[..., T], *args: Any, size: int) -> T:
        """Run `work(*args, helper=...)` holding a scoring place (503 when all places are taken): in a worker
        thread (one of `threads`, waiting for a free one), or on the event loop's thread when the request's
        body is `size` <= inline_max_bytes bytes. `helper` is the split executor when this request is the only
        one the worker is scoring in a thread, else None."""
        if self.scoring >= self.max_scoring:
            raise overloaded("scoring requests")
        helper = self.helper if self.scoring == 0 else None
        self.scoring += 1
        metrics.SCORING_IN_FLIGHT.inc()
        try:
            if size <= self.inline_max_bytes:
                return work(*args, helper=None)
            return await anyio.to_thread.run_sync(functools.partial(work, *args, helper=helper), limiter=self.threads)
        finally:
            self.scoring -= 1
            metrics.SCORING_IN_FLIGHT.dec()
            if self.scoring == 0:
                self._release_when_due()

    def close(self) -> None:
        if self.helper is not None:
            self.helper.shutdown(wait=False)

    def _release_when_due(self) -> None:
        """Hand freed memory back now that the worker is idle, without making any response wait: at once in
        a thread of its own or, within release_interval_s of the last time, at the end of that interval if
        the worker is idle then (so the end of a burst is never left out)."""
        if self.release_interval_s <= 0 or self._timer is not None:
            return
        loop = asyncio.get_running_loop()
        wait = self._released_at + self.release_interval_s - time.monotonic()
        if wait > 0 or (self._releasing is not None and not self._releasing.done()):
            self._timer = loop.call_later(max(wait, 0.1), self._release_if_idle)
            return
        self._released_at = time.monotonic()
        self._releasing = loop.run_in_executor(None, self._release)

    def _release_if_idle(self) -> None:
        self._timer = None
        if self.scoring == 0:
            self._release_when_due()


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The body, refusing with 413 as soon as it is known to exceed `limit` (before reading it all),
    and with 408 if it takes longer than `timeout`."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "invalid_header", "Content-Length must be a non-negative integer")
        if int(declared) > limit:
            raise ApiError(413, "body_too_large", f"the body is {declared} bytes; the limit is {limit}: split "
                                                  "the batch into smaller requests")
    try:
        if _timeout is not None:  # Python 3.11+: a deadline on this task, cheaper than wait_for's extra task
            async with _timeout(timeout):
                return await _receive(request, limit, declared is not None)
        return await asyncio.wait_for(_receive(request, limit, declared is not None), timeout)
    except asyncio.TimeoutError:
        raise ApiError(408, "body_timeout", f"the request body did not arrive within {timeout:g}s",
                       headers={"Connection": "close"}) from None


async def _receive(request: Request, limit: int, declared: bool) -> bytes:
    if declared:
        return await request.body()
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "body_too_large", f"the body is over the limit of {limit} bytes: split the "
                                                  "batch into smaller requests")
        chunks.append(chunk)
    return b"".join(chunks)
