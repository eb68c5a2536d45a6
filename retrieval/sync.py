"""Keeping a corpus's indexes in step with the store, which is always the truth.

Ingest commits chunks first and indexes them after; removal deletes chunks first and
their vectors after. A crash between the two leaves chunks without vectors or vectors
without chunks, never a torn file (index files are replaced atomically). ``sync_corpus``
finds both kinds of difference by comparing chunk ids *and* content fingerprints, and
repairs them; search runs the same check before it answers.

Embedding is incremental: only chunks without vectors are embedded. Each batch is
appended to the index's journal as it is embedded (retrieval/_journal.py: the cost of a
batch, not of the index), the index file is rewritten every CHECKPOINT_SECONDS (for
concurrent searches) and when the work stops for any reason (an exception raised from
``on_event`` is a way to cancel); a kill loses at most the batch under way, and the next
sync folds the journal in and embeds only the rest.
"""

from __future__ import annotations

import contextvars
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.errors import TomesError
from app.events import Event, OnEvent, ignore
from app.settings import get_settings
from retrieval import store_state
from retrieval._journal import Journal
from retrieval.dense import DenseIndex
from retrieval.embedders import get_embedder
from retrieval.files import corpus_dir, file_signature, write_lock
from retrieval.keyword import KeywordIndex

CHECKPOINT_SECONDS = 60.0
# Saving may take at most about 1/(1+N) of the embedding's wall time: a journal append
# waits until the work since the last one took JOURNAL_RATIO times what that append
# cost (with a real embedder, a batch outweighs an append: every batch is appended), and
# the index file is rewritten no sooner than REWRITE_RATIO times its last rewrite.
JOURNAL_RATIO = 10.0
REWRITE_RATIO = 20.0
DENSE_FILE = "dense.npz"
KEYWORD_FILE = "keyword.npz"

# Loaded indexes, keyed by file, valid while the file is unchanged. Writers never mutate
# a cached object in place (they load their own copy), so readers need no lock.
_cache: dict[Path, tuple[Any, Any]] = {}
_cache_lock = threading.Lock()


def cached_dense(path: Path, corpus: str) -> DenseIndex | None:
    return _cached(path, lambda: DenseIndex.load(path, corpus))


def cached_keyword(path: Path) -> KeywordIndex | None:
    return _cached(path, lambda: KeywordIndex.load(path))


def _cached(path: Path, load):
    sig = file_signature(path)
    if sig is None:
        return None
    with _cache_lock:
        entry = _cache.get(path)
    if entry is not None and entry[0] == sig:
        return entry[1]
    obj = load()
    with _cache_lock:
        _cache[path] = (sig, obj)
    return obj


def _remember(path: Path, obj: Any) -> None:
    sig = file_signature(path)
    with _cache_lock:
        if sig is None:
            _cache.pop(path, None)
        else:
            _cache[path] = (sig, obj)


def require_corpus(corpus: str) -> int:
    cid = store_state.corpus_id(corpus)
    if cid is None:
        raise TomesError(
            f"no corpus named {corpus!r}",
            "list documents and their corpora with `tomes docs`, or add documents with "
            f"`tomes ingest PATH --corpus {corpus}`",
        )
    return cid


@dataclass
class Encoded:
    """Vectors of some of the missing chunks: ``read`` ids of them done (for progress),
    of which the store still had ``chunks``; one row per window in the other fields."""

    read: int
    chunks: int
    vectors: np.ndarray
    owners: np.ndarray
    fingerprints: np.ndarray


# (missing chunk ids, the driver's embedder, chunks per batch) -> their vectors, batch by
# batch. The embedder names the vector space: an encoder that runs another copy of it
# must check that copy is the same model (``Embedder.model_id`` and ``dim``).
Encoder = Callable[[np.ndarray, Any, int], Iterable[Encoded]]


def encode_rows(embedder, rows: list[tuple[int, str, int]], read: int, *, batch: int) -> Encoded:
    """``store_state.chunk_texts`` rows cut into the embedder's windows and encoded."""
    windows: list[str] = []
    owners: list[int] = []
    fingerprints: list[int] = []
    for cid, text, fp in rows:
        pieces = embedder.windows(text) or [text]
        windows.extend(pieces)
        owners.extend([cid] * len(pieces))
        fingerprints.extend([fp] * len(pieces))
    vectors = (embedder.encode(windows, batch_size=batch) if windows
               else np.zeros((0, embedder.dim), np.float32))
    return Encoded(read, len(rows), vectors, np.array(owners, np.int64),
                   np.array(fingerprints, np.int64))


