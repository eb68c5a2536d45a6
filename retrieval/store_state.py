"""What the store says a corpus holds: the reference the indexes are synced against."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np
from sqlalchemy import func, select

from app.store import Chunk, Corpus, Document, session_scope


def fingerprint(content_hash: str) -> int:
    """A chunk's content hash as a signed int64 (numpy-friendly). Two chunks that reuse
    one id (SQLite reuses the highest freed rowid) differ here unless their text is
    the same, in which case the old vector is still right."""
    try:
        return int(content_hash[:16], 16) - (1 << 63)
    except ValueError:
        return int.from_bytes(hashlib.blake2b(content_hash.encode(), digest_size=8).digest(),
                              "little", signed=True)


def corpus_id(name: str) -> int | None:
    with session_scope() as s:
        return s.scalar(select(Corpus.id).where(Corpus.name == name))


def quick_signature(cid: int) -> tuple[int, int, float]:
    """(count, max id, sum of ids) of a corpus's chunks: read from an index alone, so
    cheap on every search (14 ms at 100k chunks, where the full state takes ~0.5 s).
    It changes with any chunk added or removed; only a crash-orphaned id reused by
    another chunk in another process can slip past it, and the next full check (every
    sync, and the first search of each process) catches that."""
    with session_scope() as s:
        row = s.execute(
            select(func.count(Chunk.id), func.coalesce(func.max(Chunk.id), 0),
                   func.coalesce(func.sum(Chunk.id), 0))  # SQLite's total() is not PostgreSQL's
            .join(Document, Chunk.document_id == Document.id)
            .where(Document.corpus_id == cid)
        ).one()
    return int(row[0]), int(row[1]), float(row[2])


def chunk_state(cid: int) -> tuple[np.ndarray, np.ndarray]:
    """(chunk ids sorted, their content fingerprints) for one corpus."""
    with session_scope() as s:
        rows = s.execute(
            select(Chunk.id, Chunk.content_hash)
            .join(Document, Chunk.document_id == Document.id)
            .where(Document.corpus_id == cid)
            .order_by(Chunk.id)
        ).all()
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    hashes = np.fromiter((fingerprint(r[1]) for r in rows), dtype=np.int64, count=len(rows))
    return ids, hashes


def chunk_texts(ids: Iterable[int]) -> list[tuple[int, str, int]]:
    """(id, text, fingerprint) of these chunks, in id order; ids gone meanwhile are absent."""
    ids = [int(i) for i in ids]
    out: list[tuple[int, str, int]] = []
    with session_scope() as s:
        # SQLite caps bound parameters; stay well below the limit.
        for start in range(0, len(ids), 900):
            rows = s.execute(
                select(Chunk.id, Chunk.text, Chunk.content_hash)
                .where(Chunk.id.in_(ids[start : start + 900]))
            ).all()
            out.extend((r[0], r[1], fingerprint(r[2])) for r in rows)
    out.sort()
    return out


def corpus_texts(cid: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every chunk of a corpus in id order: ids, fingerprints, texts (one query)."""
    with session_scope() as s:
        rows = s.execute(
            select(Chunk.id, Chunk.content_hash, Chunk.text)
            .join(Document, Chunk.document_id == Document.id)
            .where(Document.corpus_id == cid)
            .order_by(Chunk.id)
        ).all()
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    hashes = np.array([fingerprint(r[1]) for r in rows], dtype=np.int64)
    return ids, hashes, [r[2] for r in rows]


def document_chunk_ids(cid: int, document_id: int) -> np.ndarray | None:
    """Chunk ids of one document of the corpus, or None if the corpus has no such document."""
    with session_scope() as s:
        found = s.scalar(select(Document.id).where(Document.id == document_id,
                                                   Document.corpus_id == cid))
        if found is None:
            return None
        ids = s.scalars(select(Chunk.id).where(Chunk.document_id == document_id)).all()
    return np.array(sorted(ids), dtype=np.int64)


def hit_rows(ids: list[int]) -> dict[int, dict]:
    """What a search hit shows about each chunk."""
    if not ids:
        return {}
    out: dict[int, dict] = {}
    with session_scope() as s:
        for start in range(0, len(ids), 900):
            rows = s.execute(
                select(Chunk.id, Chunk.document_id, Document.title, Chunk.start, Chunk.end,
                       Chunk.page, Chunk.text, Chunk.heading, Chunk.ordinal)
                .join(Document, Chunk.document_id == Document.id)
                .where(Chunk.id.in_(ids[start : start + 900]))
            ).all()
            for r in rows:
                out[r[0]] = {"chunk_id": r[0], "document_id": r[1], "title": r[2], "start": r[3],
                             "end": r[4], "page": r[5], "text": r[6], "heading": r[7],
                             "ordinal": r[8]}
    return out
