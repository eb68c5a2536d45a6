"""What a pipeline runs over: one document or one corpus, named the way users name them.

The API (``app.api``) and the Environment both resolve names here, so ``tomes show``,
``tomes ask`` and ``tomes resume`` agree on what "the book" means.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import NotFound, TomesError
from app.store import Corpus, Document


@dataclass(frozen=True)
class Target:
    kind: str  # "doc" | "corpus"
    key: str  # the document id (as text) or the corpus name
    title: str

    @property
    def label(self) -> str:
        """What Run.target stores; resolves back to the same target."""
        return f"{self.kind}:{self.key}"


def resolve_document(session: Session, ref: str | int) -> Document:
    """A document by id (``3`` or ``doc:3``), or by a title or file name that matches
    exactly one."""
    if isinstance(ref, str) and ref.startswith("doc:") and ref[4:].isdigit():
        ref = ref[4:]
    if isinstance(ref, int) or str(ref).isdigit():
        doc = session.get(Document, int(ref))
        if doc is None:
            raise NotFound(f"no document with id {ref}", "list documents with `tomes docs`")
        return doc
    text = str(ref)
    docs = _exact_documents(session, text)
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


def id_also_names(session: Session, ref: str | int) -> list[Document]:
    """Other documents titled or named ``ref`` when ``ref`` is read as an id ("3" is
    document 3, and also the title of another): the caller warns or refuses."""
    text = str(ref)
    if not text.isdigit():
        return []
    return [d for d in _exact_documents(session, text) if d.id != int(text)]


def resolve_target(session: Session, ref: str | int) -> Target:
    """A document (id, title, file name, ``doc:ID``) or a corpus (name, ``corpus:NAME``)."""
    text = str(ref).strip()
    if text.startswith("corpus:"):
        return _corpus_target(session, text.removeprefix("corpus:"))
    if text.startswith("doc:"):
        text = text.removeprefix("doc:")
    elif not text.isdigit():
        corpus = session.scalar(select(Corpus).where(Corpus.name == text))
        if corpus is not None:
            if _exact_documents(session, text):
                raise TomesError(
                    f"{text!r} names both a corpus and a document",
                    f"say which: corpus:{text} or doc:ID (ids from `tomes docs`)",
                )
            return _corpus_target(session, text)
    doc = resolve_document(session, text)
    return Target("doc", str(doc.id), doc.title)


def target_documents(session: Session, target: Target) -> list[Document]:
    if target.kind == "doc":
        doc = session.get(Document, int(target.key))
        if doc is None:
            raise NotFound(f"document {target.key} no longer exists", "list documents with `tomes docs`")
        return [doc]
    docs = list(session.scalars(
        select(Document).join(Corpus).where(Corpus.name == target.key).order_by(Document.id)
    ))
    if not docs:
        raise NotFound(f"corpus {target.key!r} has no documents", "add some with `tomes ingest PATH -c NAME`")
    return docs


def _exact_documents(session: Session, text: str) -> list[Document]:
    """Documents whose title, file name or file name without extension is ``text``."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    docs = session.scalars(select(Document).where(
        (Document.title == text)
        | Document.source.endswith("/" + text)
        | Document.source.like(f"%/{escaped}.%", escape="\\")
    ))
    return [
        d for d in docs
        if d.title == text or d.source.endswith("/" + text)
        or "/" not in d.source.rsplit("/" + text + ".", 1)[-1]
    ]


def _corpus_target(session: Session, name: str) -> Target:
    if session.scalar(select(Corpus.id).where(Corpus.name == name)) is None:
        raise NotFound(f"no corpus named {name!r}", "list corpora with `tomes docs`")
    return Target("corpus", name, name)
