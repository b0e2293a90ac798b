"""Where computation runs: the torch device, the process's CPU thread count, and handing freed
memory back to the operating system.

A leaf module that imports torch only inside its functions, so anything may import it cheaply.
The thread count is process-wide state: entry points (the CLI, each service worker, the
benchmark runner) set it once at start-up with `set_threads`; library code never changes it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
import warnings
from typing import TYPE_CHECKING, Callable

from anomaly_ae.exceptions import InvalidParameterError

if TYPE_CHECKING:
    import torch

# Networks this small run fastest on one thread; extra threads spin against other processes
# competing for the same cores (training ~100x slower on 2 shared cores, measured in the demo).
DEFAULT_THREADS = 1


def resolve_device(device: str, *, fall_back_to_cpu: bool = False) -> "torch.device":
    """"auto" is CUDA when a GPU is visible, else the CPU; "cuda[:N]" and "mps" must be usable on this machine:
    InvalidParameterError if not or, with fall_back_to_cpu (loading a model trained on another machine), the
    CPU and a warning."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda":
        usable = torch.cuda.is_available() and (resolved.index or 0) < torch.cuda.device_count()
    else:
        usable = resolved.type != "mps" or torch.backends.mps.is_available()
    if usable:
        return resolved
    if fall_back_to_cpu:
        warnings.warn(f"the model was made with device={device!r}, which this machine does not have: it runs on the "
                      "CPU", stacklevel=3)
        return torch.device("cpu")
    raise InvalidParameterError(f"device={device!r}, but this machine has no such device that torch can use; "
                                "use device='auto' or 'cpu'")


def set_threads(n_threads: int | None = DEFAULT_THREADS) -> None:
    """Set torch's intra-op CPU threads for this process (None keeps torch's default: one per core).

    Before torch is imported this only sets OMP_NUM_THREADS / MKL_NUM_THREADS (unless the
    environment already chose), which torch reads when it starts: an entry point can call it
    first thing without paying for importing torch (`anomaly-ae --help` stays fast)."""
    if n_threads is None:
        return
    if n_threads < 1:
        raise ValueError(f"n_threads must be >= 1, got {n_threads}")
    if "torch" not in sys.modules:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(name, str(n_threads))
        return
    import torch

    if torch.get_num_threads() != n_threads:
        torch.set_num_threads(n_threads)


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where there is none (macOS, Windows, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_free_memory() -> bool:
    """Hand the memory that malloc holds freed back to the operating system (glibc's malloc_trim(0));
    False where that is not available.

    glibc keeps what a process frees in its arenas (one per thread that allocated, up to 8 per core)
    and returns only the top of each heap by itself: after a service worker scored large batches in
    its threads, and after a model swap, the freed pages stayed resident (measured: a worker +22 MiB
    RSS after 64 requests of 10,000 rows, all of it given back by this call). The call releases the
    GIL (ctypes) and takes milliseconds; callers make it when a burst of work has ended, not per call."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
