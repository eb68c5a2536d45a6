"""PLACEHOLDER chunker (greedy paragraphs) until the ingestion helper replaces this file."""

from __future__ import annotations

import re

from app.ingest.types import Span
from serving.base import Tokenizer


def chunk_text(text: str, tokenizer: Tokenizer, *, max_tokens: int, overlap: int = 0,
               page_starts: list[int] | None = None) -> list[Span]:
    bounds = [m.end() for m in re.finditer(r"\n\s*\n", text)] + [len(text)]
    spans: list[Span] = []
    start = 0
    prev = 0
    for b in bounds:
        if b <= prev:
            continue
        if tokenizer.count(text[start:b]) > max_tokens and prev > start:
            spans.append(Span(start, prev, tokenizer.count(text[start:prev])))
            start = prev
        prev = b
    if start < len(text):
        spans.append(Span(start, len(text), tokenizer.count(text[start:])))
    return spans
