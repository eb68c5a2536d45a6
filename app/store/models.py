"""The tables. Every schema change here needs an Alembic revision in migrations/versions
(tests/test_store.py fails when the models and the migrations disagree)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Corpus(Base):
    __tablename__ = "corpora"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    documents: Mapped[list[Document]] = relationship(
        back_populates="corpus", cascade="all, delete-orphan", passive_deletes=True
    )


class Document(Base):
    __tablename__ = "documents"
    __table_args__ = (UniqueConstraint("corpus_id", "content_hash"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    corpus_id: Mapped[int] = mapped_column(ForeignKey("corpora.id", ondelete="CASCADE"))
    title: Mapped[str] = mapped_column(String(500))
    source: Mapped[str] = mapped_column(Text)  # the path it was read from
    format: Mapped[str] = mapped_column(String(20))
    # The text pipelines read: boilerplate (licence headers, page furniture) is removed
    # and kept in meta["boilerplate"] instead.
    text: Mapped[str] = mapped_column(Text)
    # len(text), stored so listings need not load every book's text to measure it.
    n_chars: Mapped[int] = mapped_column(default=0)
    content_hash: Mapped[str] = mapped_column(String(64))
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Character offset where each page starts, for formats that have pages.
    page_starts: Mapped[list[Any] | None] = mapped_column(default=None)
    tokenizer: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    corpus: Mapped[Corpus] = relationship(back_populates="documents")
    chunks: Mapped[list[Chunk]] = relationship(
        back_populates="document",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="Chunk.ordinal",
    )


class Chunk(Base):
    __tablename__ = "chunks"
    __table_args__ = (Index("ix_chunks_document_ordinal", "document_id", "ordinal"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    document_id: Mapped[int] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"))
    ordinal: Mapped[int]
    start: Mapped[int]  # document.text[start:end] == text, always
    end: Mapped[int]
    text: Mapped[str] = mapped_column(Text)
    page: Mapped[int | None] = mapped_column(default=None)  # 1-based
    n_tokens: Mapped[int]
    content_hash: Mapped[str] = mapped_column(String(64), index=True)
    heading: Mapped[str | None] = mapped_column(Text, default=None)

    document: Mapped[Document] = relationship(back_populates="chunks")


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    pipeline: Mapped[str] = mapped_column(String(50))
    target: Mapped[str] = mapped_column(Text)  # "doc:12" or "corpus:name"
    question: Mapped[str | None] = mapped_column(Text, default=None)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(20), default="running")
    answer: Mapped[str | None] = mapped_column(Text, default=None)
    result: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    # The lease of the process working on the run: one resumer at a time, and a run
    # whose owner is gone shows as interrupted instead of running forever.
    owner_pid: Mapped[int | None] = mapped_column(default=None)
    owner_host: Mapped[str | None] = mapped_column(String(255), default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)


class Call(Base):
    """One model call. parent_id makes the calls of a run a tree."""

    __tablename__ = "calls"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[str | None] = mapped_column(String(36), index=True, default=None)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("calls.id"), default=None)
    node: Mapped[str | None] = mapped_column(String(100), default=None)
    backend: Mapped[str] = mapped_column(String(50))
    model: Mapped[str] = mapped_column(String(200))
    messages: Mapped[list[Any]] = mapped_column()
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    response: Mapped[str | None] = mapped_column(Text, default=None)
    prompt_tokens: Mapped[int] = mapped_column(default=0)
    completion_tokens: Mapped[int] = mapped_column(default=0)
    # Of prompt_tokens, those served from the server's prefix cache (where it says).
    cached_tokens: Mapped[int] = mapped_column(default=0)
    latency_ms: Mapped[float] = mapped_column(default=0.0)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    cache_hit: Mapped[bool] = mapped_column(default=False)
    cache_key: Mapped[str | None] = mapped_column(String(64), index=True, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
