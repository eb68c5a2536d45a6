"""The reconciler: operator records merged into the corpus's workspace, in document order.

Per chunk: its entities are resolved against the workspace (``memory.resolve``), each
name becomes a mention of its entity; events link their actors with a time and a place;
roles and states become new rows of the entity's history (never an overwrite); a chunk
that leaves time or place implicit gets the last ones of its document, marked carried;
a relative time ("two days later") keeps its text and the time it counts from.

Incremental: a chunk with an extraction row is finished. Each document is reconciled in
one transaction together with its chunks' extraction rows, so a run stopped half-way
redoes at most the document it was in, and adding a document touches only its chunks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rapidfuzz import fuzz
from sqlalchemy import delete, exists, select, update

from app.store import Chunk, Document, session_scope
from memory import _dates
from memory._text import locate, norm
from memory.resolve import Embed, Resolver, Verify, load
from memory.schema import (MemActor, MemAnswer, MemEntity, MemEvent, MemExtraction, MemMention,
                           MemQuestion, MemState)

QUESTION_SAME = 85  # rapidfuzz ratio above which two questions are one


@dataclass
class Carry:
    """What the story last said about when and where, carried into chunks that do not."""

    time_text: str | None = None
    date: str | None = None
    place_id: int | None = None


@dataclass
class Stats:
    chunks: int = 0
    documents: int = 0
    entities: int = 0  # new ones
    mentions: int = 0
    merges: dict[str, int] = field(default_factory=dict)  # how mentions joined known entities
    states: int = 0
    events: int = 0
    questions: int = 0
    answers: int = 0
    dropped: int = 0  # items the operator wrote that were not usable
    verify_calls: int = 0
    skipped: int = 0  # chunks already reconciled

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def pending(chunk_ids: list[int]) -> list[int]:
    """The chunks among ``chunk_ids`` that the workspace has not read yet."""
    if not chunk_ids:
        return []
    with session_scope() as s:
        done = set()
        for i in range(0, len(chunk_ids), 500):
            part = chunk_ids[i:i + 500]
            done |= set(s.scalars(select(MemExtraction.chunk_id).where(MemExtraction.chunk_id.in_(part))))
    return [c for c in chunk_ids if c not in done]


async def reconcile(records: list[dict[str, Any]], *, embed: Embed | None = None,
                    verify: Verify | None = None, model: str = "",
                    on_progress: Callable[[int, int], None] | None = None) -> Stats:
    """Merge the operator's records (one per chunk, any order) into the workspace."""
    stats = Stats()
    by_chunk = {r["chunk_id"]: r for r in records}
    with session_scope() as s:
        rows = s.execute(select(Chunk.id, Chunk.document_id, Chunk.ordinal, Document.corpus_id)
                         .join(Document, Document.id == Chunk.document_id)
                         .where(Chunk.id.in_(list(by_chunk)))).all()
    documents: dict[int, list[tuple[int, int]]] = {}
    corpus_of: dict[int, int] = {}
    for chunk_id, document_id, ordinal, corpus_id in rows:
        documents.setdefault(document_id, []).append((ordinal, chunk_id))
        corpus_of[document_id] = corpus_id
    stats.skipped += len(by_chunk) - len(rows)  # chunks gone since they were read
    resolvers: dict[int, Resolver] = {}
    done = 0
    total = len(rows)
    for document_id in sorted(documents):
        chunks = [c for _o, c in sorted(documents[document_id])]
        corpus_id = corpus_of[document_id]
        with session_scope() as s:
            resolver = resolvers.get(corpus_id)
            if resolver is None:
                resolver = resolvers[corpus_id] = load(s, corpus_id, Resolver(embed, verify))
            try:
                fresh = set(pending(chunks))
                todo = [c for c in chunks if c in fresh]
                stats.skipped += len(chunks) - len(todo)
                if todo:
                    job = _Document(s, resolver, corpus_id, document_id, todo, stats)
                    for chunk_id in todo:
                        job.chunk(by_chunk[chunk_id])
                        s.add(MemExtraction(chunk_id=chunk_id, parsed=by_chunk[chunk_id].get("parsed", "json"),
                                            record=_stored(by_chunk[chunk_id]), model=model))
                        done += 1
                        if on_progress:
                            on_progress(done, total)
                    stats.documents += 1
                prune(s, corpus_id)
            except BaseException:
                resolvers.pop(corpus_id, None)  # its in-memory index saw rows now rolled back
                raise
        if todo and job.pending:
            await _verify(job.pending, resolver, stats)
    return stats


