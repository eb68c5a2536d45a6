"""Entity resolution: which known entity a name in a chunk is, if any.

Cheapest evidence first: the same normalized name or a given alias; one name's words
inside the other's ("Blake" / "Captain Blake") when exactly one entity fits; near-equal
spelling; the embedder's similarity of the names. A match that is only likely
(two entities fit, or a middling similarity) is put to the model when a verifier is
given, and otherwise left a new entity: a wrong merge corrupts two timelines, a missed
one leaves an alias unjoined.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from memory._text import core, name_tokens, norm

# Similarities (0-1) above which names are the same without asking, and below which
# they are different without asking.
FUZZY_SAME, FUZZY_MAYBE = 0.92, 0.80
EMBED_SAME, EMBED_MAYBE = 0.92, 0.80
MAX_ASK = 2  # candidates put to the model for one name

Embed = Callable[[list[str]], np.ndarray]
Verify = Callable[[str, str, str, str], Awaitable[bool]]


@dataclass
class Known:
    id: int
    name: str
    kind: str
    norms: set[str] = field(default_factory=set)
    cores: set[str] = field(default_factory=set)
    tokens: set[str] = field(default_factory=set)
    mentions: int = 0
    about: list[str] = field(default_factory=list)  # roles and states, for the verifier


def compatible(a: str, b: str) -> bool:
    """Kinds that may be one entity: equal, or one of them unknown; never a place and
    something that is not."""
    if a == b:
        return True
    if "place" in (a, b):
        return False
    return "other" in (a, b)


@dataclass
class Match:
    id: int | None  # None: a new entity
    via: str
    also: list[int] = field(default_factory=list)  # other entities the aliases proved the same
    maybe: list[int] = field(default_factory=list)  # for the model to decide, best first


class Resolver:
    def __init__(self, embed: Embed | None = None, verify: Verify | None = None) -> None:
        self.known: dict[int, Known] = {}
        self._norm: dict[str, set[int]] = {}
        self._core: dict[str, set[int]] = {}
        self._token: dict[str, set[int]] = {}
        self.embed = embed
        self.verify = verify
        self._vectors: dict[int, np.ndarray] = {}

    # --- the index -------------------------------------------------------------------

    def add(self, entity_id: int, name: str, kind: str) -> Known:
        known = self.known.get(entity_id)
        if known is None:
            known = self.known[entity_id] = Known(entity_id, name, kind)
        self.add_name(entity_id, name)
        return known

    def add_name(self, entity_id: int, name: str) -> None:
        known = self.known[entity_id]
        n, c = norm(name), core(name)
        if not n:
            return
        known.norms.add(n)
        known.cores.add(c)
        self._norm.setdefault(n, set()).add(entity_id)
        self._core.setdefault(c, set()).add(entity_id)
        for token in name_tokens(name):
            known.tokens.add(token)
            self._token.setdefault(token, set()).add(entity_id)

    def absorb(self, keep: int, gone: int) -> None:
        """``gone`` was merged into ``keep``."""
        old = self.known.pop(gone)
        for index in (self._norm, self._core, self._token):
            for ids in index.values():
                if gone in ids:
                    ids.discard(gone)
                    ids.add(keep)
        known = self.known[keep]
        known.norms |= old.norms
        known.cores |= old.cores
        known.tokens |= old.tokens
        known.mentions += old.mentions
        known.about += old.about
        self._vectors.pop(gone, None)
        if known.kind == "other":
            known.kind = old.kind

    # --- resolving -------------------------------------------------------------------

    def resolve(self, name: str, kind: str, aliases: list[str] = (),  # type: ignore[assignment]
                      about: str = "") -> Match:
        keys = [name, *aliases]
        by_key: list[set[int]] = []
        for key in keys:
            ids = self._norm.get(norm(key)) or self._core.get(core(key)) or set()
            by_key.append({i for i in ids if compatible(self.known[i].kind, kind)})
        hits = set().union(*by_key)
        if hits:
            primary = self._best(by_key[0] or hits)
            via = "name" if by_key[0] else "alias"
            # Two known entities named by one chunk as one (a name and its alias): the
            # alias is the evidence they are the same.
            also = sorted(i for i in hits if i != primary
                          and compatible(self.known[i].kind, self.known[primary].kind)
                          and not (i in by_key[0] and primary in by_key[0]))
            return Match(primary, via, also)

        maybe: list[tuple[float, int]] = []
        if kind != "place":
            contained = self._contained(name, kind)
            if len(contained) == 1:
                return Match(contained[0], "token")
            maybe += [(0.85, i) for i in contained]

        fuzzy = self._fuzzy(name, kind)
        if fuzzy and fuzzy[0][0] >= FUZZY_SAME and (len(fuzzy) == 1 or fuzzy[1][0] < FUZZY_SAME):
            return Match(fuzzy[0][1], "fuzzy")
        maybe += [(s, i) for s, i in fuzzy if s >= FUZZY_MAYBE]

        if self.embed is not None and self.known:
            close = self._similar(name, kind)
            if close and close[0][0] >= EMBED_SAME and (len(close) == 1 or close[1][0] < EMBED_SAME):
                return Match(close[0][1], "embedding")
            maybe += [(s, i) for s, i in close if s >= EMBED_MAYBE]

        if maybe and self.verify is not None:
            # Asked later (``ask``), outside the write transaction: the model's calls are
            # logged in the same database.
            order = sorted(maybe, key=lambda p: (-p[0], -self.known[p[1]].mentions))
            return Match(None, "new", maybe=list(dict.fromkeys(i for _s, i in order))[:MAX_ASK])
        return Match(None, "new")

    async def ask(self, name: str, about: str, candidates: list[int]) -> int | None:
        """The first candidate the model says ``name`` is, if any."""
        assert self.verify is not None
        for entity_id in candidates:
            other = self.known.get(entity_id)
            if other is not None and await self.verify(name, about, other.name, self.describe(other)):
                return entity_id
        return None

    def describe(self, known: Known) -> str:
        names = sorted({n for n in known.norms if n != norm(known.name)})[:4]
        parts = [f"kind: {known.kind}"]
        if names:
            parts.append("also called: " + ", ".join(names))
        if known.about:
            parts.append("; ".join(known.about[-4:]))
        return "\n".join(parts)

    def _best(self, ids: set[int]) -> int:
        return min(ids, key=lambda i: (-self.known[i].mentions, i))

    def _contained(self, name: str, kind: str) -> list[int]:
        tokens = name_tokens(name)
        if not tokens:
            return []
        seen: set[int] = set()
        for token in tokens:
            seen |= self._token.get(token, set())
        out = []
        for entity_id in sorted(seen):
            known = self.known[entity_id]
            if not compatible(known.kind, kind) or known.kind == "place":
                continue
            # One name's words all inside one of the entity's names, or the reverse.
            if any(tokens < _tokens(c) or (_tokens(c) < tokens and _tokens(c)) for c in known.cores):
                out.append(entity_id)
        return out

    def _fuzzy(self, name: str, kind: str) -> list[tuple[float, int]]:
        from rapidfuzz import fuzz

        key = core(name)
        if len(key) < 4:
            return []
        scores: dict[int, float] = {}
        for entity_id, known in self.known.items():
            if not compatible(known.kind, kind):
                continue
            best = max((fuzz.ratio(key, c) for c in known.cores if len(c) >= 4), default=0.0)
            if best >= FUZZY_MAYBE * 100:
                scores[entity_id] = best / 100
        return sorted(((s, i) for i, s in scores.items()), reverse=True)

    def _similar(self, name: str, kind: str) -> list[tuple[float, int]]:
        assert self.embed is not None
        missing = [i for i in self.known if i not in self._vectors]
        if missing:
            vectors = self.embed([self.known[i].name for i in missing])
            for entity_id, vector in zip(missing, vectors):
                self._vectors[entity_id] = np.asarray(vector, dtype=np.float32)
        query = np.asarray(self.embed([name])[0], dtype=np.float32)
        out = []
        for entity_id, vector in self._vectors.items():
            if entity_id in self.known and compatible(self.known[entity_id].kind, kind):
                score = float(np.dot(query, vector))
                if score >= EMBED_MAYBE:
                    out.append((score, entity_id))
        return sorted(out, reverse=True)[:5]

    def forget_vector(self, entity_id: int) -> None:
        self._vectors.pop(entity_id, None)


def _tokens(text: str) -> set[str]:
    return name_tokens(text)


def load(session: Any, corpus_id: int, resolver: Resolver) -> Resolver:
    """Fill ``resolver`` with the corpus's entities and every name they were seen by."""
    from sqlalchemy import func, select

    from memory.schema import MemEntity, MemMention, MemState

    for entity in session.scalars(select(MemEntity).where(MemEntity.corpus_id == corpus_id)):
        resolver.add(entity.id, entity.name, entity.kind)
    rows = session.execute(
        select(MemMention.entity_id, MemMention.name, func.count())
        .join(MemEntity, MemEntity.id == MemMention.entity_id)
        .where(MemEntity.corpus_id == corpus_id)
        .group_by(MemMention.entity_id, MemMention.name))
    for entity_id, name, count in rows:
        if entity_id in resolver.known:
            resolver.add_name(entity_id, name)
            resolver.known[entity_id].mentions += count
    for entity_id, attribute, value in session.execute(
            select(MemState.entity_id, MemState.attribute, MemState.value)
            .join(MemEntity, MemEntity.id == MemState.entity_id)
            .where(MemEntity.corpus_id == corpus_id).order_by(MemState.id)):
        if entity_id in resolver.known:
            resolver.known[entity_id].about.append(f"{attribute}: {value}")
    return resolver
