"""The Python API: the one place the CLI and the UI call. Neither holds logic of its own.

    from app.api import Tomes
    tomes = Tomes()                      # settings from TOMES_* and defaults
    tomes.ingest(["book.txt"], corpus="books")
    result = tomes.summarize("book")     # answer, provenance, run id, calls, tokens
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import delete, func, select

from app import settings as _settings
from app.errors import NotFound
from app.events import OnEvent, ignore
from app.ingest.service import IngestReport, ingest
from app.store import Call, Chunk, Corpus, Document, Run, session_scope

F = TypeVar("F", bound=Callable[..., Any])


def _scoped(method: F) -> F:
    """Run the method under this Tomes object's settings."""

    @functools.wraps(method)
    def wrapper(self: Tomes, *args: Any, **kwargs: Any) -> Any:
        with _settings.override(**self._changes):
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class Tomes:
    def __init__(self, **changes: Any) -> None:
        """``changes`` are settings for this object only (home=, backend=, model=, ...)."""
        self._changes = {k: v for k, v in changes.items() if v is not None}

    @property
    def settings(self) -> _settings.Settings:
        with _settings.override(**self._changes) as s:
            return s

    # --- documents -------------------------------------------------------------------

    @_scoped
    def ingest(
        self, paths: Sequence[str | Path], corpus: str = "default", *,
        embed: bool | None = None, on_event: OnEvent = ignore,
    ) -> IngestReport:
        return ingest([Path(p) for p in paths], corpus, embed=embed, on_event=on_event)

    @_scoped
    def documents(self, corpus: str | None = None) -> list[dict[str, Any]]:
        with session_scope() as s:
            query = (
                select(Document, Corpus.name, func.count(Chunk.id), func.sum(Chunk.n_tokens))
                .join(Corpus)
                .outerjoin(Chunk)
                .group_by(Document.id)
                .order_by(Document.id)
            )
            if corpus:
                query = query.where(Corpus.name == corpus)
            return [
                _doc_info(doc, corpus_name, n, tokens or 0)
                for doc, corpus_name, n, tokens in s.execute(query)
            ]

    @_scoped
    def document(self, ref: str | int, *, with_chunks: bool = True) -> dict[str, Any]:
        with session_scope() as s:
            doc = _resolve_document(s, ref)
            info = _doc_info(doc, doc.corpus.name, len(doc.chunks), sum(c.n_tokens for c in doc.chunks))
            info["meta"] = doc.meta
            if with_chunks:
                info["chunks"] = [
                    {"id": c.id, "ordinal": c.ordinal, "start": c.start, "end": c.end,
                     "page": c.page, "tokens": c.n_tokens, "heading": c.heading, "text": c.text}
                    for c in doc.chunks
                ]
            return info

    @_scoped
    def remove(self, ref: str | int) -> dict[str, Any]:
        with session_scope() as s:
            doc = _resolve_document(s, ref)
            info = _doc_info(doc, doc.corpus.name, len(doc.chunks), 0)
            s.execute(delete(Chunk).where(Chunk.document_id == doc.id))
            s.delete(doc)
        from retrieval import sync_corpus

        # Drops the removed chunks' vectors (and repairs anything else out of step).
        sync_corpus(info["corpus"], embed_missing=False)
        return info

    @_scoped
    def corpora(self) -> list[str]:
        with session_scope() as s:
            return list(s.scalars(select(Corpus.name).order_by(Corpus.name)))

    # --- runs and calls --------------------------------------------------------------

    @_scoped
    def runs(self, limit: int = 50) -> list[dict[str, Any]]:
        with session_scope() as s:
            rows = s.scalars(select(Run).order_by(Run.created_at.desc()).limit(limit))
            return [_run_info(r) for r in rows]

    @_scoped
    def calls(self, run_id: str) -> list[dict[str, Any]]:
        with session_scope() as s:
            rows = s.scalars(select(Call).where(Call.run_id == run_id).order_by(Call.id))
            return [
                {c.name: getattr(call, c.name) for c in Call.__table__.columns}
                for call in rows
            ]


def _doc_info(doc: Document, corpus: str, n_chunks: int, tokens: int) -> dict[str, Any]:
    return {
        "id": doc.id, "title": doc.title, "corpus": corpus, "format": doc.format,
        "source": doc.source, "chars": len(doc.text), "chunks": n_chunks, "tokens": tokens,
        "pages": len(doc.page_starts) if doc.page_starts else None,
        "created_at": doc.created_at.isoformat(timespec="seconds"),
    }


def _run_info(run: Run) -> dict[str, Any]:
    return {
        "id": run.id, "pipeline": run.pipeline, "target": run.target, "question": run.question,
        "status": run.status, "answer": run.answer, "error": run.error,
        "created_at": run.created_at.isoformat(timespec="seconds"),
    }


def _resolve_document(session, ref: str | int) -> Document:
    """A document by id, or by a title or file name that matches exactly one."""
    if isinstance(ref, int) or str(ref).isdigit():
        doc = session.get(Document, int(ref))
        if doc is None:
            raise NotFound(f"no document with id {ref}", "list documents with `tomes docs`")
        return doc
    text = str(ref)
    docs = list(session.scalars(select(Document).where(
        (Document.title == text) | Document.source.endswith("/" + text)
    )))
    if not docs:
        docs = list(session.scalars(select(Document).where(
            Document.title.icontains(text) | Document.source.icontains(text)
        )))
    if len(docs) == 1:
        return docs[0]
    if not docs:
        raise NotFound(f"no document matches {text!r}", "list documents with `tomes docs`")
    ids = ", ".join(f"{d.id} ({d.title})" for d in docs[:10])
    raise NotFound(f"{text!r} matches {len(docs)} documents: {ids}", "name one by its id")
