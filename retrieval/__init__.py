"""Retrieval: embedders, a FAISS index per corpus, keyword search and rank fusion."""

from __future__ import annotations

from app.events import OnEvent, ignore


def sync_corpus(corpus: str, *, embed_missing: bool = True, on_event: OnEvent = ignore) -> int:
    """Bring the corpus's indexes in step with the store; returns chunks embedded.
    (Placeholder until the retrieval issue lands.)"""
    return 0
