"""Search a corpus: dense (embeddings), keyword (BM25) or hybrid (both, fused by
reciprocal rank or by relative score: retrieval/fusion.py). Before answering, the indexes are checked against the store and
repaired if they disagree; if another process is writing them right now, the search
uses them as they are and drops any hit whose chunk is gone."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.errors import NotFound, TomesError
from app.events import Event, OnEvent, ignore
from app.settings import get_settings
from retrieval import store_state
from retrieval.embedders import get_embedder
from retrieval.files import corpus_dir, file_signature, write_lock
from retrieval.fusion import FUSIONS
from retrieval.sync import (
    DENSE_FILE, KEYWORD_FILE, cached_dense, cached_keyword, in_step, require_corpus, sync_locked,
)

MODES = ("dense", "keyword", "hybrid")


@dataclass
class Hit:
    chunk_id: int
    document_id: int
    title: str
    start: int  # document.text[start:end] == text
    end: int
    page: int | None
    score: float  # cosine (dense), BM25 (keyword) or the fused score (hybrid)
    text: str
    heading: str | None = None
    ordinal: int = 0
    dense_rank: int | None = None  # 1-based rank in each list, None if absent from it
    keyword_rank: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def search(corpus: str, query: str, k: int = 10, *, mode: str = "hybrid",
           document_id: int | None = None, on_event: OnEvent = ignore) -> list[Hit]:
    """The ``k`` best chunks of ``corpus`` for ``query``, best first; ``document_id``
    restricts them to one document. ``on_event`` reports any repair embedding."""
    if mode not in MODES:
        raise TomesError(f"unknown search mode {mode!r}", f"use one of: {', '.join(MODES)}")
    fusion = get_settings().fusion
    if mode == "hybrid" and fusion not in FUSIONS:
        raise TomesError(f"unknown fusion {fusion!r} (TOMES_FUSION)", f"use one of: {', '.join(FUSIONS)}")
    cid = require_corpus(corpus)
    allowed = None
    if document_id is not None:
        allowed = store_state.document_chunk_ids(cid, document_id)
        if allowed is None:
            raise NotFound(f"no document with id {document_id} in corpus {corpus!r}",
                           f"list its documents with `tomes docs --corpus {corpus}`")
    if k <= 0 or not query.strip():
        return []
    directory = corpus_dir(cid, corpus)
    use_dense, use_keyword = mode in ("dense", "hybrid"), mode in ("keyword", "hybrid")
    dense, keyword, current = _fresh_indexes(cid, corpus, directory, use_dense, use_keyword,
                                             on_event)
    # With a hybrid, each list goes deeper than k so that fusion has overlap to work with.
    depth = k if mode != "hybrid" else max(2 * k, 50)
    dense_hits: list[tuple[int, float]] = []
    keyword_hits: list[tuple[int, float]] = []
    if use_dense and dense is not None and dense.ntotal:
        embedder = get_embedder()
        dense.check_model(embedder.model_id, embedder.dim, corpus)
        dense_hits = dense.search(embedder.encode_query(query), depth, allowed=allowed,
                                  nprobe=get_settings().ann_nprobe)
    if use_keyword and keyword is not None:
        keyword_hits = keyword.search(query, depth, allowed=allowed)
    if current is not None:
        dense_hits = _only_current(dense_hits, dense, *current)
        keyword_hits = _only_current(keyword_hits, keyword, *current)

    dense_rank = {cid_: r for r, (cid_, _) in enumerate(dense_hits, start=1)}
    keyword_rank = {cid_: r for r, (cid_, _) in enumerate(keyword_hits, start=1)}
    if mode == "dense":
        ranked = dense_hits[:k]
    elif mode == "keyword":
        ranked = keyword_hits[:k]
    else:
        ranked = FUSIONS[fusion]([dense_hits, keyword_hits])[:k]
    rows = store_state.hit_rows([int(c) for c, _ in ranked])
    return [
        Hit(**rows[c], score=float(score), dense_rank=dense_rank.get(c),
            keyword_rank=keyword_rank.get(c))
        for c, score in ranked if c in rows
    ]


# Index file -> (store quick signature, file signature) when they were last seen in step.
_verified: dict[Path, tuple[Any, Any]] = {}


def _fresh_indexes(cid: int, corpus: str, directory: Path, use_dense: bool, use_keyword: bool,
                   on_event: OnEvent):
    """The corpus's indexes, repaired first if they disagree with the store. Returns
    (dense, keyword, current): current is None when they agree, else the store's
    (ids, fingerprints), to filter hits with when another writer holds the lock and
    the repair has to wait for it."""
    paths = {"dense": directory / DENSE_FILE, "keyword": directory / KEYWORD_FILE}
    wanted = [name for name, use in (("dense", use_dense), ("keyword", use_keyword)) if use]

    def load() -> tuple[Any, Any]:
        return (cached_dense(paths["dense"], corpus) if use_dense else None,
                cached_keyword(paths["keyword"]) if use_keyword else None)

    # Cheap signature first (and before the full state, so a change in between makes
    # the next search check again rather than trust an older verdict).
    quick = store_state.quick_signature(cid)
    if all(_verified.get(paths[n]) == (quick, file_signature(paths[n])) for n in wanted):
        dense, keyword = load()
        return dense, keyword, None

    for attempt in range(2):
        ids, hashes = store_state.chunk_state(cid)
        dense, keyword = load()
        agree = {
            "dense": in_step(*dense.chunk_hashes(), ids, hashes) if dense is not None else not len(ids),
            "keyword": (in_step(keyword.ids, keyword.hashes, ids, hashes) if keyword is not None
                        else not len(ids)),
        }
        for name in wanted:
            if agree[name]:
                _verified[paths[name]] = (quick, file_signature(paths[name]))
        if all(agree[n] for n in wanted) or attempt == 1:
            break
        with write_lock(directory, blocking=False) as acquired:
            if acquired:
                sync_locked(cid, corpus, directory, embed_missing=use_dense, on_event=on_event)
        if not acquired:
            indexes = {"dense": dense, "keyword": keyword}
            if not any(_lacks(indexes[n], ids) for n in wanted):
                break  # stale entries only: filtered out of the hits below, no wait
            # The store has chunks these indexes lack, and another writer (an ingest, a
            # concurrent search) is adding them: a search now would silently miss them
            # (eight rag questions at once on a new corpus answered "no information").
            on_event(Event("index", 0, 0, message="waiting for another process indexing "
                           f"{corpus!r}", data={"corpus": corpus}))
            with write_lock(directory):
                sync_locked(cid, corpus, directory, embed_missing=use_dense, on_event=on_event)
        quick = store_state.quick_signature(cid)
    current = None if all(agree[n] for n in wanted) else (ids, hashes)
    return dense, keyword, current


def _lacks(index: Any, ids: np.ndarray) -> bool:
    """Whether the store has chunks (``ids``) that ``index`` does not hold."""
    if index is None:
        return bool(len(ids))
    held = index.chunk_hashes()[0] if hasattr(index, "chunk_hashes") else index.ids
    return bool((~np.isin(ids, held)).any())


def _only_current(hits: list[tuple[int, float]], index, ids: np.ndarray,
                  hashes: np.ndarray) -> list[tuple[int, float]]:
    """Hits whose chunk still exists with the content the index saw."""
    if not hits or index is None:
        return hits
    if hasattr(index, "chunk_hashes"):
        index_ids, index_hashes = index.chunk_hashes()
    else:
        index_ids, index_hashes = index.ids, index.hashes
    current = {int(i): int(h) for i, h in zip(ids, hashes)}
    seen = {int(i): int(h) for i, h in zip(index_ids, index_hashes)}
    return [(c, s) for c, s in hits if c in current and current[c] == seen.get(c)]
