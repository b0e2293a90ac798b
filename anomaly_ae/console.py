"""What every command prints errors with: one red line on stderr and exit code 2, never a traceback.

Errors the package raises on purpose (`AnomalyAEError`) are for the user; only a bug shows a traceback.
"""

from __future__ import annotations

import functools
from typing import Callable

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
