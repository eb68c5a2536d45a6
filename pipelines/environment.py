"""The Environment: one object over a corpus (or one document) that every pipeline reads.

The long input stays here, outside the model: ``text``, ``chunks``, ``search``,
``grep``, ``llm``/``llm_batch`` and the episodic ``memory`` workspace. Offsets always map
back to the store: every chunk and every match names its document and the character
span in that document's text, so provenance survives any joining done for ``text``.
"""

from __future__ import annotations

import bisect
import contextvars
import copy
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from app.errors import TomesError
from app.store import session_scope
from pipelines.targets import Target, resolve_target, target_documents
from serving.lm import LM, Messages, get_lm


@dataclass(frozen=True)
class ChunkRecord:
    id: int
    document_id: int
    ordinal: int
    start: int  # in the document's text
    end: int
    page: int | None
    n_tokens: int
    text: str


@dataclass(frozen=True)
class DocumentSpan:
    """A document and where its text sits inside ``Environment.text``."""

    id: int
    title: str
    source: str
    corpus: str
    offset: int
    length: int


@dataclass(frozen=True)
class Match:
    document_id: int
    start: int  # in the document's text
    end: int
    chunk_id: int | None
    text: str


# Environments loaded inside ``sharing()``, by target label, most recent last.
_shared: contextvars.ContextVar[OrderedDict[str, Environment] | None] = contextvars.ContextVar(
    "tomes_environments", default=None)
SHARED_MAX = 8  # a batch over many targets keeps only the last few in memory
_shared_lock = threading.Lock()  # loads run in worker threads too


@contextmanager
def sharing() -> Iterator[OrderedDict[str, Environment]]:
    """Inside the block, loading a target again gives the environment already loaded (a
    batch of questions about one book reads it from the store once). Nested blocks share
    the outer one's; ``clear()`` what it yields when the store changes."""
    memo = _shared.get()
    if memo is not None:
        yield memo
        return
    token = _shared.set(OrderedDict())
    try:
        yield _shared.get()  # type: ignore[misc]
    finally:
        _shared.reset(token)


