"""End to end: the memory workspace of a real text built by the real embedded model."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from app import settings
from app.api import Tomes
from app.store import Chunk, session_scope
from memory.schema import MemEntity, MemEvent, MemExtraction, MemMention


@pytest.mark.slow
# ~3 operator calls of ~300 tokens in, up to 400 out, and one answer: 2-4 minutes
# alone on 2 cores; 16 on a machine busy with other benchmarks.
@pytest.mark.timeout(1800)
def test_real_model_builds_a_workspace_grounded_in_real_chunks(shared_data: Path, tmp_path: Path) -> None:
    book = (shared_data / "books" / "pride_and_prejudice.txt").read_text(encoding="utf-8")
    start = book.index("It is a truth universally acknowledged")
    path = tmp_path / "pride_opening.txt"
    path.write_text(book[start:start + 1800], encoding="utf-8")
    with settings.override(backend="embedded", chunk_tokens=150):  # the model's own tokenizer
        report = Tomes().ingest([path], "books", embed=False)
    doc = report.added[0].document_id
    with session_scope() as s:
        chunks = {c.id: c for c in s.scalars(select(Chunk).where(Chunk.document_id == doc))}
        for c in chunks.values():
            s.expunge(c)
    assert len(chunks) >= 2

    tomes = Tomes(backend="embedded")
    built = tomes.memory_build(doc)
    assert built.calls >= len(chunks) and built.prompt_tokens > 0
    assert built.details["built"]["chunks"] == len(chunks)

    text = tomes.text(doc)
    with session_scope() as s:
        assert {e.chunk_id for e in s.scalars(select(MemExtraction))} == set(chunks)
        mentions = s.scalars(select(MemMention)).all()
        entities = s.scalars(select(MemEntity)).all()
        events = s.scalars(select(MemEvent)).all()
        # Non-empty, and every mention is a name the chunk really has, at its span.
        assert entities and mentions
        for m in mentions:
            chunk = chunks[m.chunk_id]
            if m.start is not None:
                assert chunk.start <= m.start < m.end <= chunk.end
                # Names are found across line breaks: "Mr.\n      Morris" is "Mr. Morris".
                assert " ".join(text[m.start:m.end].split()).lower() == " ".join(m.name.split()).lower()
            assert all(w.lower() in chunk.text.lower() for w in m.name.split() if len(w) > 2)
        for ev in events:
            assert ev.chunk_id in chunks and ev.action

    shown = tomes.memory(doc)
    assert shown["complete"] and shown["top_entities"] or shown["top_places"]

    # The calls sit under the run's steps, one operator call (and its retry) per chunk.
    calls = tomes.calls(built.run_id)
    assert {c["node"] for c in calls} >= {"operator"}
    assert len([c for c in calls if c["node"] == "operator" and c["parent_id"]]) == len(calls_of(calls, "operator"))

    name = shown["top_entities"][0]["name"] if shown["top_entities"] else shown["top_places"][0]["name"]
    answer = tomes.ask(doc, f"What did {name} do?", strategy="memory")
    assert answer.details["workspace"] == "existing" and answer.details["context_tokens"] > 0
    assert answer.answer
    assert {p.chunk_id for p in answer.provenance} <= set(chunks)
    assert all(p.document_id == doc for p in answer.provenance)


def calls_of(calls: list[dict], node: str) -> list[dict]:
    return [c for c in calls if c["node"] == node]
