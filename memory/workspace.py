"""Reading the workspace: one document's, or the merged view of a corpus.

The corpus holds the entities; a document's workspace is what its own chunks say of
them (its mentions, states and events), the corpus view is all of it. Everything read
here carries its chunk, document and span, in document order.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import func, select

from app.store import Chunk, Document
from memory import _dates
from memory.schema import (MemActor, MemAnswer, MemEntity, MemEvent, MemExtraction, MemMention,
                           MemQuestion, MemState)


@dataclass
class Source:
    chunk_id: int
    document_id: int
    ordinal: int
    start: int | None  # the item's span in the document's text, when found
    end: int | None

    @property
    def order(self) -> tuple[int, int]:
        return (self.document_id, self.ordinal)


@dataclass
class EntityView:
    id: int
    name: str
    kind: str
    aliases: list[str]
    mentions: int
    chunks: list[int]
    first: tuple[int, int]  # (document, ordinal) of its first mention


@dataclass
class StateView:
    id: int
    entity_id: int
    attribute: str
    value: str
    time_text: str | None
    date: str | None
    place_id: int | None
    place: str | None
    carried: bool
    seq: int
    source: Source


@dataclass
class EventView:
    id: int
    action: str
    actors: list[int]
    time_text: str | None
    date: str | None
    time_anchor: str | None
    time_carried: bool
    place_id: int | None
    place: str | None
    place_carried: bool
    seq: int
    source: Source


@dataclass
class QuestionView:
    id: int
    question: str
    source: Source
    answers: list[tuple[str, Source]] = field(default_factory=list)


@dataclass
class Workspace:
    corpus_id: int | None
    document_ids: list[int]
    chunks: int  # chunks of these documents
    extracted: int  # of which the workspace has read
    entities: dict[int, EntityView]
    states: list[StateView]
    events: list[EventView]
    questions: list[QuestionView]

    @property
    def complete(self) -> bool:
        return self.chunks > 0 and self.extracted >= self.chunks

    @property
    def places(self) -> list[EntityView]:
        return [e for e in self.entities.values() if e.kind == "place"]

    def counts(self) -> dict[str, int]:
        return {
            "chunks": self.chunks, "chunks_read": self.extracted,
            "entities": sum(1 for e in self.entities.values() if e.kind != "place"),
            "places": len(self.places), "states": len(self.states), "events": len(self.events),
            "questions": len(self.questions),
            "answered": sum(1 for q in self.questions if q.answers),
        }

    def top_entities(self, n: int = 10, *, places: bool = False) -> list[EntityView]:
        pool = [e for e in self.entities.values() if (e.kind == "place") == places]
        return sorted(pool, key=lambda e: (-e.mentions, e.first, e.id))[:n]

    def name(self, entity_id: int | None) -> str:
        if entity_id is None:
            return ""
        entity = self.entities.get(entity_id)
        return entity.name if entity else ""

    def find(self, name: str) -> list[EntityView]:
        """Entities called ``name`` (any alias; else a part of one), most mentioned first."""
        from memory._text import core, name_tokens, norm

        key, bare = norm(name), core(name)
        exact = [e for e in self.entities.values()
                 if key in {norm(a) for a in e.aliases} or bare in {core(a) for a in e.aliases}]
        if not exact:
            tokens = name_tokens(name)
            exact = [e for e in self.entities.values()
                     if tokens and any(tokens <= name_tokens(a) for a in e.aliases)]
        return sorted(exact, key=lambda e: (-e.mentions, e.id))

    def timeline(self, entity_id: int) -> list[dict[str, Any]]:
        """The entity's roles, states and events in document order: what it was and did,
        when and where. Consecutive repeats of one role or state are shown once."""
        items: list[tuple[tuple[int, int, int, int], dict[str, Any]]] = []
        last: dict[str, str] = {}
        for st in self.states:
            if st.entity_id != entity_id:
                continue
            key = st.value.lower()
            if last.get(st.attribute) == key:
                continue
            last[st.attribute] = key
            items.append(((*st.source.order, 1, st.seq), {
                "type": st.attribute, "text": st.value, **_when_where(st), **_src(st.source)}))
        for ev in self.events:
            if entity_id not in ev.actors and ev.place_id != entity_id:
                continue
            others = [self.name(a) for a in ev.actors if a != entity_id]
            items.append(((*ev.source.order, 0, ev.seq), {
                "type": "event", "text": ev.action, "with": [o for o in others if o],
                **_when_where(ev), **_src(ev.source)}))
        return [item for _k, item in sorted(items, key=lambda p: p[0])]

    def to_dict(self, *, top: int = 10) -> dict[str, Any]:
        return {
            "corpus_id": self.corpus_id, "documents": self.document_ids, "complete": self.complete,
            "counts": self.counts(),
            "top_entities": [_entity_dict(e) for e in self.top_entities(top)],
            "top_places": [_entity_dict(e) for e in self.top_entities(top, places=True)],
        }


def _entity_dict(e: EntityView) -> dict[str, Any]:
    return {"id": e.id, "name": e.name, "kind": e.kind, "aliases": e.aliases,
            "mentions": e.mentions, "chunks": len(e.chunks)}


def _when_where(item: StateView | EventView) -> dict[str, Any]:
    carried = item.carried if isinstance(item, StateView) else item.time_carried
    out = {"time": item.time_text or "", "date": item.date, "place": item.place or "",
           "time_carried": bool(carried),
           "place_carried": bool(item.carried if isinstance(item, StateView) else item.place_carried)}
    if isinstance(item, EventView) and item.time_anchor:
        out["time_anchor"] = item.time_anchor
    return out


def _src(source: Source) -> dict[str, Any]:
    return asdict(source)


def load(session: Any, document_ids: list[int]) -> Workspace:
    """The workspace of these documents (one: a document's; all of a corpus: its
    merged view). Entities are those the documents mention."""
    docs = list(session.execute(select(Document.id, Document.corpus_id)
                                .where(Document.id.in_(document_ids))))
    corpus_ids = {c for _d, c in docs}
    corpus_id = corpus_ids.pop() if len(corpus_ids) == 1 else None
    chunk_rows = {cid: (doc, ordinal) for cid, doc, ordinal in session.execute(
        select(Chunk.id, Chunk.document_id, Chunk.ordinal).where(Chunk.document_id.in_(document_ids)))}
    in_docs = select(Chunk.id).where(Chunk.document_id.in_(document_ids))
    extracted = session.scalar(select(func.count()).select_from(MemExtraction)
                               .where(MemExtraction.chunk_id.in_(in_docs))) or 0

    def source(chunk_id: int, start: int | None, end: int | None) -> Source:
        doc, ordinal = chunk_rows[chunk_id]
        return Source(chunk_id, doc, ordinal, start, end)

    names: dict[int, dict[str, int]] = {}
    chunks_of: dict[int, list[int]] = {}
    first: dict[int, tuple[int, int]] = {}
    for entity_id, name, chunk_id in session.execute(
            select(MemMention.entity_id, MemMention.name, MemMention.chunk_id)
            .where(MemMention.chunk_id.in_(in_docs)).order_by(MemMention.id)):
        counts = names.setdefault(entity_id, {})
        counts[name] = counts.get(name, 0) + 1
        if chunk_id not in chunks_of.setdefault(entity_id, []):
            chunks_of[entity_id].append(chunk_id)
        order = chunk_rows[chunk_id]
        first[entity_id] = min(first.get(entity_id, order), order)
    entities: dict[int, EntityView] = {}
    for row in session.scalars(select(MemEntity).where(MemEntity.id.in_(list(names)))):
        seen = names[row.id]
        # The first name seen, unless only other documents wrote it: then the most used.
        display = row.name if row.name in seen else max(seen, key=lambda n: (seen[n], -len(n)))
        aliases = [display] + sorted((n for n in seen if n != display), key=lambda n: (-seen[n], n))
        entities[row.id] = EntityView(row.id, display, row.kind, aliases, sum(seen.values()),
                                      sorted(chunks_of[row.id], key=lambda c: chunk_rows[c]),
                                      first[row.id])

    def place_name(place_id: int | None) -> str | None:
        return entities[place_id].name if place_id in entities else None

    states = [
        StateView(st.id, st.entity_id, st.attribute, st.value, st.time_text, st.date,
                  st.place_id, place_name(st.place_id), st.carried, st.seq,
                  source(st.chunk_id, st.start, st.end))
        for st in session.scalars(select(MemState).where(MemState.chunk_id.in_(in_docs)))
        if st.entity_id in entities
    ]
    states.sort(key=lambda s: (*s.source.order, s.seq))
    actors: dict[int, list[int]] = {}
    events_rows = list(session.scalars(select(MemEvent).where(MemEvent.chunk_id.in_(in_docs))))
    for event_id, entity_id in session.execute(
            select(MemActor.event_id, MemActor.entity_id)
            .where(MemActor.event_id.in_([e.id for e in events_rows]))):
        actors.setdefault(event_id, []).append(entity_id)
    events = [
        EventView(ev.id, ev.action, [a for a in actors.get(ev.id, []) if a in entities],
                  ev.time_text, ev.date, ev.time_anchor, ev.time_carried, ev.place_id,
                  place_name(ev.place_id) or ev.place_text, ev.place_carried, ev.seq,
                  source(ev.chunk_id, ev.start, ev.end))
        for ev in events_rows
    ]
    events.sort(key=lambda e: (*e.source.order, e.seq))
    questions = {
        q.id: QuestionView(q.id, q.question, source(q.chunk_id, q.start, q.end))
        for q in session.scalars(select(MemQuestion).where(MemQuestion.chunk_id.in_(in_docs)))
    }
    for a in session.scalars(select(MemAnswer).where(MemAnswer.chunk_id.in_(in_docs))
                             .order_by(MemAnswer.id)):
        if a.question_id in questions:
            questions[a.question_id].answers.append((a.answer, source(a.chunk_id, a.start, a.end)))
    ordered = sorted(questions.values(), key=lambda q: q.source.order)
    return Workspace(corpus_id, sorted(document_ids), len(chunk_rows), extracted, entities,
                     states, events, ordered)


def describe_time(item: StateView | EventView) -> str:
    text = item.time_text or ""
    if item.date and _dates.pretty(item.date) not in text:
        text = f"{text} ({item.date})" if text else item.date
    return text
