"""direct, rag and auto on the real embedded model (SmolLM2-135M), over slices of the
sample books: few calls, short texts. The answers of a 135M model are weak; what is
checked is what the strategies do with a real model: the calls, the prompts, the
schemas it is held to, the provenance and the runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.api import Tomes
from app.store import Chunk, session_scope

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def _slice(shared_data: Path, tmp_path: Path, book: str, start: str, chars: int) -> Path:
    text = (shared_data / "books" / book).read_text(encoding="utf-8")
    at = text.index(start)
    path = tmp_path / f"{Path(book).stem}-slice.txt"
    path.write_text(text[at:at + chars], encoding="utf-8")
    return path


def _chunk_texts(doc: int) -> dict[int, str]:
    with session_scope() as s:
        return {c.id: c.text for c in s.query(Chunk).filter_by(document_id=doc)}


def test_direct_reads_a_short_text_in_one_real_call(shared_data, tmp_path):
    path = _slice(shared_data, tmp_path, "a_modest_proposal.txt", "It is a melancholy object", 6000)
    tomes = Tomes(backend="embedded")
    doc = tomes.ingest([path], "swift", embed=False).added[0].document_id
    result = tomes.ask(doc, "At what age does the author propose to provide for the children?",
                       strategy="direct")
    assert result.pipeline == "direct" and result.answer.strip()
    calls = tomes.calls(result.run_id)
    assert [c["node"] for c in calls] == ["direct"] and result.calls == 1
    prompt = calls[0]["messages"][-1]["content"]
    texts = _chunk_texts(doc)
    assert len(texts) >= 2 and all(t in prompt for t in texts.values())  # the whole text
    assert {p.chunk_id for p in result.provenance} <= set(texts)
    assert tomes.run(result.run_id)["status"] == "done"


def test_rag_answers_from_the_passages_it_retrieved_on_the_real_model(shared_data, tmp_path):
    path = _slice(shared_data, tmp_path, "a_modest_proposal.txt", "It is a melancholy object", 12000)
    tomes = Tomes(backend="embedded")
    doc = tomes.ingest([path], "swift", embed=False).added[0].document_id
    question = "How many children of poor parents are born annually?"
    result = tomes.ask(doc, question, strategy="rag", k=2)
    assert result.pipeline == "rag" and result.answer.strip() and result.calls == 1
    used = result.details["used"]
    texts = _chunk_texts(doc)
    assert 1 <= len(used) <= 2 and len(texts) > 2  # top 2 of more chunks than that
    # The keyword side of the search finds the passage that says it.
    assert any("annually born" in texts[c] for c in used)
    prompt = tomes.calls(result.run_id)[0]["messages"][-1]["content"]
    assert all(texts[c].strip() in prompt for c in used)
    assert {p.chunk_id for p in result.provenance} <= set(used)  # it cites what it was shown


def test_auto_chooses_rag_for_a_factual_question_over_a_text_too_long_for_one_call(
        shared_data, tmp_path):
    path = _slice(shared_data, tmp_path, "pride_and_prejudice.txt", "It is a truth universally", 42000)
    tomes = Tomes(backend="embedded")
    doc = tomes.ingest([path], "austen", embed=False).added[0].document_id
    result = tomes.ask(doc, "Who has taken Netherfield?", k=4)  # auto, the default
    assert result.details["strategy"] == "rag" == result.pipeline
    assert "top hits carry it" in result.details["why"]
    assert result.details["auto"]["fits"] is False  # the slice is over the 8,192-token window
    assert result.answer.strip() and result.calls == 1
    run = tomes.run(result.run_id)
    assert run["params"]["chosen_by"] == "auto" and run["params"]["k"] == 4