class Environment:
    def __init__(
        self, target: Target, documents: list[DocumentSpan], text: str,
        chunks: list[ChunkRecord], lm: LM | None = None,
    ) -> None:
        self.target = target
        self.documents = documents
        self.text = text
        self.chunks = chunks
        self._lm = lm
        self._by_id = {c.id: c for c in chunks}
        self._doc_by_id = {d.id: d for d in documents}
        self._offsets = [d.offset for d in documents]
        self._chunk_starts: dict[int, list[int]] = {}
        self._chunks_of: dict[int, list[ChunkRecord]] = {}
        for c in chunks:
            self._chunks_of.setdefault(c.document_id, []).append(c)
            self._chunk_starts.setdefault(c.document_id, []).append(c.start)

    @property
    def memory(self) -> Any:
        """The episodic workspace of the target's documents (``memory.workspace.Workspace``:
        entities, states, events, places, open questions), read from the store when asked;
        empty until ``tomes memory build`` (or the memory strategy) has read the chunks."""
        from memory import workspace

        with session_scope() as s:
            return workspace.load(s, [d.id for d in self.documents])

    # --- building ----------------------------------------------------------------------

    @classmethod
    def load(cls, ref: str | int | Target, *, lm: LM | None = None) -> Environment:
        """The environment for a document (id, title, file name) or a corpus name."""
        memo = _shared.get()
        with session_scope() as s:
            target = ref if isinstance(ref, Target) else resolve_target(s, ref)
            if memo is not None:
                with _shared_lock:
                    known = memo.get(target.label)
                    if known is not None:
                        memo.move_to_end(target.label)
                if known is not None:
                    return known.with_lm(lm)
            docs = target_documents(s, target)
            spans: list[DocumentSpan] = []
            parts: list[str] = []
            chunks: list[ChunkRecord] = []
            offset = 0
            for i, doc in enumerate(docs):
                if len(docs) > 1:
                    # A visible separator, so grep hits and model reads never run
                    # from one document into the next.
                    header = ("\n\n" if i else "") + f"===== document {doc.id}: {doc.title} =====\n\n"
                    parts.append(header)
                    offset += len(header)
                spans.append(DocumentSpan(doc.id, doc.title, doc.source, doc.corpus.name,
                                          offset, len(doc.text)))
                parts.append(doc.text)
                offset += len(doc.text)
                chunks.extend(
                    ChunkRecord(c.id, doc.id, c.ordinal, c.start, c.end, c.page, c.n_tokens, c.text)
                    for c in doc.chunks
                )
        if not chunks:
            raise TomesError(
                f"{target.label} has no chunks", "re-ingest it with `tomes ingest PATH`"
            )
        env = cls(target, spans, "".join(parts), chunks, lm)
        if memo is not None:
            with _shared_lock:
                memo[target.label] = env
                while len(memo) > SHARED_MAX:
                    memo.popitem(last=False)
        return env

    def with_lm(self, lm: LM | None) -> Environment:
        """The same environment for another model (the text and chunks are shared)."""
        if lm is self._lm:
            return self
        other = copy.copy(self)
        other._lm = lm
        return other

    # --- reading -----------------------------------------------------------------------

    @property
    def lm(self) -> LM:
        if self._lm is None:
            self._lm = get_lm()
        return self._lm

    def chunk(self, chunk_id: int) -> ChunkRecord:
        return self._by_id[chunk_id]

    def has_chunk(self, chunk_id: int) -> bool:
        return chunk_id in self._by_id

    def document(self, document_id: int) -> DocumentSpan:
        return self._doc_by_id[document_id]

    def locate(self, offset: int) -> tuple[int, int]:
        """(document id, offset in that document) for an offset into ``text``."""
        i = max(0, bisect.bisect_right(self._offsets, offset) - 1)
        doc = self.documents[i]
        return doc.id, min(max(offset - doc.offset, 0), doc.length)

    def chunk_at(self, document_id: int, offset: int) -> ChunkRecord | None:
        starts = self._chunk_starts.get(document_id, [])
        i = bisect.bisect_right(starts, offset) - 1
        if i < 0:
            return None
        chunk = self._chunks_of[document_id][i]
        return chunk if offset < chunk.end else None

    def search(self, query: str, k: int = 5, **kwargs: Any) -> list[Any]:
        """Retrieval restricted to this target (``retrieval.search`` hits)."""
        from retrieval import search

        if self.target.kind == "doc":
            doc = self.documents[0]
            return search(doc.corpus, query, k, document_id=doc.id, **kwargs)
        return search(self.target.key, query, k, **kwargs)

    def grep(self, pattern: str | re.Pattern[str], *, flags: int = 0, limit: int = 1000) -> list[Match]:
        """Regex matches over every document, with document offsets and chunk ids."""
        regex = pattern if isinstance(pattern, re.Pattern) else re.compile(pattern, flags)
        matches: list[Match] = []
        for m in regex.finditer(self.text):
            if m.end() == m.start():
                continue
            doc_id, start = self.locate(m.start())
            doc = self._doc_by_id[doc_id]
            if not doc.offset <= m.start() < doc.offset + doc.length:
                continue  # inside a separator between documents
            end = min(start + (m.end() - m.start()), doc.length)
            chunk = self.chunk_at(doc_id, start)
            matches.append(Match(doc_id, start, end, chunk.id if chunk else None, m.group(0)))
            if len(matches) >= limit:
                break
        return matches

    # --- the model ---------------------------------------------------------------------

    async def allm(self, prompt: Messages, **kwargs: Any) -> str:
        return (await self.lm.achat(prompt, **kwargs)).text

    async def allm_batch(self, prompts: Sequence[Messages], **kwargs: Any) -> list[str]:
        return [r.text for r in await self.lm.abatch(list(prompts), **kwargs)]

    def llm(self, prompt: Messages, **kwargs: Any) -> str:
        return self.lm.chat(prompt, **kwargs).text

    def llm_batch(self, prompts: Sequence[Messages], **kwargs: Any) -> list[str]:
        return [r.text for r in self.lm.batch(list(prompts), **kwargs)]
