"""What one recursive controller reads: the whole target, or the piece a parent handed
to a child (chunks it chose, or a string it built).

A view is text plus segments that map its offsets back to documents, so a grep inside a
child still names real chunks and a child's reading still counts as provenance. Text a
model assembled itself (not found in the target) has no segments: it can be read and
grepped, but cites nothing.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import Any

from app.errors import TomesError
from pipelines.environment import ChunkRecord, Environment

_PROBE = 40  # characters of a probe; a chunk gets one every _STEP characters
_STEP = 100


@dataclass(frozen=True)
class Segment:
    offset: int  # in the view's text
    length: int
    document_id: int
    start: int  # in the document's text


class View:
    def __init__(self, env: Environment, text: str, segments: list[Segment],
                 chunks: list[ChunkRecord], *, whole: bool = False) -> None:
        self.env = env
        self.text = text
        self.segments = segments
        self.chunks = chunks
        self.whole = whole  # the target itself: search and grep go to the Environment
        self._offsets = [s.offset for s in segments]
        self._ids = {c.id for c in chunks}

    # --- building ----------------------------------------------------------------------

    @classmethod
    def of(cls, env: Environment) -> View:
        segments = [Segment(d.offset, d.length, d.id, 0) for d in env.documents]
        return cls(env, env.text, segments, list(env.chunks), whole=True)

    def of_chunks(self, chunk_ids: list[int]) -> View:
        """The chunks (in document order), joined by blank lines."""
        chunks = sorted({self.env.chunk(i) for i in chunk_ids if self.env.has_chunk(i)},
                        key=lambda c: (c.document_id, c.ordinal))
        parts, segments, offset = [], [], 0
        for c in chunks:
            if parts:
                parts.append("\n\n")
                offset += 2
            parts.append(c.text)
            segments.append(Segment(offset, len(c.text), c.document_id, c.start))
            offset += len(c.text)
        return View(self.env, "".join(parts), segments, chunks)

    def of_text(self, text: str) -> View:
        """A string a parent passed on: mapped to the target where it is a piece of it."""
        where = self.env.text.find(text) if len(text) >= 20 else -1
        if where < 0:
            return View(self.env, text, [], [])
        segments: list[Segment] = []
        for d in self.env.documents:
            a, b = max(where, d.offset), min(where + len(text), d.offset + d.length)
            if a < b:
                segments.append(Segment(a - where, b - a, d.id, a - d.offset))
        chunks = [c for s in segments for c in self.env.chunks
                  if c.document_id == s.document_id and c.start < s.start + s.length
                  and c.end > s.start]
        return View(self.env, text, segments, chunks)

    # --- reading -----------------------------------------------------------------------

    def locate(self, offset: int) -> tuple[int, int] | None:
        """(document id, offset in it) for an offset into this view's text."""
        i = bisect.bisect_right(self._offsets, offset) - 1
        if i < 0:
            return None
        seg = self.segments[i]
        if offset >= seg.offset + seg.length:
            return None
        return seg.document_id, seg.start + offset - seg.offset

    def chunk_at(self, offset: int) -> ChunkRecord | None:
        where = self.locate(offset)
        return self.env.chunk_at(*where) if where else None

    def documents(self) -> list[dict[str, Any]]:
        ids = list(dict.fromkeys(s.document_id for s in self.segments))
        out = []
        for seg in self.segments:
            if seg.document_id in ids:
                doc = self.env.document(seg.document_id)
                out.append({"id": doc.id, "title": doc.title, "offset": seg.offset,
                            "length": seg.length})
                ids.remove(seg.document_id)
        return out

    def chunk_dicts(self) -> list[dict[str, Any]]:
        return [{"id": c.id, "document_id": c.document_id, "start": c.start, "end": c.end,
                 "page": c.page, "tokens": c.n_tokens, "text": c.text} for c in self.chunks]

    def grep(self, pattern: str, limit: int = 100) -> list[dict[str, Any]]:
        """Regex matches (case-insensitive unless the pattern says otherwise); an
        invalid regex raises TomesError with the reason."""
        try:
            regex = re.compile(pattern, re.I if pattern == pattern.lower() else 0)
        except re.error as exc:
            raise TomesError(f"invalid regex {pattern!r}: {exc}", "escape special characters") from None
        out = []
        for m in regex.finditer(self.text):
            if m.end() == m.start():
                continue
            where = self.locate(m.start())
            chunk = self.env.chunk_at(*where) if where else None
            out.append({"document_id": where[0] if where else None,
                        "start": where[1] if where else m.start(),
                        "end": (where[1] if where else m.start()) + m.end() - m.start(),
                        "chunk_id": chunk.id if chunk else None,
                        "text": m.group(0)[:500]})
            if len(out) >= limit:
                break
        return out

    def search(self, query: str, k: int = 5) -> list[dict[str, Any]]:
        """Retrieval over the target; in a part of it, the hits inside the part (and
        word overlap where retrieval found none there)."""
        k = max(1, min(int(k), 50))
        if not query.strip():
            return []
        if self.whole:
            hits = self.env.search(query, k)
            return [_hit(h.chunk_id, h.document_id, h.title, h.start, h.end, h.page,
                         h.score, h.text) for h in hits]
        out: list[dict[str, Any]] = []
        if self._ids:
            try:
                hits = self.env.search(query, max(4 * k, 50))
            except TomesError:
                hits = []
            out = [_hit(h.chunk_id, h.document_id, h.title, h.start, h.end, h.page, h.score,
                        h.text) for h in hits if h.chunk_id in self._ids][:k]
        if len(out) < k:
            words = set(re.findall(r"\w{3,}", query.lower()))
            have = {h["chunk_id"] for h in out}
            scored = sorted(
                ((len(words & set(re.findall(r"\w{3,}", c.text.lower()))), c)
                 for c in self.chunks if c.id not in have), key=lambda p: -p[0])
            for score, c in scored[:k - len(out)]:
                if score:
                    doc = self.env.document(c.document_id)
                    out.append(_hit(c.id, c.document_id, doc.title, c.start, c.end, c.page,
                                    float(score), c.text))
        return out


