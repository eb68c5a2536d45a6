"""Several servers of one model behind the OpenAI-compatible backend.

Requests go to the live endpoint with the fewest requests in flight for its capacity.
An endpoint that cannot be reached (refused connection, dropped connection) is cooled
down: no new request goes to it for ``cooldown`` seconds, then it is tried again. When
every endpoint is cooling down a request still goes to the one that comes back first,
so one endpoint behaves exactly as a plain URL did (its retries and backoff decide).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from serving.base import BackendError

DEFAULT_COOLDOWN = 30.0
URL_FIX = ("give one or more OpenAI-compatible base URLs, comma-separated, e.g. "
           "TOMES_BASE_URL=http://10.0.0.1:8000/v1,http://10.0.0.2:8000/v1")


def parse_urls(value: str | Sequence[str]) -> list[str]:
    """Base URLs from "a,b" (TOMES_BASE_URL) or a list, in order, without repeats."""
    parts: Iterable[str] = value.replace(",", " ").split() if isinstance(value, str) else value
    urls: list[str] = []
    for part in parts:
        if not isinstance(part, str):
            raise BackendError(f"base URL {part!r} is not text", URL_FIX)
        url = part.strip().rstrip("/")
        if not url:
            continue
        split = urlsplit(url)
        if split.scheme not in ("http", "https") or not split.netloc:
            raise BackendError(f"base URL {part!r} is not an http(s) URL", URL_FIX)
        if url not in urls:
            urls.append(url)
    if not urls:
        raise BackendError("no base URL was given for the OpenAI-compatible backend", URL_FIX)
    return urls


@dataclass
class Endpoint:
    url: str
    capacity: int
    in_flight: int = 0
    served: int = 0  # replies received
    failures: int = 0  # requests that failed here (and went elsewhere or were retried)
    down_until: float = 0.0  # cooling down until this clock time
    last_error: str | None = None

    def load(self) -> float:
        return self.in_flight / self.capacity

    def to_dict(self, now: float) -> dict[str, Any]:
        cooling = max(0.0, self.down_until - now)
        return {"url": self.url, "capacity": self.capacity, "in_flight": self.in_flight,
                "served": self.served, "failures": self.failures,
                "state": f"cooling down ({cooling:.0f} s left)" if cooling else "up",
                "last_error": self.last_error}


@dataclass
class Endpoints:
    """The endpoints of one backend and their load; one event loop's worth of state is
    enough (no locks): picks and counts happen between awaits."""

    urls: list[str]
    capacity_each: int
    cooldown: float = DEFAULT_COOLDOWN
    clock: Callable[[], float] = time.monotonic
    items: list[Endpoint] = field(init=False)

    def __post_init__(self) -> None:
        self.items = [Endpoint(url, max(1, self.capacity_each)) for url in self.urls]

    def __len__(self) -> int:
        return len(self.items)

    @property
    def capacity(self) -> int:
        return sum(e.capacity for e in self.items)

    def up(self, endpoint: Endpoint) -> bool:
        return endpoint.down_until <= self.clock()

    def pick(self, avoid: Iterable[str] = ()) -> Endpoint:
        """The endpoint for the next request: a live one it has not failed on, least
        loaded first (ties: the one that has served least, then list order); else a live
        one; else the one whose cool-down ends first."""
        avoid = set(avoid)
        live = [e for e in self.items if self.up(e)]
        fresh = [e for e in live if e.url not in avoid]
        pool = fresh or live
        if pool:
            return min(pool, key=lambda e: (e.load(), e.served))
        return min(self.items, key=lambda e: e.down_until)

    @contextmanager
    def lease(self, endpoint: Endpoint) -> Iterator[Endpoint]:
        endpoint.in_flight += 1
        try:
            yield endpoint
        finally:
            endpoint.in_flight -= 1

    def succeeded(self, endpoint: Endpoint) -> None:
        endpoint.served += 1
        endpoint.down_until = 0.0  # it answered: back in the rotation at once

    def failed(self, endpoint: Endpoint, error: str, *, down: bool) -> None:
        endpoint.failures += 1
        endpoint.last_error = error
        if down:
            endpoint.down_until = self.clock() + self.cooldown

    def describe(self) -> list[dict[str, Any]]:
        now = self.clock()
        return [e.to_dict(now) for e in self.items]
