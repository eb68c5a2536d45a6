"""Shared output helpers: Rich for people, JSON for scripts, progress from events."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from app.events import Event, OnEvent

console = Console()
console_err = Console(stderr=True)


def safe(value: Any) -> str:
    """A user- or document-derived value as literal text: file names like
    `draft [final].txt` or `a[/b].txt` must print as they are, not as Rich markup."""
    return escape(str(value))


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=_jsonable, ensure_ascii=False) + "\n")


def _jsonable(value: Any) -> Any:
    """Typed rows and results print as their ``to_dict()``; anything else as text."""
    to_dict = getattr(value, "to_dict", None)
    return to_dict() if callable(to_dict) else str(value)


@contextmanager
def progress(enabled: bool = True) -> Iterator[OnEvent]:
    """An event callback that draws one bar per stage on stderr (never on --json's stdout)."""
    if not enabled:
        yield lambda _e: None
        return
    bars = Progress(
        TextColumn("[bold]{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[message]}", style="dim"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console_err,
        transient=False,
    )
    tasks: dict[str, Any] = {}

    def on_event(event: Event) -> None:
        task = tasks.get(event.stage)
        if task is None:
            task = tasks[event.stage] = bars.add_task(event.stage, total=event.total, message="")
        bars.update(task, completed=event.done, total=event.total, message=escape(event.message[:40]))

    with bars:
        yield on_event
