"""Progress events. Long work reports through a callback instead of printing, so the
CLI can draw a progress bar and the UI a status box from the same events."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    stage: str  # "read", "embed", "map", "collapse", "reduce", ...
    done: int = 0
    total: int | None = None
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)


OnEvent = Callable[[Event], None]


def ignore(_event: Event) -> None:
    pass
