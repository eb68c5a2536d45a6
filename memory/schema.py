"""The workspace's tables, in the same database as the documents (revision 0003).

Everything points back to the chunk it came from (``chunk_id``, ON DELETE CASCADE) and
the span in its document's text, so removing a document removes what came only from it.
Entities belong to a corpus and live as long as one of their mentions does: a trigger
(SQLite) and ``memory.workspace.prune`` (any database) delete an entity whose last
mention went with its document; one seen in several documents keeps the others.

Places are entities of kind ``place``: they get aliases, mentions and resolution like
people do, and events and states point at them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.store.models import Base, utcnow

KINDS = ("person", "place", "group", "object", "other")


class MemEntity(Base):
    __tablename__ = "memory_entities"
    __table_args__ = (Index("ix_memory_entities_corpus_norm", "corpus_id", "norm"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    corpus_id: Mapped[int] = mapped_column(ForeignKey("corpora.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))  # the name first seen
    norm: Mapped[str] = mapped_column(String(200))  # normalized name (the lookup key)
    kind: Mapped[str] = mapped_column(String(20), default="other")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class MemMention(Base):
    """A name of an entity as one chunk writes it: the entity's aliases are the
    distinct names of its mentions."""

    __tablename__ = "memory_mentions"

    id: Mapped[int] = mapped_column(primary_key=True)
    entity_id: Mapped[int] = mapped_column(
        ForeignKey("memory_entities.id", ondelete="CASCADE"), index=True)
    chunk_id: Mapped[int] = mapped_column(ForeignKey("chunks.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    norm: Mapped[str] = mapped_column(String(200))
    start: Mapped[int | None] = mapped_column(default=None)  # in the document's text
    end: Mapped[int | None] = mapped_column(default=None)
    # How the mention joined its entity: new, name, alias, token, fuzzy, embedding, model.
    via: Mapped[str] = mapped_column(String(20), default="new")


class MemState(Base):
    """A role (captain, clerk) or a state (married, ill, in prison) of an entity from
    one chunk on. Never overwritten: the history is the rows in document order."""

    __tablename__ = "memory_states"

    id: Mapped[int] = mapped_column(primary_key=True)
    entity_id: Mapped[int] = mapped_column(
        ForeignKey("memory_entities.id", ondelete="CASCADE"), index=True)
    chunk_id: Mapped[int] = mapped_column(ForeignKey("chunks.id", ondelete="CASCADE"), index=True)
    seq: Mapped[int] = mapped_column(default=0)  # order within the chunk
    attribute: Mapped[str] = mapped_column(String(20))  # "role" | "state"
    value: Mapped[str] = mapped_column(Text)
    time_text: Mapped[str | None] = mapped_column(Text, default=None)
    date: Mapped[str | None] = mapped_column(String(10), default=None)  # ISO, maybe partial
    place_id: Mapped[int | None] = mapped_column(
        ForeignKey("memory_entities.id", ondelete="SET NULL"), default=None)
    # Time and place not written in the chunk but carried forward from earlier ones.
    carried: Mapped[bool] = mapped_column(default=False)
    start: Mapped[int | None] = mapped_column(default=None)
    end: Mapped[int | None] = mapped_column(default=None)


class MemEvent(Base):
    __tablename__ = "memory_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    chunk_id: Mapped[int] = mapped_column(ForeignKey("chunks.id", ondelete="CASCADE"), index=True)
    seq: Mapped[int] = mapped_column(default=0)
    action: Mapped[str] = mapped_column(Text)
    time_text: Mapped[str | None] = mapped_column(Text, default=None)  # as written (or carried)
    date: Mapped[str | None] = mapped_column(String(10), default=None)  # parsed, ISO, maybe partial
    # A relative time ("two days later") keeps its text and what it is relative to.
    time_anchor: Mapped[str | None] = mapped_column(Text, default=None)
    time_carried: Mapped[bool] = mapped_column(default=False)
    place_text: Mapped[str | None] = mapped_column(Text, default=None)
    place_id: Mapped[int | None] = mapped_column(
        ForeignKey("memory_entities.id", ondelete="SET NULL"), default=None)
    place_carried: Mapped[bool] = mapped_column(default=False)
    start: Mapped[int | None] = mapped_column(default=None)
    end: Mapped[int | None] = mapped_column(default=None)


class MemActor(Base):
    __tablename__ = "memory_event_actors"

    event_id: Mapped[int] = mapped_column(
        ForeignKey("memory_events.id", ondelete="CASCADE"), primary_key=True)
    entity_id: Mapped[int] = mapped_column(
        ForeignKey("memory_entities.id", ondelete="CASCADE"), primary_key=True, index=True)


class MemQuestion(Base):
    """A question the text raises (who killed X?), with the answers found later."""

    __tablename__ = "memory_questions"

    id: Mapped[int] = mapped_column(primary_key=True)
    chunk_id: Mapped[int] = mapped_column(ForeignKey("chunks.id", ondelete="CASCADE"), index=True)
    question: Mapped[str] = mapped_column(Text)
    start: Mapped[int | None] = mapped_column(default=None)
    end: Mapped[int | None] = mapped_column(default=None)


class MemAnswer(Base):
    __tablename__ = "memory_answers"

    id: Mapped[int] = mapped_column(primary_key=True)
    question_id: Mapped[int] = mapped_column(
        ForeignKey("memory_questions.id", ondelete="CASCADE"), index=True)
    chunk_id: Mapped[int] = mapped_column(ForeignKey("chunks.id", ondelete="CASCADE"), index=True)
    answer: Mapped[str] = mapped_column(Text)
    start: Mapped[int | None] = mapped_column(default=None)
    end: Mapped[int | None] = mapped_column(default=None)


class MemExtraction(Base):
    """One chunk's operator output, kept once it is reconciled: a chunk with a row is
    finished and never read by the operator again (incremental builds)."""

    __tablename__ = "memory_extractions"

    chunk_id: Mapped[int] = mapped_column(
        ForeignKey("chunks.id", ondelete="CASCADE"), primary_key=True)
    parsed: Mapped[str] = mapped_column(String(20))  # json | retry | fallback
    record: Mapped[dict[str, Any]] = mapped_column(default=dict)
    model: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


TABLES = [MemEntity, MemMention, MemState, MemEvent, MemActor, MemQuestion, MemAnswer,
          MemExtraction]
