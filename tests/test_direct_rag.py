"""The direct and rag strategies with the scripted model: what they send, what they cite,
what they refuse, their fallbacks, and resuming a run."""

from __future__ import annotations

import json

import pytest

from app.api import Tomes
from app.errors import TomesError
from app.store import Call, Run, session_scope
from pipelines import _onecall as O
from pipelines import direct, rag
from pipelines.environment import Environment
from serving.backends.scripted import ScriptedBackend
from serving.lm import LM
from tests.islands import KEEPERS, chunk_with, chunks, ingest_book, keeper_reply, paragraph


def _lm(replies, **kwargs) -> tuple[LM, ScriptedBackend]:
    backend = ScriptedBackend(replies, **kwargs)
    return LM(backend, cache=False), backend


def _runs() -> list[Run]:
    with session_scope() as s:
        rows = list(s.query(Run))
        s.expunge_all()
        return rows


# --- direct --------------------------------------------------------------------------


def test_direct_reads_the_whole_text_in_one_call_and_cites_the_quoted_chunk(tmp_path):
    doc = ingest_book(tmp_path)
    lm, backend = _lm(keeper_reply)
    result = direct.ask(doc, "Who keeps the lighthouse on Cedar Island?", lm=lm)

    assert result.answer == KEEPERS[2] and result.pipeline == "direct"
    assert len(backend.requests) == 1 and result.calls == 1
    request = backend.requests[0]
    assert request.json_schema == O.QUOTE_SCHEMA  # the answer comes under a schema
    prompt = request.messages[-1]["content"]
    assert all(c.text in prompt for c in chunks(doc))  # every chunk, in one prompt
    # The quote locates the one chunk it came from, not just any chunk sharing words.
    assert [p.chunk_id for p in result.provenance] == [chunk_with(doc, "Cedar Island")]
    assert result.details["fallbacks"] == []
    assert result.details["support"]["supported"] == 1
    run = _runs()[0]
    assert run.status == "done" and run.pipeline == "direct" and run.params["backend"] == "scripted"


def test_direct_refuses_before_any_call_when_the_target_does_not_fit(tmp_path):
    doc = ingest_book(tmp_path, islands=24)
    lm, backend = _lm(keeper_reply, context_window=600)
    with pytest.raises(TomesError) as caught:
        direct.ask(doc, "Who keeps the lighthouse on Cedar Island?", lm=lm)
    assert "does not fit one call" in caught.value.cause and "600-token window" in caught.value.cause
    # It names what would read it: the strategies that read the text in pieces.
    assert "--strategy rag" in caught.value.fix and "--strategy mapreduce" in caught.value.fix
    assert "--strategy direct" not in caught.value.fix
    assert backend.requests == [] and _runs() == []  # nothing spent, no run left behind


def test_direct_counts_the_answer_room_not_only_the_text(tmp_path):
    doc = ingest_book(tmp_path, islands=8)
    env = Environment.load(doc)
    lm, _ = _lm(keeper_reply)
    need = direct.fit(env, lm, "Who?", answer_tokens=16)["needed"]
    # A window that holds the prompt but not the answer it asks for is refused.
    lm, backend = _lm(keeper_reply, context_window=need + 100)
    with pytest.raises(TomesError, match="does not fit one call"):
        direct.ask(doc, "Who?", lm=lm, answer_tokens=200)
    assert backend.requests == []  # said before the call, not by an overflow after it
    assert direct.ask(doc, "Who?", lm=lm, answer_tokens=16).calls == 1


def test_direct_keeps_a_reply_that_is_not_json_and_says_so(tmp_path):
    doc = ingest_book(tmp_path)
    lm, backend = _lm([f"I think {KEEPERS[4]} keeps the Elder Island lighthouse."],
                      supports_json_schema=False)
    result = direct.ask(doc, "Who keeps the lighthouse on Elder Island?", lm=lm)
    assert KEEPERS[4] in result.answer and len(backend.requests) == 1  # no second call
    assert any("not the JSON asked for" in f for f in result.details["fallbacks"])
    # No quote: the chunk sharing most words with the answer is the provenance.
    assert chunk_with(doc, "Elder Island") in [p.chunk_id for p in result.provenance]
    # Without constrained decoding the schema is asked for in words.
    assert "JSON schema" in backend.requests[0].messages[0]["content"]


def test_direct_says_when_the_text_has_no_answer(tmp_path):
    doc = ingest_book(tmp_path)
    lm, _ = _lm([json.dumps({"answer": "NO INFORMATION", "quote": ""})])
    result = direct.ask(doc, "Who keeps the lighthouse on Atlantis?", lm=lm)
    assert result.answer == O.NO_ANSWER and result.provenance == []


def test_a_placeholder_of_the_prompt_copied_into_the_answer_is_removed(tmp_path):
    # SmolLM2 answers '{"answer": "<the answer>The author proposes ..."}': the prompt's
    # "<the answer>" is not part of what the user reads.
    doc = ingest_book(tmp_path)
    reply = {"answer": f"<the answer>{KEEPERS[2]} keeps it.</the answer>", "quote": "Cedar Island"}
    lm, _ = _lm([json.dumps(reply)])
    result = direct.ask(doc, "Who keeps the lighthouse on Cedar Island?", lm=lm)
    assert result.answer == f"{KEEPERS[2]} keeps it."


