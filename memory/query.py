"""Answering from the workspace: find what a question is about, give the model a small
context of numbered notes, each tied to the chunk and span it came from.

The entities a question names (any alias, or a part of a name; the embedder when no
name matches), the events it describes (shared words with the action, time and place,
events of those entities, embedding similarity), then the notes: those events with time
and place; for each entity its timeline, the most relevant items and its latest role
and state first; and what the workspace can say that no single passage does, where and
what an entity was when an event happened.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from memory._text import content_words, core, name_tokens, norm, words
from memory.workspace import EventView, Source, StateView, Workspace, describe_time

MAX_ENTITIES = 4
MAX_EVENTS = 6
MAX_TIMELINE = 8  # items per entity
DEFAULT_BUDGET = 1200  # tokens of notes
_LATEST = {"now", "latest", "last", "current", "currently", "finally", "end", "eventually",
           "become", "became", "ended"}


@dataclass
class Note:
    text: str
    source: Source | None
    priority: float
    section: int  # 0 events, 1 derived facts, 2 entities
    order: tuple[int, ...] = ()


@dataclass
class Context:
    text: str
    notes: list[Note]  # numbered from 1, as in ``text``
    entities: list[int]
    events: list[int]
    tokens: int
    dropped: int = 0  # notes left out to stay within the budget

    def sources(self, numbers: list[int]) -> list[Source]:
        out: list[Source] = []
        for n in numbers:
            if 1 <= n <= len(self.notes) and self.notes[n - 1].source is not None:
                src = self.notes[n - 1].source
                if src not in out:
                    out.append(src)
        return out


@dataclass
class Focus:
    entities: list[tuple[float, int]] = field(default_factory=list)
    events: list[tuple[float, EventView]] = field(default_factory=list)


def focus(ws: Workspace, question: str, embed: Callable[[list[str]], np.ndarray] | None = None) -> Focus:
    """The entities and events ``question`` is about, best first."""
    q_norm = f" {norm(question)} "
    q_words = set(words(question))
    scored: dict[int, float] = {}
    for entity in ws.entities.values():
        best = 0.0
        for alias in entity.aliases:
            key = norm(alias)
            if len(key) >= 3 and f" {key} " in q_norm:
                best = max(best, 3.0 + len(key.split()))
            elif len(core(alias)) >= 3 and f" {core(alias)} " in q_norm:
                best = max(best, 2.5 + len(core(alias).split()))
            else:
                hits = name_tokens(alias) & q_words
                if hits:
                    best = max(best, 1.0 * len(hits) / max(1, len(name_tokens(alias))) + 0.5)
        if best:
            scored[entity.id] = best + min(entity.mentions, 50) / 500  # ties: the better known
    if not scored and embed is not None and ws.entities:
        ids = list(ws.entities)
        vectors = embed([question] + [ws.entities[i].name for i in ids])
        sims = vectors[1:] @ vectors[0]
        for i, sim in sorted(zip(ids, sims), key=lambda p: -p[1])[:2]:
            if sim >= 0.5:
                scored[i] = float(sim)
    entities = sorted(((s, i) for i, s in scored.items()), reverse=True)[:MAX_ENTITIES]
    focal = {i for _s, i in entities}

    name_words = set()
    for i in focal:
        for alias in ws.entities[i].aliases:
            name_words |= {w for w in words(alias)}
    wanted = content_words(" ".join(w for w in words(question) if w not in name_words))
    event_scores: list[tuple[float, EventView]] = []
    sims = None
    if embed is not None and ws.events and wanted:
        vectors = embed([question] + [_event_text(ws, e) for e in ws.events])
        sims = vectors[1:] @ vectors[0]
    for k, ev in enumerate(ws.events):
        overlap = len(wanted & content_words(f"{ev.action} {ev.place or ''} {ev.time_text or ''}"))
        score = 2.0 * overlap
        involved = focal & (set(ev.actors) | ({ev.place_id} if ev.place_id else set()))
        if involved:
            score += 1.0 + 0.5 * len(involved)
        if sims is not None:
            score += float(max(0.0, sims[k]))
        if overlap or involved:
            event_scores.append((score, ev))
    event_scores.sort(key=lambda p: (-p[0], p[1].source.order, p[1].seq))
    return Focus(entities, event_scores[:MAX_EVENTS])


def context(ws: Workspace, question: str, *, count_tokens: Callable[[str], int],
            embed: Callable[[list[str]], np.ndarray] | None = None,
            budget: int = DEFAULT_BUDGET) -> Context:
    found = focus(ws, question, embed)
    latest = bool(_LATEST & set(words(question)))
    wanted = content_words(question)
    notes: list[Note] = []
    top_events = [ev for _s, ev in found.events]
    for rank, (score, ev) in enumerate(found.events):
        notes.append(Note(_event_line(ws, ev), ev.source, 10 - rank + score / 10, 0,
                          (*ev.source.order, ev.seq)))

    for e_rank, (_score, entity_id) in enumerate(found.entities):
        entity = ws.entities[entity_id]
        names = ", ".join(a for a in entity.aliases[1:4])
        header = f"{entity.name} ({entity.kind}" + (f"; also called {names})" if names else ")")
        first_chunk = entity.chunks[0] if entity.chunks else None
        src = Source(first_chunk, entity.first[0], entity.first[1], None, None) if first_chunk else None
        notes.append(Note(header, src, 9 - e_rank, 2, (e_rank, -1)))
        # What the entity was, and where, when each top event happened.
        for ev in top_events[:3]:
            if entity_id in ev.actors and ev.place and not ev.place_carried:
                continue  # the event's own line says it
            fact = _at_event(ws, entity_id, ev)
            if fact:
                text, fsrc = fact
                notes.append(Note(text, fsrc, 8.5 - e_rank, 1, (*ev.source.order, ev.seq, entity_id)))
        items = _timeline_items(ws, entity_id)
        if not items:
            continue
        last_of: dict[str, int] = {}
        for k, (_order, kind, _item) in enumerate(items):
            last_of[kind] = k
        ranked = []
        for k, (order, kind, item) in enumerate(items):
            text = _state_text(ws, item) if kind != "event" else _event_line(ws, item)
            rel = len(wanted & content_words(text))
            pri = 5 - e_rank + rel + (2 if last_of.get(kind) == k and kind != "event" else 0)
            pri += (k / max(1, len(items))) * (2 if latest else 0.5)  # later first when asked
            ranked.append((pri, k, order, text, item))
        ranked.sort(key=lambda r: -r[0])
        for pri, _k, order, text, item in ranked[:MAX_TIMELINE]:
            if isinstance(item, EventView) and item in top_events:
                continue
            notes.append(Note(f"{entity.name}: {text}", item.source, pri, 2, (e_rank, *order)))

    # Within the budget, the most important notes first; shown by section, in story order.
    kept: list[Note] = []
    used = 0
    dropped = 0
    for note in sorted(notes, key=lambda n: -n.priority):
        cost = count_tokens(note.text) + 4
        if used + cost > budget:
            dropped += 1
            continue
        kept.append(note)
        used += cost
    kept.sort(key=lambda n: (n.section, n.order))
    text = "\n".join(f"[{i}] {n.text}" for i, n in enumerate(kept, 1))
    return Context(text, kept, [i for _s, i in found.entities], [ev.id for ev in top_events],
                   count_tokens(text) if text else 0, dropped)


def _timeline_items(ws: Workspace, entity_id: int) -> list[tuple[tuple[int, ...], str, StateView | EventView]]:
    items: list[tuple[tuple[int, ...], str, StateView | EventView]] = []
    last: dict[str, str] = {}
    for st in ws.states:
        if st.entity_id == entity_id and last.get(st.attribute) != st.value.lower():
            last[st.attribute] = st.value.lower()
            items.append(((*st.source.order, 1, st.seq), st.attribute, st))
    for ev in ws.events:
        if entity_id in ev.actors:
            items.append(((*ev.source.order, 0, ev.seq), "event", ev))
    items.sort(key=lambda p: p[0])
    return items


def _where_when(item: StateView | EventView) -> str:
    parts = []
    when = describe_time(item)
    if when:
        parts.append(when)
    if item.place:
        parts.append(f"in {item.place}")
    return f" ({', '.join(parts)})" if parts else ""


def _state_text(ws: Workspace, st: StateView | EventView) -> str:
    assert isinstance(st, StateView)
    return f"{st.attribute} {st.value}{_where_when(st)}"


def _event_text(ws: Workspace, ev: EventView) -> str:
    actors = " and ".join(ws.name(a) for a in ev.actors if ws.name(a))
    return f"{actors} {ev.action}".strip()


def _event_line(ws: Workspace, ev: EventView | StateView) -> str:
    assert isinstance(ev, EventView)
    line = _event_text(ws, ev)
    when = describe_time(ev)
    if ev.time_anchor and ev.time_text and not ev.date:
        when = f"{ev.time_text}, after {ev.time_anchor}"
    details = []
    if when:
        details.append(f"when: {when}")
    if ev.place:
        details.append(f"where: {ev.place}")
    return line + (f" ({'; '.join(details)})" if details else "")


def _at_event(ws: Workspace, entity_id: int, ev: EventView) -> tuple[str, Source] | None:
    """Where the entity was, and what, when ``ev`` happened: its own latest placed event
    up to then (or ``ev`` itself), its latest role and state up to then."""
    at = (*ev.source.order, ev.seq)
    name = ws.entities[entity_id].name
    place: tuple[str, Source] | None = None
    if entity_id in ev.actors and ev.place and not ev.place_carried:
        place = (ev.place, ev.source)
    else:
        # Its own latest placed event up to then; a place the text gave beats one carried.
        said: tuple[str, Source] | None = None
        for other in ws.events:
            if (*other.source.order, other.seq) > at:
                break
            if entity_id in other.actors and other.place:
                place = (other.place, other.source)
                if not other.place_carried:
                    said = place
        place = said or place
    roles: dict[str, StateView] = {}
    for st in ws.states:
        if st.source.order > ev.source.order:
            break
        if st.entity_id == entity_id:
            roles[st.attribute] = st
    if place is None and not roles:
        return None
    what = _event_text(ws, ev)
    parts = []
    if place:
        parts.append(f"was in {place[0]}")
    for attribute in ("role", "state"):
        if attribute in roles:
            parts.append(f"{attribute} {roles[attribute].value}")
    when = describe_time(ev)
    src = place[1] if place else next(iter(roles.values())).source
    return (f"When {what}{f' ({when})' if when else ''}: {name} " + "; ".join(parts), src)
