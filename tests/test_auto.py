"""The auto strategy: the rule, the facts it decides on, and the choice recorded in the
result, the run, `tomes runs` and a resumed run."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from app.api import Tomes
from app.cli import app as cli
from app.errors import TomesError
from app.store import Run, session_scope
from pipelines import auto
from pipelines.auto import Facts, rule
from serving.backends.scripted import ScriptedBackend
from serving.lm import LM
from tests.islands import KEEPERS, ingest_book, keeper_reply


def facts(**changes) -> Facts:
    base = dict(summary=False, tokens=50_000, window=8192, fits=False, local=True,
                local_why="a short factual question (6 words)", strong=True,
                evidence="chunk 3 holds 100% of the question's words", writes_code=False,
                available=("direct", "rag", "recursive", "mapreduce"))
    return Facts(**{**base, **changes})


# --- the rule ------------------------------------------------------------------------


def test_the_rule_picks_by_fit_question_and_hits():
    assert rule(facts(summary=True, fits=True))[0] == "mapreduce"
    assert rule(facts(fits=True))[0] == "direct"
    assert rule(facts())[0] == "rag"
    assert rule(facts(strong=False))[0] == "mapreduce"
    assert rule(facts(local=False, local_why="asks about the whole text"))[0] == "mapreduce"
    # A model that writes code takes the questions rag cannot carry to the recursive
    # controller, where it is registered.
    assert rule(facts(strong=False, writes_code=True))[0] == "recursive"
    assert rule(facts(strong=False, writes_code=True,
                      available=("direct", "rag", "mapreduce")))[0] == "mapreduce"
    assert rule(facts(available=("direct", "mapreduce")))[0] == "mapreduce"
    # A who/where/when question goes to a built memory workspace; to rag while it is not.
    with_memory = ("direct", "memory", "rag", "recursive", "mapreduce")
    assert rule(facts(episodic="where", memory_built=True, available=with_memory))[0] == "memory"
    assert rule(facts(episodic="where", memory_built=False, available=with_memory))[0] == "rag"
    assert rule(facts(episodic="", memory_built=True, available=with_memory))[0] == "rag"
    assert rule(facts(fits=True, episodic="where", memory_built=True,
                      available=with_memory))[0] == "direct"


def test_the_reasons_name_the_facts_they_rest_on():
    assert "8,192-token window" in rule(facts(fits=True, tokens=900))[1]
    assert "900 tokens" in rule(facts(fits=True, tokens=900))[1]
    assert "chunk 3 holds 100%" in rule(facts())[1]
    why = rule(facts(local=False, local_why="the question asks about the whole text ('change')"))[1]
    assert "'change'" in why and "50,000 tokens" in why
    assert "do not carry" in rule(facts(strong=False, evidence="chunk 9 holds 20%"))[1]


@pytest.mark.parametrize("question, local", [
    ("Who keeps the lighthouse on Cedar Island?", True),
    ("At what age are the children to be sold?", True),
    ("How does Elizabeth's opinion of Darcy change over the novel?", False),
    ("Summarize the argument of the pamphlet.", False),
    ("What are the main themes?", False),
    ("List all the keepers and the colours of their doors.", False),
    ("Throughout the book, who visits the lighthouse keepers?", False),
    (" ".join(["why"] * 25) + "?", False),
])
def test_locality_tells_one_fact_questions_from_whole_text_ones(question, local):
    assert auto.locality(question)[0] is local


def test_strength_wants_most_of_the_question_words_in_one_hit():
    class Hit:
        def __init__(self, chunk_id, text):
            self.chunk_id, self.text = chunk_id, text

    hits = [Hit(1, "The gulls nest on the cliffs."),
            Hit(2, "The lighthouse on Cedar Island is kept by Ysolde Carne.")]
    strong, why = auto.strength("Who keeps the lighthouse on Cedar Island?", hits)
    assert strong and "chunk 2, hit 2 of 2" in why
    assert not auto.strength("Who keeps the lighthouse on Cedar Island?", hits[:1])[0]
    assert not auto.strength("Who?", hits)[0]  # too few words to judge by
    assert not auto.strength("Who keeps the lighthouse on Cedar Island?", [])[0]


# --- end to end with the scripted model -------------------------------------------------


def _lm(**kwargs) -> tuple[LM, ScriptedBackend]:
    backend = ScriptedBackend(keeper_reply, **kwargs)
    return LM(backend, cache=False), backend


def _run(run_id: str) -> Run:
    with session_scope() as s:
        run = s.get(Run, run_id)
        s.expunge(run)
        return run


def test_a_target_that_fits_is_read_directly_and_the_choice_is_recorded(tmp_path):
    doc = ingest_book(tmp_path)
    lm, backend = _lm()
    result = Tomes().ask(doc, "Who keeps the lighthouse on Cedar Island?", lm=lm)  # the default
    assert result.pipeline == "direct" and result.answer == KEEPERS[2]
    assert result.details["strategy"] == "direct" and "fits" in result.details["why"]
    assert result.details["auto"]["fits"] is True and len(backend.requests) == 1
    run = _run(result.run_id)
    assert run.params["chosen_by"] == "auto" and run.params["why"] == result.details["why"]
    assert run.result["details"]["why"] == result.details["why"]  # the stored result too
    listed = Tomes().runs()[0]
    assert listed["chosen_by"] == "auto" and listed["why"] == result.details["why"]


def test_a_short_question_with_strong_hits_over_a_long_target_goes_to_rag(tmp_path):
    doc = ingest_book(tmp_path, islands=24, long=True)
    lm, backend = _lm(context_window=1200)  # the book does not fit one call
    result = auto.ask(doc, "Who keeps the lighthouse on Juniper Island?", lm=lm, k=3)
    assert result.pipeline == "rag" and result.answer == KEEPERS[8]
    assert "top hits carry it" in result.details["why"]
    assert result.details["k"] == 3  # the option reached the strategy chosen
    assert len(backend.requests) == 1


def test_a_whole_text_question_over_a_long_target_goes_to_mapreduce(tmp_path):
    doc = ingest_book(tmp_path, islands=24, long=True)
    lm, backend = _lm(context_window=1200)
    result = auto.ask(doc, "How does the colour of the doors change over the book?", lm=lm,
                      k=3, map_tokens=0)
    assert result.pipeline == "mapreduce"
    assert "whole text" in result.details["why"] and "'change'" in result.details["why"]
    # k was for rag: dropped, and said so; map_tokens reached map-reduce.
    assert result.details["dropped_options"] == ["k"]
    assert _run(result.run_id).params["map_tokens"] == 0
    assert len(backend.requests) > 1


def test_weak_hits_send_a_short_question_to_mapreduce(tmp_path):
    doc = ingest_book(tmp_path, islands=24, long=True)
    lm, _ = _lm(context_window=1200)
    result = auto.ask(doc, "Which seabird nests near the quay?", lm=lm)
    assert result.pipeline == "mapreduce" and "do not carry" in result.details["why"]


def test_auto_refuses_unknown_options_before_any_work(tmp_path):
    doc = ingest_book(tmp_path)
    lm, backend = _lm()
    with pytest.raises(TomesError) as caught:
        Tomes().ask(doc, "Who?", lm=lm, colour="red")
    assert "colour" in caught.value.cause and "map_tokens" in caught.value.fix
    assert backend.requests == []


def test_summaries_stay_on_mapreduce(tmp_path):
    doc = ingest_book(tmp_path)
    result = Tomes().summarize(doc, length="short")
    assert result.pipeline == "mapreduce" and "why" not in result.details
    lm, _ = _lm()
    chosen = auto.summarize(doc, length="short", lm=lm)
    assert chosen.pipeline == "mapreduce" and chosen.details["why"] == "a summary reads the whole text"


def test_tomes_runs_shows_the_choice_and_why(tmp_path):
    doc = ingest_book(tmp_path)
    lm, _ = _lm()
    result = Tomes().ask(doc, "Who keeps the lighthouse on Birch Island?", lm=lm)
    runner = CliRunner()
    table = runner.invoke(cli, ["runs"], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "auto:direct" in table.output
    why = runner.invoke(cli, ["runs", "--why"], env={"COLUMNS": "200"})
    assert "fits the 8,192-token window" in why.output
    data = json.loads(runner.invoke(cli, ["runs", "--json"]).output)
    assert data[0]["why"] == result.details["why"]


def test_an_interrupted_auto_run_resumes_with_its_choice(tmp_path, monkeypatch):
    doc = ingest_book(tmp_path)
    backend = ScriptedBackend(keeper_reply)
    from pipelines import direct

    monkeypatch.setattr(direct, "_support", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        auto.ask(doc, "Who keeps the lighthouse on Alder Island?", lm=LM(backend))
    monkeypatch.undo()
    with session_scope() as s:
        run = s.query(Run).one()
        run_id, status, params = run.id, run.status, dict(run.params)
    assert status == "interrupted" and params["chosen_by"] == "auto"  # saved as it started
    result = Tomes().resume(run_id)
    assert result.answer == KEEPERS[0] and result.cache_hits == 1
    assert result.details["strategy"] == "direct" and result.details["why"] == params["why"]