def encode_here(missing: np.ndarray, embedder, batch: int) -> Iterator[Encoded]:
    """The default encoder: texts read from the store and encoded in this process."""
    for start in range(0, len(missing), batch):
        ids = missing[start : start + batch]
        yield encode_rows(embedder, store_state.chunk_texts(ids), len(ids), batch=batch)


def sync_corpus(corpus: str, *, embed_missing: bool = True, on_event: OnEvent = ignore,
                encoder: Encoder | None = None) -> int:
    """Bring the corpus's dense and keyword indexes in step with the store: remove vectors
    of chunks that are gone (or whose id now holds other text), embed chunks that have
    no vectors (unless ``embed_missing`` is False) with ``encoder`` (default: here),
    rebuild the keyword index if the chunk set changed. Returns the number of chunks
    embedded."""
    cid = store_state.corpus_id(corpus)
    if cid is None:
        return 0
    directory = corpus_dir(cid, corpus)
    with write_lock(directory):
        return sync_locked(cid, corpus, directory, embed_missing=embed_missing, on_event=on_event,
                           encoder=encoder)


def reembed(corpus: str, *, on_event: OnEvent = ignore) -> int:
    """Drop the corpus's dense index and embed every chunk again with the current
    embedder. Interrupted, it resumes on the next sync (ingest or search)."""
    cid = require_corpus(corpus)
    directory = corpus_dir(cid, corpus)
    with write_lock(directory):
        return sync_locked(cid, corpus, directory, embed_missing=True, on_event=on_event,
                           rebuild=True)


_executor: ThreadPoolExecutor | None = None


def sync_in_background(corpus: str, *, on_event: OnEvent = ignore) -> Future[int]:
    """Run sync_corpus in a worker thread (one at a time per process), under the caller's
    settings; a UI polls the future and draws ``on_event``'s progress meanwhile."""
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tomes-embed")
    context = contextvars.copy_context()  # settings overrides live in context variables
    return _executor.submit(context.run, sync_corpus, corpus, on_event=on_event)


def sync_locked(cid: int, corpus: str, directory: Path, *, embed_missing: bool,
                on_event: OnEvent, rebuild: bool = False, encoder: Encoder | None = None) -> int:
    """sync_corpus's work; the caller holds the corpus's write lock."""
    ids, hashes = store_state.chunk_state(cid)
    # Keyword first: it takes seconds, so new chunks are searchable by keyword while
    # the (much longer) embedding runs.
    _sync_keyword(cid, directory / KEYWORD_FILE, ids, hashes, on_event)
    return _sync_dense(corpus, directory / DENSE_FILE, ids, hashes,
                       embed_missing=embed_missing, on_event=on_event, rebuild=rebuild,
                       encoder=encoder or encode_here)


def stale_ids(index_ids: np.ndarray, index_hashes: np.ndarray,
              ids: np.ndarray, hashes: np.ndarray) -> np.ndarray:
    """Indexed chunk ids that the store no longer has, or has with other content.
    All four arrays are sorted by id (one row per chunk)."""
    if not len(ids):
        return index_ids
    pos = np.minimum(np.searchsorted(ids, index_ids), len(ids) - 1)
    same = (ids[pos] == index_ids) & (hashes[pos] == index_hashes)
    return index_ids[~same]


def in_step(index_ids: np.ndarray, index_hashes: np.ndarray,
            ids: np.ndarray, hashes: np.ndarray) -> bool:
    return np.array_equal(index_ids, ids) and np.array_equal(index_hashes, hashes)


def _sync_dense(corpus: str, path: Path, ids: np.ndarray, hashes: np.ndarray, *,
                embed_missing: bool, on_event: OnEvent, rebuild: bool, encoder: Encoder) -> int:
    settings = get_settings()
    journal = Journal(path)
    if rebuild:
        journal.discard()
    # A private copy: cached objects may be in use by concurrent searches.
    dense = None if rebuild else DenseIndex.load(path, corpus)
    changed = rebuild and (path.exists() or len(ids) > 0)

    def drop_stale() -> None:
        nonlocal changed
        stale = stale_ids(*dense.chunk_hashes(), ids, hashes)
        if len(stale):
            dense.remove(stale)
            changed = True

    if dense is not None:
        drop_stale()
    embedded = 0
    completed = folded = False
    try:
        if embed_missing:
            embedder = get_embedder()
            if dense is None:
                dense = DenseIndex.new(embedder.model_id, embedder.dim)
            else:
                dense.check_model(embedder.model_id, embedder.dim, corpus)
            # What a stopped sync embedded after the file was last written. Only a sync
            # that embeds takes the journal in (it knows the model); others leave it.
            if journal.exists():
                if _fold(dense, journal):
                    changed = True
                    drop_stale()  # the store may have dropped or changed them since
                folded = True
            missing = ids[~np.isin(ids, dense.chunk_ids())]
            if len(missing):
                changed = folded = True  # what it journals is in ``dense`` too
                encoded = encoder(missing, embedder, max(1, settings.embed_batch_size))
                embedded = _embed(dense, encoded, len(missing), path, corpus, on_event, journal)
        completed = True
    finally:
        # Whatever was removed or embedded is kept, even if the run was stopped.
        if dense is not None and completed and dense.rebalance(settings.ann_threshold):
            changed = True
        if dense is not None and changed:
            dense.save(path)
            _remember(path, dense)
        if folded:  # the file now holds all the journal had
            journal.discard()
    return embedded


