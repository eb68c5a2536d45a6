"""The typed rows the API lists: documents, runs, model calls.

Each is a dataclass (attributes, a type checker's help, ``to_dict()`` for the JSON the
CLI prints) that also reads as a read-only mapping (``row["title"]``, ``dict(row)``,
``{**row}``): the CLI, the UI and users' scripts index rows by name, and a row compares
equal to the dict of its fields."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any


@dataclass(eq=False)
class Row(Mapping):
    def __getitem__(self, key: str) -> Any:
        if key not in self._names():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._names())
        return f"{type(self).__name__}({inner})"

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        names = cls.__dict__.get("_field_names")
        if names is None:
            names = tuple(f.name for f in fields(cls))
            cls._field_names = names
        return names

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (datetimes as ISO text)."""
        return {k: _plain(getattr(self, k)) for k in self._names()}


def _plain(value: Any) -> Any:
    if isinstance(value, Row):
        return value.to_dict()
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclass(eq=False, repr=False)
class DocumentInfo(Row):
    """A stored document, as ``tomes docs`` lists it."""
    id: int
    title: str
    corpus: str
    format: str
    source: str
    chars: int
    chunks: int
    tokens: int
    pages: int | None
    created_at: str


@dataclass(eq=False, repr=False)
class DocumentDetail(DocumentInfo):
    """One document, as ``tomes show`` prints it: its metadata, reading warnings and
    (unless asked not to) its chunks."""
    # The chunks themselves (id, ordinal, start, end, page, tokens, heading, text) when
    # they were asked for, else their count as in the listing.
    chunks: list[dict[str, Any]] | int
    meta: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    pages_without_text: int | None = None


@dataclass(eq=False, repr=False)
class RunInfo(Row):
    """A run, as ``tomes runs`` lists it."""
    id: str
    pipeline: str
    target: str
    question: str | None
    status: str
    answer: str | None
    error: str | None
    created_at: str
    chosen_by: str | None = None  # set when a strategy was chosen for the run (auto)
    why: str | None = None


@dataclass(eq=False, repr=False)
class RunStats(RunInfo):
    """A run with what a table of runs shows besides: its target's title, backend calls,
    cache hits, tokens, model time and duration."""
    target_title: str = ""
    calls: int = 0
    cache_hits: int = 0
    tokens: int = 0
    model_ms: float = 0.0
    duration_s: float = 0.0
    finished_at: str | None = None


@dataclass(eq=False, repr=False)
class RunDetail(RunInfo):
    """One run with its parameters and stored result."""
    params: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    finished_at: str | None = None
    target_title: str = ""


@dataclass(eq=False, repr=False)
class CallInfo(Row):
    """One row of the call log: a model call (or, with ``steps``, a pipeline step)."""
    id: int
    run_id: str | None
    parent_id: int | None
    node: str | None
    backend: str
    model: str
    messages: list[dict[str, Any]]
    params: dict[str, Any]
    response: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    error: str | None
    cache_hit: bool
    cache_key: str | None
    created_at: datetime
    cached_tokens: int = 0  # prompt tokens the server had cached (where it reports them)

    @classmethod
    def of(cls, call: Any) -> CallInfo:
        return cls(**{name: getattr(call, name) for name in cls._names()})
