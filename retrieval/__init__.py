"""Retrieval: embedders, a FAISS index per corpus, keyword search and rank fusion.

    from retrieval import search, sync_corpus
    sync_corpus("books")                     # index what the store holds (incremental)
    hits = search("books", "who rents Netherfield?", k=5, mode="hybrid")

The store is the truth; the indexes beside it (under settings.index_dir) are kept in
step by ``sync_corpus``, which ingest and removal call and search re-checks.
"""

from __future__ import annotations

from app.events import OnEvent, ignore


def sync_corpus(corpus: str, *, embed_missing: bool = True, on_event: OnEvent = ignore) -> int:
    """Bring the corpus's dense and keyword indexes in step with the store: remove
    vectors of chunks that are gone, embed chunks that have none (unless
    ``embed_missing`` is False), rebuild the keyword index if the chunk set changed.
    Returns the number of chunks embedded."""
    from retrieval.sync import sync_corpus as _sync

    return _sync(corpus, embed_missing=embed_missing, on_event=on_event)


def __getattr__(name: str):
    # Heavy modules (faiss, bm25s) load on first use, not when ingest imports this package.
    if name == "search":
        from retrieval.searcher import search

        return search
    if name == "Hit":
        from retrieval.searcher import Hit

        return Hit
    if name in ("reembed", "sync_in_background", "status"):
        from retrieval import sync

        return getattr(sync, name)
    if name in ("Embedder", "get_embedder", "register_embedder", "embedder_names"):
        from retrieval import embedders

        return getattr(embedders, name)
    raise AttributeError(f"module 'retrieval' has no attribute {name!r}")


__all__ = ["Hit", "search", "sync_corpus", "reembed", "sync_in_background", "status",
           "Embedder", "get_embedder", "register_embedder", "embedder_names"]
