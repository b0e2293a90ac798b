"""A rich progress bar for training epochs that the training loop itself never knows about."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


@contextlib.contextmanager
def epoch_progress(total_epochs: int, description: str, enabled: bool = True
                   ) -> Iterator[Callable[[int, float, float], None] | None]:
    """Yields an `on_epoch(epoch, train_loss, val_loss)` callback that advances a bar, or None."""
    if not enabled:
        yield None
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("train {task.fields[train]:.4g}  val {task.fields[val]:.4g}"),
               TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(description, total=total_epochs, train=float("nan"), val=float("nan"))

        def on_epoch(epoch: int, train_loss: float, val_loss: float) -> None:
            progress.update(task, completed=epoch, train=train_loss, val=val_loss)

        yield on_epoch
        # Early stopping ends before `total`; show the bar as finished at the epoch reached.
        progress.update(task, total=progress.tasks[0].completed)