def _fold(dense: DenseIndex, journal: Journal) -> bool:
    """Add the journal's vectors of chunks the index lacks; True if any were added. A
    chunk already in the index (the file was written, the journal not yet removed) is
    not added twice."""
    added = False
    for batch in journal.read(dense.model, dense.dim):
        new = ~np.isin(batch.ids, dense.chunk_ids())
        if new.any():
            dense.add(batch.vectors[new], batch.ids[new], batch.hashes[new])
            added = True
    return added


def _embed(dense: DenseIndex, encoded: Iterable[Encoded], total: int, path: Path, corpus: str,
           on_event: OnEvent, journal: Journal) -> int:
    done = read = 0
    # Said before the wait, with the count: a search may have to embed first.
    what = f"{total:,} chunks without vectors"
    on_event(Event("embed", 0, total, message=what, data={"missing": total, "corpus": corpus}))
    last_save = last_append = time.monotonic()
    save_cost = 0.0
    unsaved: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # not in the journal yet
    batches = iter(encoded)
    try:
        for part in batches:
            if len(part.owners):
                dense.add(part.vectors, part.owners, part.fingerprints)
                unsaved.append((part.vectors, part.owners, part.fingerprints))
            done += part.chunks
            read += part.read
            on_event(Event("embed", min(read, total), total, message=what,
                           data={"vectors": len(part.owners), "corpus": corpus}))
            now = time.monotonic()
            if now - last_save > max(CHECKPOINT_SECONDS, REWRITE_RATIO * save_cost):
                dense.save(path)
                _remember(path, dense)
                journal.discard()  # the file holds it all now
                unsaved.clear()
                last_save = last_append = time.monotonic()
                save_cost = last_save - now
            elif unsaved and now - last_append >= JOURNAL_RATIO * journal.last_cost:
                journal.append(np.concatenate([u[0] for u in unsaved]),
                               np.concatenate([u[1] for u in unsaved]),
                               np.concatenate([u[2] for u in unsaved]),
                               model=dense.model, dim=dense.dim)
                unsaved.clear()
                last_append = time.monotonic()
    finally:
        # A stopped sync stops the encoder too (a Ray pipeline's workers), not at exit.
        close = getattr(batches, "close", None)
        if close is not None:
            close()
    return done


def _sync_keyword(cid: int, path: Path, ids: np.ndarray, hashes: np.ndarray,
                  on_event: OnEvent) -> None:
    current = cached_keyword(path)
    if current is not None and in_step(current.ids, current.hashes, ids, hashes):
        return
    on_event(Event("keyword", 0, 1, message="rebuilding keyword index"))
    kw_ids, kw_hashes, texts = store_state.corpus_texts(cid)
    keyword = KeywordIndex.build(kw_ids, kw_hashes, texts)
    keyword.save(path)
    _remember(path, keyword)
    on_event(Event("keyword", 1, 1, message=f"{len(texts)} chunks"))


def status(corpus: str) -> dict[str, Any]:
    """How a corpus's indexes stand against the store (for `tomes` and the UI)."""
    cid = require_corpus(corpus)
    directory = corpus_dir(cid, corpus)
    ids, hashes = store_state.chunk_state(cid)
    dense = cached_dense(directory / DENSE_FILE, corpus)
    keyword = cached_keyword(directory / KEYWORD_FILE)
    info: dict[str, Any] = {"corpus": corpus, "chunks": int(len(ids)), "directory": str(directory)}
    if dense is None:
        info.update(dense_chunks=0, vectors=0, model=None, kind=None, missing=int(len(ids)), stale=0)
    else:
        index_ids, index_hashes = dense.chunk_hashes()
        info.update(
            dense_chunks=int(len(index_ids)), vectors=dense.ntotal, model=dense.model,
            dim=dense.dim, kind=dense.kind,
            missing=int((~np.isin(ids, index_ids)).sum()),
            stale=int(len(stale_ids(index_ids, index_hashes, ids, hashes))),
        )
    info["keyword_in_step"] = keyword is not None and in_step(keyword.ids, keyword.hashes, ids, hashes)
    return info
