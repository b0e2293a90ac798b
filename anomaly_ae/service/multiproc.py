"""Forgetting the metrics of worker processes that died without saying so (SIGKILL, the OOM killer).

In prometheus_client's multiprocess mode each worker writes its values to files named by its pid.
A worker that exits normally removes its live gauges (`mark_process_dead` in the app's shutdown);
one that is killed cannot, so its last `model_info`, `http_requests_in_flight`, ... would be merged
into /metrics forever. uvicorn's supervisor restarts such a worker but offers no hook to learn its
pid, so the supervisor (a thread started by `anomaly-ae serve`) and every /metrics scrape look for
live-gauge files whose process is gone and drop them. Counters are kept: what a dead worker counted
still happened. This module defines no metric, so the supervisor can use it without creating series.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from pathlib import Path

from prometheus_client import multiprocess

log = logging.getLogger("anomaly_ae.service")

_LIVE_GAUGE_FILE = re.compile(r"^gauge_live(?:all|sum|max|min|mostrecent)_(\d+)\.db$")


def process_alive(pid: int) -> bool:
    """True while `pid` runs; a zombie (dead, not yet reaped by its parent) counts as dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (not Linux): kill(pid, 0) is all there is
    state = stat.rpartition(")")[2].split()[:1]
    return state not in (["Z"], ["X"])


def forget_dead_processes(directory: str | os.PathLike) -> list[int]:
    """Remove the live-gauge files of processes that no longer run; returns their pids."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    pids = {int(m.group(1)) for m in map(_LIVE_GAUGE_FILE.match, names) if m}
    dead = sorted(pid for pid in pids if pid != os.getpid() and not process_alive(pid))
    for pid in dead:
        try:
            multiprocess.mark_process_dead(pid, str(directory))
        except FileNotFoundError:  # another process (a worker's scrape, the supervisor) removed it first
            continue
        log.warning("worker process %d ended without shutting down (killed?); its gauges were removed", pid)
    return dead


def start_dead_process_reaper(directory: str | os.PathLike, interval_s: float = 1.0) -> threading.Event:
    """A daemon thread running `forget_dead_processes` every `interval_s`; set the event to stop it."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval_s):
            try:
                forget_dead_processes(directory)
            except Exception as exc:  # noqa: BLE001 - the reaper must outlive any surprise in one pass
                log.error("could not clear the metrics of dead workers: %s", type(exc).__name__)

    threading.Thread(target=loop, name="anomaly-ae-metrics-reaper", daemon=True).start()
    return stop
