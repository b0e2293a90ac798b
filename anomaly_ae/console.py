"""What every command prints errors with: one red line on stderr and exit code 2, never a traceback.

Errors the package raises on purpose (`AnomalyAEError`) are for the user; only a bug shows a traceback.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import typer
from rich.console import Console
from rich.markup import escape

from anomaly_ae.exceptions import AnomalyAEError

console = Console(stderr=True, soft_wrap=True)  # an error message stays one greppable line


def friendly_errors(func: Callable) -> Callable:
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (AnomalyAEError, FileExistsError) as exc:
            console.print(f"[bold red]error:[/] {escape(str(exc))}")  # the text as it is, not markup
            raise typer.Exit(code=2) from None
    return wrapper


class Stopped(BaseException):
    """Raised in the main thread by SIGTERM/SIGINT so `with` blocks clean up (temp files) on the way out."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.exit_code = 128 + signum  # the shell's convention: 143 for SIGTERM, 130 for SIGINT


@contextlib.contextmanager
def clean_exit_on_signals(what: str = "nothing was written"):
    """SIGTERM/SIGINT unwind the command (deleting partial outputs) and exit 143/130, no traceback."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        for s in (signal.SIGTERM, signal.SIGINT):  # a second signal must not interrupt the clean-up
            signal.signal(s, signal.SIG_IGN)
        raise Stopped(signum)

    # A signal the process was started ignoring (nohup, a background job) stays ignored.
    watched = [s for s in (signal.SIGTERM, signal.SIGINT) if signal.getsignal(s) is not signal.SIG_IGN]
    previous = {s: signal.signal(s, stop) for s in watched}
    try:
        yield
    except Stopped as stopped:
        console.print(f"stopped by {signal.Signals(stopped.args[0]).name}; {what}")
        raise typer.Exit(code=stopped.exit_code) from None
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def kept_if_logging_fails(model: Any, path: Path | None) -> Iterator[None]:
    """Log a trained model (detector or generator) to MLflow within the block; if that fails or is stopped
    (SIGTERM), the model is not lost: it is saved in ./anomaly-ae-model-TIMESTAMP-PID unless `path` (--out)
    holds it. A failure to save it there is told beside the failure to log."""
    fallback = Path(f"anomaly-ae-model-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    where = f"the trained model is in {path}" if path else f"the trained model is kept in {fallback}"
    with clean_exit_on_signals(f"an MLflow run it had started is marked FAILED; {where}"):
        try:
            yield
        except (Exception, Stopped) as exc:
            if path is not None:
                raise
            try:
                model.save(fallback)
            except Exception as failed:
                if isinstance(exc, Stopped):
                    console.print(f"[bold red]error:[/] keeping the trained model in {fallback} failed: "
                                  f"{escape(str(failed))}")
                    raise exc from None
                raise AnomalyAEError(f"{exc}. Keeping the trained model in {fallback} failed too: {failed}") from None
            if not isinstance(exc, AnomalyAEError):
                raise  # a bug: its traceback, with the model kept
            raise type(exc)(f"{exc}. The trained model is kept in {fallback}: use it from there, or train again "
                            "with --out DIR to keep the model whatever the registry does") from None