def test_unknown_options_are_refused_naming_the_valid_ones(tmp_path):
    doc = ingest_book(tmp_path)
    lm, backend = _lm(keeper_reply)
    with pytest.raises(TomesError) as caught:
        Tomes().ask(doc, "Who?", strategy="direct", lm=lm, k=3)
    assert "no option k" in caught.value.cause and "answer_tokens" in caught.value.fix
    with pytest.raises(TomesError) as caught:
        Tomes().ask(doc, "Who?", strategy="rag", lm=lm, depth=3)
    assert "k, search, answer_tokens" in caught.value.fix
    with pytest.raises(TomesError) as caught:  # mapreduce too, not a TypeError
        Tomes().ask(doc, "Who?", strategy="mapreduce", lm=lm, k=3)
    assert "map_tokens" in caught.value.fix
    with pytest.raises(TomesError, match="search mode"):
        rag.ask(doc, "Who?", lm=lm, search="psychic")
    with pytest.raises(TomesError, match="k is 0"):
        rag.ask(doc, "Who?", lm=lm, k=0)
    assert backend.requests == []


# --- rag -----------------------------------------------------------------------------


def test_rag_packs_the_top_k_hits_in_rank_order_and_cites_what_the_answer_used(tmp_path):
    doc = ingest_book(tmp_path, islands=12)
    question = "Who keeps the lighthouse on Hazel Island?"
    expected = [h.chunk_id for h in Environment.load(doc).search(question, 4)]
    lm, backend = _lm(keeper_reply)
    result = rag.ask(doc, question, lm=lm, k=4)

    assert result.answer == KEEPERS[7] and result.calls == 1 and len(backend.requests) == 1
    assert backend.requests[0].json_schema == O.ANSWER_SCHEMA
    prompt = backend.requests[0].messages[-1]["content"]
    # The passages are the hybrid search's top 4, numbered in rank order.
    positions = [prompt.index(Environment.load(doc).chunk(c).text) for c in expected]
    assert positions == sorted(positions) and prompt.count("\n[") + prompt.startswith("[") >= 4
    assert result.details["used"] == expected
    hazel = chunk_with(doc, "Hazel Island")
    assert hazel in expected  # the keyword side of the search finds the island's name
    # Provenance is the cited passage only, not every passage shown.
    assert [p.chunk_id for p in result.provenance] == [hazel]
    assert result.details["fallbacks"] == []


def test_rag_leaves_out_what_does_not_fit_and_says_so(tmp_path):
    doc = ingest_book(tmp_path, islands=20)
    window = 700
    lm, backend = _lm(keeper_reply, context_window=window)
    result = rag.ask(doc, "Who keeps the lighthouse on Birch Island?", lm=lm, k=20)
    used = result.details["used"]
    assert 1 <= len(used) < 20
    assert any(f"of 20 passages did not fit" in f for f in result.details["fallbacks"])
    sent = lm.count_messages(backend.requests[0].messages)
    assert sent + O.ANSWER_TOKENS <= window  # packed within the window, answer included


def test_rag_with_no_citation_rests_on_every_passage_shown(tmp_path):
    doc = ingest_book(tmp_path)
    lm, _ = _lm([json.dumps({"answer": "Someone keeps it.", "passages": [99]})])
    result = rag.ask(doc, "Who keeps the lighthouse on Gorse Island?", lm=lm, k=3)
    assert [p.chunk_id for p in result.provenance] == result.details["used"]
    assert len(result.details["used"]) == 3
    assert any("cited none" in f for f in result.details["fallbacks"])


def test_rag_embeds_a_corpus_that_has_no_vectors_yet(tmp_path):
    doc = ingest_book(tmp_path)  # ingested without embedding
    assert Tomes().index_status("isles")["missing"] == 8
    lm, _ = _lm(keeper_reply)
    result = rag.ask(doc, "Who keeps the lighthouse on Alder Island?", lm=lm, k=2)
    assert result.answer == KEEPERS[0]
    status = Tomes().index_status("isles")
    assert status["missing"] == 0 and status["vectors"] > 0


def test_rag_over_a_corpus_cites_chunks_of_several_documents(tmp_path):
    ingest_book(tmp_path, islands=4, name="north.txt")
    (tmp_path / "south").mkdir()
    south = tmp_path / "south" / "south.txt"
    south.write_text(paragraph(5) + "\n\n" + paragraph(6) + "\n", encoding="utf-8")
    Tomes().ingest([south], "isles", embed=False)
    lm, _ = _lm(keeper_reply)
    result = rag.ask("corpus:isles", "Who keeps the lighthouse on Fennel Island?", lm=lm, k=6)
    assert result.answer == KEEPERS[5]
    assert {p.title for p in result.provenance} == {"south"}


# --- resume --------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["direct", "rag"])
def test_a_run_stopped_after_its_call_resumes_from_the_cache(tmp_path, monkeypatch, strategy):
    doc = ingest_book(tmp_path)
    backend = ScriptedBackend(keeper_reply)
    module = direct if strategy == "direct" else rag
    real = module.R.provenance

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(module.R, "provenance", crash)
    with pytest.raises(TomesError) as caught:
        module.ask(doc, "Who keeps the lighthouse on Damson Island?", lm=LM(backend))
    assert "tomes resume" in caught.value.fix
    run = _runs()[0]
    assert run.status == "failed" and len(backend.requests) == 1
    monkeypatch.setattr(module.R, "provenance", real)

    # Resumed through the API, on a fresh backend of the run's own kind: the call that
    # finished comes from the response cache, none goes to the model.
    result = Tomes().resume(run.id)
    assert result.answer == KEEPERS[3] and result.calls == 0 and result.cache_hits == 1
    assert result.run_id == run.id and _runs()[0].status == "done"
    with session_scope() as s:
        assert s.query(Call).filter_by(run_id=run.id, cache_hit=True).count() == 1
    again = Tomes().resume(run.id)  # a finished run: its stored result
    assert again.to_dict() == result.to_dict()