async def _verify(pending: list[tuple[int, str, str, list[int]]], resolver: Resolver,
                  stats: Stats) -> None:
    """Names left new because they only might be a known entity: the model decides, and
    a yes merges the new entity into the known one (its own transaction)."""
    for new_id, name, about, candidates in pending:
        if new_id not in resolver.known:
            continue  # merged already through an alias
        candidates = [c for c in candidates if c != new_id and c in resolver.known]
        same = await resolver.ask(name, about, candidates)
        stats.verify_calls += _asked(candidates, same)
        if same is not None:
            with session_scope() as s:
                merge(s, resolver, keep=same, gone=new_id)
            stats.entities -= 1
            stats.merges["model"] = stats.merges.get("model", 0) + 1


def _asked(candidates: list[int], same: int | None) -> int:
    return candidates.index(same) + 1 if same is not None else len(candidates)


def merge(s: Any, resolver: Resolver, *, keep: int, gone: int) -> None:
    """Two entities proved one: ``gone``'s mentions, states and events become ``keep``'s."""
    if gone == keep or gone not in resolver.known or keep not in resolver.known:
        return
    s.flush()
    both = select(MemActor.event_id).where(MemActor.entity_id == keep)
    s.execute(delete(MemActor).where(MemActor.entity_id == gone, MemActor.event_id.in_(both)))
    for table, column in ((MemActor, MemActor.entity_id), (MemMention, MemMention.entity_id),
                          (MemState, MemState.entity_id), (MemState, MemState.place_id),
                          (MemEvent, MemEvent.place_id)):
        s.execute(update(table).where(column == gone).values({column.key: keep})
                  .execution_options(synchronize_session=False))
    s.execute(delete(MemEntity).where(MemEntity.id == gone))
    resolver.absorb(keep, gone)


def _stored(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in ("chunk_id", "parsed")}


def prune(session: Any, corpus_id: int | None = None) -> int:
    """Delete entities none of whose mentions is left (on SQLite a trigger does it as
    mentions go; this covers other databases and rows from before the trigger)."""
    orphan = ~exists().where(MemMention.entity_id == MemEntity.id)
    query = delete(MemEntity).where(orphan)
    if corpus_id is not None:
        query = query.where(MemEntity.corpus_id == corpus_id)
    return session.execute(query.execution_options(synchronize_session=False)).rowcount or 0