def _hit(chunk_id: int, document_id: int, title: str, start: int, end: int,
         page: int | None, score: float, text: str) -> dict[str, Any]:
    return {"chunk_id": chunk_id, "document_id": document_id, "title": title, "start": start,
            "end": end, "page": page, "score": round(float(score), 4), "text": text}


class Reads:
    """Which chunks a prompt carries: every chunk leaves a probe (a short slice) every
    ``_STEP`` characters, so any slice of ``_STEP + _PROBE`` characters or more of a
    chunk, however the model cut it, is recognised in a sub-call's prompt. A probe that
    several chunks share (repeated text) proves nothing alone: those chunks count only
    if the prompt holds one of them whole."""

    def __init__(self, chunks: list[ChunkRecord]) -> None:
        self._probes: dict[str, list[int]] = {}
        self._text = {c.id: c.text for c in chunks}
        for c in chunks:
            text = c.text
            starts = range(0, max(1, len(text) - _PROBE + 1), _STEP)
            for probe in dict.fromkeys(text[i:i + _PROBE] for i in starts):
                if len(probe) >= min(_PROBE, len(text)) and probe.strip():
                    self._probes.setdefault(probe, []).append(c.id)

    def chunks_in(self, prompt: str) -> list[int]:
        found: dict[int, None] = {}
        shared: dict[int, None] = {}
        probes = self._probes
        for i in range(0, max(0, len(prompt) - _PROBE + 1)):
            ids = probes.get(prompt[i:i + _PROBE])
            if ids is None:
                continue
            if len(ids) == 1:
                found[ids[0]] = None
            else:
                shared.update(dict.fromkeys(ids))
        for cid in shared:
            if cid not in found and self._text[cid] in prompt:
                found[cid] = None
        return list(found)
