"""The episodic memory workspace with a scripted operator: a man who changes his name,
moves and changes roles; incremental add of a second story; removal of a document."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app import settings
from app.api import Tomes
from app.store import session_scope
from memory import workspace as W
from memory.operator import Source, read_reply
from memory.schema import MemEntity, MemExtraction, MemMention, MemState
from pipelines import episodic
from serving.backends.scripted import ScriptedBackend
from serving.lm import LM
from tests import story

QUESTION = "Where was Tom Brown when Mary Shaw saw the Albatross burn?"


def _answer(request) -> str:
    """The scripted reader: answers with the note that says where the entity was."""
    prompt = request.messages[-1]["content"]
    for line in prompt.splitlines():
        m = re.match(r"\[(\d+)\] When .*burn.*: Tom Brown was in (\w+)", line)
        if m:
            return json.dumps({"answer": m.group(2), "notes": [int(m.group(1))]})
    return json.dumps({"answer": "not in the notes", "notes": []})


def _lm(replies=story.REPLIES, other=_answer) -> LM:
    script = story.operator_reply(replies)
    return LM(ScriptedBackend(lambda r: script(r, other)))


def _ingest(tmp_path: Path, name: str, chapters: list[str], corpus: str = "tales") -> int:
    path = story.write(tmp_path / name, chapters)
    with settings.override(chunk_tokens=45):  # one chapter per chunk
        report = Tomes().ingest([path], corpus, embed=False)
    return report.added[0].document_id


def _workspace(doc_ids: list[int]) -> W.Workspace:
    with session_scope() as s:
        return W.load(s, doc_ids)


def _operator_prompts(lm: LM) -> list[str]:
    return [r.messages[-1]["content"] for r in lm.backend.requests
            if r.messages[-1]["content"].startswith("Passage:")]


@pytest.fixture
def built(tmp_path: Path) -> tuple[int, LM]:
    doc = _ingest(tmp_path, "story.md", story.CHAPTERS)
    lm = _lm()
    episodic.build(doc, lm=lm)
    return doc, lm


def test_name_change_merges_aliases_into_one_entity(built) -> None:
    doc, _lm_ = built
    ws = _workspace([doc])
    people = [e for e in ws.entities.values() if e.kind == "person"]
    assert sorted(e.name for e in people) == ["Mary Shaw", "Tom Brown"]
    tom = ws.find("Captain Blake")[0]
    assert tom is ws.find("Blake")[0] is ws.find("Tom Brown")[0]
    assert set(tom.aliases) == {"Tom Brown", "Captain Blake", "Blake"}
    # Every mention points at its chunk and its span in the document's text.
    text = Tomes().text(doc)
    with session_scope() as s:
        mentions = s.scalars(select(MemMention).where(MemMention.entity_id == tom.id)).all()
        assert {text[m.start:m.end] for m in mentions} == {"Tom Brown", "Captain Blake", "Blake"}
    assert sorted(e.name for e in ws.places) == ["Canterbury", "Dover", "London"]


def test_state_history_is_kept_in_order_with_time_and_place(built) -> None:
    doc, _ = built
    ws = _workspace([doc])
    tom = ws.find("Tom Brown")[0]
    timeline = ws.timeline(tom.id)
    roles = [(i["text"], i["place"]) for i in timeline if i["type"] == "role"]
    assert roles == [("clerk", "London"), ("porter", "Dover"), ("captain of the Albatross", "Dover")]
    states = [i["text"] for i in timeline if i["type"] == "state"]
    assert states == ["works on the docks", "in prison"]
    events = [i for i in timeline if i["type"] == "event"]
    assert [e["text"] for e in events] == [
        "met at the harbour office", "sailed to Dover", "commanded the ship Albatross",
        "was arrested for the fire and taken to prison"]
    # A relative time keeps its text and its anchor, and is counted from it.
    sailed = events[1]
    assert (sailed["time"], sailed["time_anchor"], sailed["date"]) == (
        "Two days later", "12 March 1850", "1850-03-14")
    # The chapter that names no place gets the last one, marked carried.
    commanded = events[2]
    assert (commanded["place"], commanded["place_carried"]) == ("Dover", True)
    # "That evening": no date of its own, counted from the last dated event.
    assert events[3]["time_anchor"] == "4 June 1852"
    assert [i["ordinal"] for i in timeline] == sorted(i["ordinal"] for i in timeline)


def test_where_was_x_when_y_happened_is_answered_from_the_workspace(built) -> None:
    doc, lm = built
    before = len(lm.backend.requests)
    result = Tomes().ask(doc, QUESTION, strategy="memory", lm=lm)
    assert result.answer == "Dover"
    assert result.details["workspace"] == "existing"
    new = lm.backend.requests[before:]
    assert len(new) == 1  # one answer call, no operator calls
    prompt = new[0].messages[-1]["content"]
    # The notes come from the workspace, not from the passages.
    assert "found work on the docks" not in prompt and "Tom Brown sailed to Dover" in prompt
    # It rests on the chunk that put him in Dover, with that sentence as the quote.
    (prov,) = result.provenance
    assert "sailed to Dover" in prov.quote
    chunk_text = Tomes().text(doc, prov.start, prov.end)
    assert prov.quote in chunk_text
    assert result.details["context_tokens"] == lm.count_tokens(result.details["context"])
    assert result.details["context_tokens"] < 400


def test_ask_builds_the_workspace_first_and_says_so(tmp_path: Path) -> None:
    doc = _ingest(tmp_path, "story.md", story.CHAPTERS)
    events = []
    lm = _lm()
    result = episodic.ask(doc, QUESTION, lm=lm, on_event=events.append)
    assert result.details["workspace"] == "built first"
    assert any(e.stage == "extract" and "building the memory workspace first" in e.message
               for e in events)
    assert len(_operator_prompts(lm)) == 4
    assert result.answer == "Dover"


def test_incremental_add_reads_only_the_new_document(built, tmp_path: Path) -> None:
    doc, lm = built
    second = _ingest(tmp_path, "later.md", story.SECOND_STORY)
    lm2 = _lm({**story.REPLIES, **story.SECOND_REPLIES})
    result = episodic.build("corpus:tales", lm=lm2)
    prompts = _operator_prompts(lm2)
    assert len(prompts) == 2 and all("Mary Shaw" in p and "Tom Brown" not in p for p in prompts)
    assert result.details["workspace"] == "updated"
    ws = _workspace([doc, second])
    mary = ws.find("Mary Shaw")
    assert len(mary) == 1 and len(ws.find("Captain Blake")) == 1
    assert {c for c in mary[0].chunks} & {c for c in ws.entities[mary[0].id].chunks}
    # The open question from the first story is answered by the second.
    (question,) = ws.questions
    assert question.answers[0][0] == "the harbour master"
    assert question.answers[0][1].document_id == second
    # A per-document view shows only what that document says.
    first_only = _workspace([doc])
    assert first_only.counts()["questions"] == 1 and not first_only.questions[0].answers
    roles = [i["text"] for i in ws.timeline(mary[0].id) if i["type"] == "role"]
    assert roles == ["schoolmistress"]
    # Building again reads nothing.
    lm3 = _lm()
    again = episodic.build("corpus:tales", lm=lm3)
    assert _operator_prompts(lm3) == [] and again.details["workspace"] == "existing"


def test_removing_a_document_removes_what_came_only_from_it(built, tmp_path: Path) -> None:
    doc, _ = built
    second = _ingest(tmp_path, "later.md", story.SECOND_STORY)
    episodic.build("corpus:tales", lm=_lm({**story.REPLIES, **story.SECOND_REPLIES}))
    Tomes().remove(doc)
    ws = _workspace([second])
    names = {e.name for e in ws.entities.values()}
    # Tom appears in the second story as Captain Blake; London only in the first.
    assert names == {"Mary Shaw", "Captain Blake", "Canterbury"}
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(MemEntity)) == 3
        assert s.scalar(select(func.count()).select_from(MemExtraction)) == 2
        left = s.scalars(select(MemState.value)).all()
        assert left == ["schoolmistress"]
    blake = ws.find("Blake")[0]
    assert blake.aliases == ["Captain Blake"]  # the names only the first story used are gone


def test_ambiguous_names_go_to_the_model_and_only_those(tmp_path: Path) -> None:
    filler = " The rain fell on the grey roofs of the town all through that long winter."
    chapters = ["# A\n\nTom Brown and Mary Brown lived in Leeds." + filler,
                "# B\n\nBrown wrote a letter." + filler]
    replies = {
        "lived in Leeds": {"entities": [{"name": "Tom Brown", "kind": "person"},
                                        {"name": "Mary Brown", "kind": "person"}],
                           "states": [], "events": [], "questions": []},
        "wrote a letter": {"entities": [{"name": "Brown", "kind": "person"}], "states": [],
                           "events": [{"actors": ["Brown"], "action": "wrote a letter",
                                       "time": "", "place": ""}], "questions": []},
    }
    asked = []

    def verify(request):
        prompt = request.messages[-1]["content"]
        asked.append(prompt)
        return json.dumps({"same": "B: Mary Brown" in prompt})

    doc = _ingest(tmp_path, "browns.md", chapters)
    lm = _lm(replies, verify)
    result = episodic.build(doc, lm=lm)
    assert len(asked) == 2 and result.details["built"]["verify_calls"] == 2
    ws = _workspace([doc])
    mary = ws.find("Mary Brown")[0]
    assert "Brown" in mary.aliases and "Brown" not in ws.find("Tom Brown")[0].aliases


def test_operator_tolerates_noise_from_small_models() -> None:
    text = "Anna Karlsson met the baker in Uppsala."
    src = [Source(chunk_id=7, start=100, text=text)]
    reply = {
        "entities": [{"name": "Anna Karlsson", "kind": "person"}, {"name": "name", "kind": "x"},
                     {"name": "Zorro", "kind": "person"}, {"name": "she", "kind": "person"},
                     "Uppsala", 42, {"name": ""}],
        "states": [{"entity": "Anna Karlsson", "role": "role", "state": "job, title, position"},
                   {"entity": "Anna Karlsson", "role": "baker's friend", "state": None}],
        "events": [{"actors": "Anna Karlsson", "action": "met the baker", "time": "unknown",
                    "place": "Uppsala"}, {"actors": [], "action": "nothing"}, "junk"],
        "questions": "none",
    }
    (record,) = read_reply(reply, "", "json", src)
    assert [e["name"] for e in record["entities"]] == ["Anna Karlsson", "Uppsala"]
    assert record["entities"][0]["start"] == 100 and record["entities"][0]["end"] == 113
    assert [(s["attribute"], s["value"]) for s in record["states"]] == [("role", "baker's friend")]
    (event,) = record["events"]
    assert event == {**event, "actors": ["Anna Karlsson"], "time": "", "place": "Uppsala"}
    assert record["dropped"] >= 4
    # Not JSON at all: names in both the reply and the passage are kept, nothing else.
    (fallback,) = read_reply(None, "I think Anna Karlsson and Bob Smith", "fallback", src)
    assert [e["name"] for e in fallback["entities"]] == ["Anna Karlsson"]


def test_unparseable_replies_are_retried_then_recorded_as_fallbacks(tmp_path: Path) -> None:
    doc = _ingest(tmp_path, "story.md", story.CHAPTERS[:1])
    lm = LM(ScriptedBackend(["Tom Brown is a clerk in London, I believe."]))
    result = episodic.build(doc, lm=lm)
    assert len(lm.backend.requests) == 2  # the call and its one retry
    assert result.details["built"]["parsed"] == {"fallback": 1}
    assert any("not the JSON" in f for f in result.details["fallbacks"])
    ws = _workspace([doc])
    assert {e.name for e in ws.entities.values()} == {"Tom Brown", "London"}


def test_extraction_is_parallel_up_to_capacity_and_cached(tmp_path: Path) -> None:
    doc = _ingest(tmp_path, "story.md", story.CHAPTERS)
    script = story.operator_reply(story.REPLIES)
    backend = ScriptedBackend(script, latency=0.05, capacity=2)
    episodic.build(doc, lm=LM(backend))
    assert backend.max_in_flight == 2
    # The same chunks read again (a removed and re-added copy) come from the cache.
    with session_scope() as s:
        s.execute(MemExtraction.__table__.delete())
    again = episodic.build(doc, lm=LM(ScriptedBackend(script)))
    assert again.cache_hits == 4 and again.calls == 0


def test_migration_tables_match_the_models(tmp_path: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from app.store import Base, open_store

    engine = open_store(tmp_path / "m.db")
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diffs == []
    assert any(t.startswith("memory_") for t in Base.metadata.tables)


def test_a_failed_build_resumes_without_reading_finished_chunks_again(tmp_path: Path) -> None:
    from app.errors import TomesError
    from pipelines import resume

    doc = _ingest(tmp_path, "story.md", story.CHAPTERS)
    script = story.operator_reply(story.REPLIES)

    def flaky(request):
        if "arrested for the fire" in request.messages[-1]["content"]:
            raise RuntimeError("the server went away")
        return script(request)

    first = LM(ScriptedBackend(flaky), cache=False)  # the checkpoint alone must carry the work
    with pytest.raises(TomesError, match="tomes resume") as err:
        episodic.build(doc, lm=first, run_id="mem-run")
    assert "the server went away" in str(err.value)
    done_before = {p for p in _operator_prompts(first) if "arrested for the fire" not in p}
    assert _workspace([doc]).extracted == 0  # nothing reconciled from a failed map

    second = LM(ScriptedBackend(script), cache=False)
    result = episodic.resume("mem-run", lm=second)
    again = _operator_prompts(second)
    assert any("arrested for the fire" in p for p in again)
    assert not set(again) & done_before  # finished chunks were not read again
    assert result.details["built"]["chunks"] == 4 and _workspace([doc]).complete
    # Through the registry (tomes resume): a finished run returns its result.
    assert resume("mem-run").answer == result.answer


@pytest.mark.parametrize("text, iso, relative", [
    ("12 March 1850", "1850-03-12", False), ("March 12, 1850", "1850-03-12", False),
    ("3rd of June 1852", "1852-06-03", False), ("March 1850", "1850-03", False),
    ("in 1851", "1851", False), ("1850-03-12", "1850-03-12", False),
    ("two days later", None, True), ("the next morning", None, True), ("at dusk", None, False),
])
def test_times_are_parsed_as_written_or_kept_relative(text: str, iso: str | None, relative: bool) -> None:
    from memory._dates import parse

    when = parse(text)
    assert (when.date, when.relative) == (iso, relative)


@pytest.mark.parametrize("anchor, text, moved", [
    ("1850-03-12", "two days later", "1850-03-14"), ("1850-01-31", "a month later", "1850-02-28"),
    ("1850", "two years later", "1852"), ("1850", "a week later", "1850"),
    ("1850-03-12", "three weeks before", "1850-02-19"), ("1850-03-12", "the next day", "1850-03-13"),
    (None, "two days later", None), ("1850-03-12", "some days later", None),
])
def test_relative_times_count_from_their_anchor(anchor, text, moved) -> None:
    from memory._dates import shift

    assert shift(anchor, text) == moved


def test_auto_answers_a_who_where_when_question_from_a_built_workspace(tmp_path) -> None:
    # The story among quiet chapters: too long for one call in this window.
    quiet = [f"# Day {n}\n\nThe sea was calm and the harbour slept through day {n}. "
             "Nothing of note was written in the log that morning or evening." for n in range(40)]
    doc = _ingest(tmp_path, "long.md", story.CHAPTERS + quiet)
    script = story.operator_reply(story.REPLIES)
    lm = LM(ScriptedBackend(lambda r: script(r, _answer), context_window=1500))
    before = Tomes().ask(doc, QUESTION, strategy="auto", lm=lm).details
    assert before["strategy"] != "memory" and before["auto"]["memory_built"] is False
    episodic.build(doc, lm=lm)
    calls = len(lm.backend.requests)
    result = Tomes().ask(doc, QUESTION, strategy="auto", lm=lm)
    assert result.details["strategy"] == "memory" and "'where'" in result.details["why"]
    assert result.answer == "Dover" and len(lm.backend.requests) == calls + 1


def test_the_environment_offers_the_targets_workspace(built) -> None:
    from pipelines.environment import Environment

    doc, _ = built
    ws = Environment.load(doc).memory
    assert ws.complete and ws.document_ids == [doc]
    assert [e.name for e in ws.find("Tom Brown")]  # what the build stored, read through it
