"""Where computation runs: the torch device and the process's CPU thread count.

A leaf module that imports torch only inside its functions, so anything may import it cheaply.
The thread count is process-wide state: entry points (the CLI, each service worker, the
benchmark runner) set it once at start-up with `set_threads`; library code never changes it.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# Networks this small run fastest on one thread; extra threads spin against other processes
# competing for the same cores (training ~100x slower on 2 shared cores, measured in the demo).
DEFAULT_THREADS = 1


def resolve_device(device: str) -> "torch.device":
    """"auto" is CUDA when a GPU is visible, else the CPU; anything else is passed to torch."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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
