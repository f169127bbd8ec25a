"""The live view of ``python -m client submit --wait``: a rich progress bar whose label is
the current step, with each log line printed above it as it arrives."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

Callback = Callable[[dict[str, Any]], None]


@contextmanager
def live_progress() -> Iterator[tuple[Callback, Callback]]:
    """``(on_update, on_log)`` for ``AIJobsClient.watch``/``wait`` while the bar is shown."""
    console = Console(highlight=False)
    columns = (
        TextColumn("{task.description:<24}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("queued", total=100)

        def on_update(job: dict[str, Any]) -> None:
            step = job.get("currentStep") or job["status"]
            progress.update(task, completed=job["progress"], description=str(step))

        def on_log(line: dict[str, Any]) -> None:
            from client import format_log_line

            progress.console.print(format_log_line(line), markup=False)

        yield on_update, on_log
