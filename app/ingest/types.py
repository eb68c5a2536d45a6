"""What readers and the chunker hand to the ingest service."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ReadResult:
    """A file turned into the text pipelines will read."""

    text: str  # boilerplate removed; line endings normalised to \n
    format: str  # "txt", "md", "html", "pdf", ...
    title: str
    meta: dict[str, Any] = field(default_factory=dict)  # incl. "boilerplate": [str, ...]
    page_starts: list[int] | None = None  # offset in text where page i+1 starts


@dataclass(frozen=True)
class Span:
    """One chunk: text[start:end], its token count and where it sits."""

    start: int
    end: int
    n_tokens: int
    page: int | None = None  # 1-based, for formats with pages
    heading: str | None = None  # nearest heading above, when the format has headings