class _Document:
    """Reconciling one document's new chunks, in order, inside one session."""

    def __init__(self, session: Any, resolver: Resolver, corpus_id: int, document_id: int,
                 chunk_ids: list[int], stats: Stats) -> None:
        self.s = session
        self.resolver = resolver
        self.corpus_id = corpus_id
        self.stats = stats
        self.chunks = {c.id: c for c in session.scalars(select(Chunk).where(Chunk.id.in_(chunk_ids)))}
        first = min(self.chunks[c].ordinal for c in chunk_ids)
        self.carry = self._carry_before(document_id, first)
        self._open: list[tuple[int, str]] | None = None
        # New entities that might be known ones: (id, name, what the chunk says, candidates).
        self.pending: list[tuple[int, str, str, list[int]]] = []

    def _carry_before(self, document_id: int, ordinal: int) -> Carry:
        """Time and place as the document's already reconciled chunks left them."""
        carry = Carry()
        last_time = self.s.execute(
            select(MemEvent.time_text, MemEvent.date).join(Chunk, Chunk.id == MemEvent.chunk_id)
            .where(Chunk.document_id == document_id, Chunk.ordinal < ordinal,
                   MemEvent.time_text.is_not(None))
            .order_by(Chunk.ordinal.desc(), MemEvent.seq.desc()).limit(1)).first()
        if last_time:
            carry.time_text, carry.date = last_time
        last_place = self.s.scalar(
            select(MemEvent.place_id).join(Chunk, Chunk.id == MemEvent.chunk_id)
            .where(Chunk.document_id == document_id, Chunk.ordinal < ordinal,
                   MemEvent.place_id.is_not(None))
            .order_by(Chunk.ordinal.desc(), MemEvent.seq.desc()).limit(1))
        carry.place_id = last_place
        return carry

    def chunk(self, record: dict[str, Any]) -> None:
        chunk = self.chunks[record["chunk_id"]]
        self.stats.chunks += 1
        self.stats.dropped += int(record.get("dropped") or 0)
        local: dict[str, int] = {}  # normalized name -> entity, within this chunk
        kinds = {norm(e["name"]): e.get("kind", "other") for e in record.get("entities", [])}

        def entity(name: str, kind: str | None = None, aliases: list[str] = (),  # type: ignore[assignment]
                         span: tuple[int | None, int | None] = (None, None)) -> int:
            key = norm(name)
            if key in local:
                return local[key]
            kind = kind or kinds.get(key, "other")
            sentence = _sentence(chunk, span)
            about = f"kind: {kind}\n{sentence}"
            match = self.resolver.resolve(name, kind, list(aliases), about=about)
            if match.id is None:
                row = MemEntity(corpus_id=self.corpus_id, name=name, norm=key, kind=kind)
                self.s.add(row)
                self.s.flush()
                self.resolver.add(row.id, name, kind)
                entity_id, via = row.id, "new"
                self.stats.entities += 1
                if match.maybe:
                    self.pending.append((row.id, name, about, match.maybe))
            else:
                entity_id, via = match.id, match.via
                self.stats.merges[via] = self.stats.merges.get(via, 0) + 1
                known = self.resolver.known[entity_id]
                if known.kind == "other" and kind != "other":
                    known.kind = kind
                    self.s.execute(update(MemEntity).where(MemEntity.id == entity_id).values(kind=kind))
                for other in match.also:
                    self._merge(entity_id, other)
                    self.stats.merges["alias"] = self.stats.merges.get("alias", 0) + 1
            for written in [name, *aliases]:
                self._mention(entity_id, written, chunk, via if written == name else "alias")
                local[norm(written)] = entity_id
            return entity_id

        for e in record.get("entities", []):
            entity(e["name"], e.get("kind") or "other", e.get("aliases") or [],
                         (e.get("start"), e.get("end")))

        explicit_time = explicit_place = False
        for seq, ev in enumerate(record.get("events", [])):
            actors = [entity(a) for a in ev["actors"]]
            actors = list(dict.fromkeys(actors))
            row = MemEvent(chunk_id=chunk.id, seq=seq, action=ev["action"],
                           start=ev.get("start"), end=ev.get("end"))
            if ev.get("place"):
                row.place_id = entity(ev["place"], "place")
                row.place_text = ev["place"]
                self.carry.place_id = row.place_id
                explicit_place = True
            elif self.carry.place_id is not None and self.carry.place_id in self.resolver.known:
                row.place_id, row.place_carried = self.carry.place_id, True
                row.place_text = self.resolver.known[row.place_id].name
            when = _dates.parse(ev.get("time"))
            if when is not None and when.date and not when.relative:
                row.time_text, row.date = when.text, when.date
                self.carry.time_text, self.carry.date = when.text, when.date
                explicit_time = True
            elif when is not None:
                row.time_text = when.text
                row.time_anchor = _anchor(self.carry)
                row.date = _dates.shift(self.carry.date, when.text) if when.relative else None
                if row.date:
                    self.carry.time_text, self.carry.date = when.text, row.date
                explicit_time = True
            elif self.carry.time_text:
                row.time_text, row.date, row.time_carried = self.carry.time_text, self.carry.date, True
            self.s.add(row)
            self.s.flush()
            for actor in actors:
                self.s.add(MemActor(event_id=row.id, entity_id=actor))
            self.stats.events += 1

        for seq, st in enumerate(record.get("states", [])):
            entity_id = entity(st["entity"])
            place = self.carry.place_id if self.carry.place_id in self.resolver.known else None
            self.s.add(MemState(
                entity_id=entity_id, chunk_id=chunk.id, seq=seq, attribute=st["attribute"],
                value=st["value"], time_text=self.carry.time_text, date=self.carry.date,
                place_id=place, carried=not (explicit_time or explicit_place),
                start=st.get("start"), end=st.get("end")))
            self.resolver.known[entity_id].about.append(f"{st['attribute']}: {st['value']}")
            self.stats.states += 1

        for q in record.get("questions", []):
            self._question(q, chunk)

    def _mention(self, entity_id: int, name: str, chunk: Chunk, via: str) -> None:
        span = locate(name, chunk.text)
        start, end = (chunk.start + span[0], chunk.start + span[1]) if span else (None, None)
        self.s.add(MemMention(entity_id=entity_id, chunk_id=chunk.id, name=name, norm=norm(name),
                              start=start, end=end, via=via))
        self.resolver.add_name(entity_id, name)
        self.resolver.known[entity_id].mentions += 1
        self.stats.mentions += 1

    def _merge(self, keep: int, gone: int) -> None:
        """Two entities proved one (a chunk gave one's name as the other's alias)."""
        merge(self.s, self.resolver, keep=keep, gone=gone)
        self.pending = [p for p in self.pending if p[0] != gone]
        if self.carry.place_id == gone:
            self.carry.place_id = keep

    def _question(self, q: dict[str, Any], chunk: Chunk) -> None:
        if self._open is None:
            answered = select(MemAnswer.question_id)
            self._open = list(self.s.execute(
                select(MemQuestion.id, MemQuestion.question)
                .join(Chunk, Chunk.id == MemQuestion.chunk_id)
                .join(Document, Document.id == Chunk.document_id)
                .where(Document.corpus_id == self.corpus_id, MemQuestion.id.not_in(answered))).all())
        same = max(self._open, key=lambda o: fuzz.ratio(norm(o[1]), norm(q["question"])), default=None)
        if same is not None and fuzz.ratio(norm(same[1]), norm(q["question"])) >= QUESTION_SAME:
            question_id = same[0]  # asked before: this chunk may answer it
        else:
            row = MemQuestion(chunk_id=chunk.id, question=q["question"], start=q.get("start"),
                              end=q.get("end"))
            self.s.add(row)
            self.s.flush()
            question_id = row.id
            self._open.append((row.id, row.question))
            self.stats.questions += 1
        if q.get("answer"):
            self.s.add(MemAnswer(question_id=question_id, chunk_id=chunk.id, answer=q["answer"],
                                 start=q.get("start"), end=q.get("end")))
            self._open = [o for o in self._open if o[0] != question_id]
            self.stats.answers += 1


def _anchor(carry: Carry) -> str | None:
    if not carry.time_text:
        return None
    if carry.date and _dates.pretty(carry.date) != carry.time_text:
        return f"{carry.time_text} ({carry.date})"
    return carry.time_text


def _sentence(chunk: Chunk, span: tuple[int | None, int | None]) -> str:
    start, end = span
    if start is None or end is None:
        return chunk.text[:200]
    a, b = start - chunk.start, end - chunk.start
    left = max(chunk.text.rfind(".", 0, a) + 1, 0)
    right = chunk.text.find(".", b)
    return " ".join(chunk.text[left:right + 1 if right >= 0 else len(chunk.text)].split())[:300]
