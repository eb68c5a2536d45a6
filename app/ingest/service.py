"""Ingest: files -> Document and Chunk rows, one transaction per file.

A failure in one file never stops the others and never leaves half-written rows: each
file is read, chunked and written inside its own transaction. The tokenizer that
measures chunks is passed in, and embedding what was committed is the caller's next
step (app.api), so the core depends on nothing above it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from app.errors import IngestError, TomesError
from app.events import Event, OnEvent, ignore
from app.ingest.chunking import chunk_text
from app.ingest.readers import SUPPORTED_SUFFIXES, check_size, read_file
from app.settings import get_settings
from app.store import Chunk, Corpus, Document, session_scope
from app.tokens import Tokenizer


@dataclass
class Outcome:
    path: str
    status: str  # "added" | "updated" | "skipped" | "failed"
    document_id: int | None = None
    chunks: int = 0
    error: str | None = None
    # Stored, but not all of it could be read as it should: said at ingest, not found later.
    warnings: list[str] = field(default_factory=list)


@dataclass
class IngestReport:
    corpus: str
    outcomes: list[Outcome] = field(default_factory=list)
    embedded: int = 0  # chunks embedded and indexed

    def _with(self, status: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == status]

    @property
    def warnings(self) -> list[str]:
        return [w for o in self.outcomes for w in o.warnings]

    @property
    def added(self) -> list[Outcome]:
        return self._with("added")

    @property
    def updated(self) -> list[Outcome]:
        """Files whose content changed since they were ingested: the old version is gone."""
        return self._with("updated")

    @property
    def skipped(self) -> list[Outcome]:
        return self._with("skipped")

    @property
    def failed(self) -> list[Outcome]:
        return self._with("failed")


def expand(paths: list[Path]) -> tuple[list[Path], list[Outcome]]:
    """Files to ingest (directories walked, in a stable order) and paths that failed."""
    files: list[Path] = []
    missing: list[Outcome] = []
    for path in paths:
        if path.is_dir():
            files.extend(
                p for p in sorted(path.rglob("*"))
                if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
        elif path.is_file():
            files.append(path)
        else:
            missing.append(Outcome(str(path), "failed", error=f"{path}: no such file or directory. Check the path"))
    return files, missing


def corpus_id(session, name: str) -> int:
    """The corpus's id, created on first use. Concurrent first ingests into a new corpus
    race on this row: the unique name decides, and the loser reads the winner's row
    inside its own transaction (no check-then-insert)."""
    cid = _corpus_row(session, name)
    if cid is None:
        _insert_corpus(session, name)
        cid = _corpus_row(session, name)
    return cid


def _corpus_row(session, name: str) -> int | None:
    return session.scalar(select(Corpus.id).where(Corpus.name == name))


def _insert_corpus(session, name: str) -> None:
    dialect = session.get_bind().dialect.name
    if dialect in ("sqlite", "postgresql"):
        # INSERT ... ON CONFLICT DO NOTHING: atomic on both, and it keeps the corpus row in
        # the file's transaction. (A SAVEPOINT would not: pysqlite's RELEASE of an outermost
        # savepoint commits, so a file failing later would leave its corpus behind.)
        if dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert
        session.execute(insert(Corpus).values(name=name).on_conflict_do_nothing(
            index_elements=[Corpus.name]))
        return
    try:
        with session.begin_nested():
            session.add(Corpus(name=name))
    except IntegrityError:
        pass  # another process created it first: read its row


def ingest_file(path: Path, corpus: str, tokenizer: Tokenizer) -> Outcome:
    settings = get_settings()
    max_bytes = int(settings.max_file_mb * 1024 * 1024)
    try:
        # Refuse an oversized file before reading it all into memory.
        check_size(str(path), path.stat().st_size, max_bytes)
        raw = path.read_bytes()
    except OSError as exc:
        raise IngestError(str(path), f"cannot be read ({exc.strerror})", "check its permissions") from exc
    digest = hashlib.sha256(raw).hexdigest()
    existing = _stored(corpus, digest)
    if existing is not None:
        return Outcome(str(path), "skipped", document_id=existing)

    result = read_file(path, max_bytes=max_bytes, raw=raw)
    if not result.text.strip():
        raise IngestError(str(path), "has no text after reading", "check the file is not empty")
    spans = chunk_text(
        result.text,
        tokenizer,
        max_tokens=settings.chunk_tokens,
        overlap=settings.chunk_overlap,
        page_starts=result.page_starts,
    )
    source = str(path.resolve())
    try:
        return _store(path, corpus, source, digest, result, spans, tokenizer.name)
    except IntegrityError:
        # Another process stored the same content first (the unique corpus+hash
        # constraint decided the race): for this file, nothing changed.
        existing = _stored(corpus, digest)
        if existing is None:
            raise
        return Outcome(str(path), "skipped", document_id=existing)


def read_warnings(path: Path | str, meta: dict) -> list[str]:
    """What a reader could not read, in words (from the document's metadata)."""
    out = []
    empty = meta.get("pages_without_text") or []
    if empty:
        pages = ", ".join(map(str, empty[:12])) + (", ..." if len(empty) > 12 else "")
        out.append(f"{path}: {len(empty)} of {meta.get('pages', '?')} pages have no text "
                   f"(scanned images?): page {pages}. Run OCR on it (e.g. `ocrmypdf in.pdf "
                   "out.pdf`) and ingest the result to read them")
    if meta.get("pages_failed"):
        out.append(f"{path}: pages {', '.join(map(str, meta['pages_failed'][:12]))} could not "
                   "be read (damaged); the other pages are stored")
    replaced = meta.get("replaced_bytes")
    if replaced:
        first = ", ".join(f"{o:,}" for o in replaced["offsets"][:5])
        out.append(f"{path}: {replaced['count']} byte(s) are not valid {meta.get('encoding', 'UTF-8')} "
                   f"and were replaced with U+FFFD (at byte offset {first}"
                   + (", ..." if replaced["count"] > 5 else "") + "); the rest reads as UTF-8")
    return out


def _stored(corpus: str, digest: str) -> int | None:
    """The id of the document with this content in the corpus, if any. A lookup only: a
    file that then fails must not leave even an empty corpus."""
    with session_scope() as session:
        return session.scalar(
            select(Document.id).join(Corpus)
            .where(Corpus.name == corpus, Document.content_hash == digest)
        )


def _store(path, corpus, source, digest, result, spans, tokenizer_name) -> Outcome:
    with session_scope() as session:
        cid = corpus_id(session, corpus)
        # Same file, new content: the edited version replaces the old one (its chunks go
        # with it, in this same transaction; its vectors at the next index sync).
        # Only an older *content* of this file is replaced. The same content stored by a
        # concurrent ingest of this file stays, and the insert below then loses on the
        # unique corpus+hash constraint: "unchanged" here, not "updated".
        old = list(session.scalars(
            select(Document.id).where(Document.corpus_id == cid, Document.source == source,
                                      Document.content_hash != digest)
        ))
        if old:
            session.execute(delete(Chunk).where(Chunk.document_id.in_(old)))
            session.execute(delete(Document).where(Document.id.in_(old)))
        doc = Document(
            corpus_id=cid,
            title=result.title,
            source=source,
            format=result.format,
            text=result.text,
            n_chars=len(result.text),
            content_hash=digest,
            meta=result.meta,
            page_starts=result.page_starts,
            tokenizer=tokenizer_name,
        )
        doc.chunks = [
            Chunk(
                ordinal=i,
                start=s.start,
                end=s.end,
                text=result.text[s.start : s.end],
                page=s.page,
                n_tokens=s.n_tokens,
                content_hash=hashlib.sha256(result.text[s.start : s.end].encode()).hexdigest(),
                heading=s.heading,
            )
            for i, s in enumerate(spans)
        ]
        session.add(doc)
        session.flush()
        return Outcome(str(path), "updated" if old else "added", document_id=doc.id,
                       chunks=len(spans), warnings=read_warnings(path, result.meta or {}))


def ingest(
    paths: list[Path], corpus: str = "default", *, tokenizer: Tokenizer,
    on_event: OnEvent = ignore,
) -> IngestReport:
    files, missing = expand([Path(p) for p in paths])
    report = IngestReport(corpus=corpus, outcomes=list(missing))
    for i, path in enumerate(files):
        on_event(Event("read", i, len(files), message=path.name))
        try:
            report.outcomes.append(ingest_file(path, corpus, tokenizer))
        except IngestError as exc:
            report.outcomes.append(Outcome(str(path), "failed", error=str(exc)))
        except Exception as exc:  # noqa: BLE001 - one file's crash must not stop the rest
            report.outcomes.append(Outcome(
                str(path), "failed",
                error=f"{path}: could not be ingested ({type(exc).__name__}: {exc}). "
                      "Nothing of it was stored; please report this",
            ))
    on_event(Event("read", len(files), len(files)))
    return report


def document_of(path: Path, corpus: str, tokenizer: Tokenizer) -> int:
    """The id of ``path``'s document in ``corpus``, ingesting the file first if it is new
    (a batch item that names a file); a file that cannot be read is a TomesError."""
    outcome = ingest([path], corpus, tokenizer=tokenizer).outcomes[0]
    if outcome.document_id is None:
        raise TomesError(outcome.error or f"{path} could not be ingested",
                         "fix the file, or name an ingested document instead")
    return outcome.document_id
