"""End to end: summarize a real text with the real embedded model (SmolLM2-135M)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app import settings
from app.api import Tomes
from app.store import Chunk, session_scope


@pytest.mark.slow
# ~6 map calls of ~1K tokens and a reduce on 2 CPU cores: a minute or two alone, far
# more when the cores are shared; the timeout only guards against a hang.
@pytest.mark.timeout(2400)
def test_summarize_a_real_text_with_the_embedded_model(shared_data: Path) -> None:
    path = shared_data / "books" / "a_modest_proposal.txt"
    with settings.override(backend="embedded"):  # chunk with the model's own tokenizer
        report = Tomes().ingest([path], "books", embed=False)
    assert not report.failed, report.failed
    doc = report.added[0].document_id
    with session_scope() as s:
        chunk_ids = {c.id for c in s.query(Chunk).filter_by(document_id=doc)}

    tomes = Tomes(backend="embedded")
    # Pieces of ~1K tokens: the whole book would fit one call of this 8K-window model.
    first = tomes.summarize(doc, length="short", map_tokens=1024)

    assert len(first.answer.split()) >= 8, first.answer
    cited = {p.chunk_id for p in first.provenance}
    assert cited and cited <= chunk_ids
    assert all(p.document_id == doc and p.quote for p in first.provenance)
    # Every call was logged under the run, with its node; every piece was mapped.
    calls = tomes.calls(first.run_id)
    maps = [c for c in calls if c["node"] == "map"]
    assert len(maps) >= first.details["pieces"] >= 3 and not first.details["direct"]
    assert {c["run_id"] for c in calls} == {first.run_id}
    assert [c["node"] for c in calls].count("reduce") >= 1
    assert first.calls == len([c for c in calls if not c["cache_hit"]]) > 0
    assert first.prompt_tokens > 0 and first.completion_tokens > 0
    # The calls form a tree: each sits under the graph step that caused it.
    tree = tomes.call_tree(first.run_id)
    steps = [r["node"] for r in tree["calls"]]
    assert all(r["step"] for r in tree["calls"]) and steps[0] == "map" and steps[-1] == "reduce"
    assert tree["totals"]["depth"] > 1 and tree["totals"]["calls"] == first.calls

    # The same job again is answered from the response cache: no backend request.
    second = tomes.summarize(doc, length="short", map_tokens=1024)
    assert second.run_id != first.run_id
    assert second.calls == 0 and second.cache_hits == first.calls
    assert second.answer == first.answer
    assert all(c["cache_hit"] for c in tomes.calls(second.run_id))


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_a_question_over_a_text_that_fits_is_one_real_call(shared_data: Path) -> None:
    path = shared_data / "books" / "a_modest_proposal.txt"
    tomes = Tomes(backend="embedded")
    report = tomes.ingest([path], "books", embed=False)
    doc = (report.added or report.skipped)[0].document_id

    result = tomes.ask(doc, "At what age does the author propose that children be sold?",
                       strategy="mapreduce")
    assert result.details["direct"] and result.answer.strip()
    calls = tomes.calls(result.run_id)
    # One call, or two when the model's JSON needed the one retry.
    assert {c["node"] for c in calls} == {"direct"} and 1 <= len(calls) <= 2
    prompt = calls[0]["messages"][-1]["content"]
    with session_scope() as s:
        texts = [c.text for c in s.query(Chunk).filter_by(document_id=doc)]
    # The whole book was read in that call: as numbered sentences (the embedded model
    # reads by selection), each sentence flattened onto its line.
    assert result.details["grounding"] == "select"
    from pipelines._grounding import sentences

    flat = " ".join(prompt.split())
    assert all(" ".join(t[a:b].split()) in flat for t in texts for a, b in sentences(t))
