"""Map-reduce with the scripted model: structure, budgets, confidence, bad JSON, runs."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from app import settings
from app.api import Tomes
from app.errors import TomesError
from app.events import Event
from app.store import Chunk, Run, session_scope
from pipelines import _mapreduce_prompts as P
from pipelines import mapreduce
from pipelines._structured import ParseError, confidence, parse_object
from serving.backends.scripted import ScriptedBackend
from serving.base import ChatRequest
from serving.lm import LM, current_run

FILLER = [
    "The village of Harwick sits between two hills and a slow brown river. Fog lies on "
    "the water most mornings.",
    "Every autumn the farmers bring apples to the market square to sell. The best ones "
    "go to the cider press.",
    "The old mill has not turned since the great flood many years ago. Ivy now covers "
    "its broken wheel.",
    "Children walk to the school house along the lane lined with elms. They sing on "
    "the way home.",
    "The baker opens before sunrise and closes when the bread is gone. His rye loaf is "
    "famous.",
    "A stone bridge crosses the river near the church with the green door. Carts rumble "
    "over it at noon.",
]
PARIS = "The captain's letter says plainly that the treasure is buried in Paris under the old bridge."
LYON = "A drunk sailor at the inn once guessed that the treasure might lie somewhere near Lyon."


@pytest.fixture(autouse=True)
def _records_as_scripted():
    """These tests script the model's records to test the pipeline's mechanics, with
    records that need not be borne out by their text; grounding has its own tests
    (tests/test_grounding.py)."""
    with settings.override(grounding="off"):
        yield



def record(answer: str, conf: int, extracted: str = "", rationale: str = "r") -> str:
    return json.dumps({"extracted": extracted or answer, "rationale": rationale,
                       "answer": answer, "confidence": conf})


def kind(req: ChatRequest) -> str:
    system = req.messages[0]["content"]  # LM may append a schema note to it
    if system.startswith(P.SYSTEM_MAP):
        return "map"
    if system.startswith(P.SYSTEM_SUMMARY):
        return "reduce"
    return "reduce" if '"notes": [' in req.messages[1]["content"] else "collapse"


def text_of(req: ChatRequest) -> str:
    return req.messages[1]["content"]


class SpyLM(LM):
    """Records the node name and run id of every call (what the call log will store)."""

    def __init__(self, backend: ScriptedBackend) -> None:
        super().__init__(backend, cache=False)
        self.seen: list[tuple[str | None, str | None]] = []

    async def achat(self, prompt: Any, **kwargs: Any):  # type: ignore[override]
        self.seen.append((kwargs.get("node"), current_run.get()))
        return await super().achat(prompt, **kwargs)


def ingest_story(tmp_path: Path, paras: list[str], name: str = "story.txt",
                 chunk_tokens: int = 40) -> int:
    path = tmp_path / name
    path.write_text("\n\n".join(paras) + "\n", encoding="utf-8")
    with settings.override(chunk_tokens=chunk_tokens):
        report = Tomes().ingest([path], "tales", embed=False)
    assert not report.failed, report.failed
    return (report.added or report.skipped)[0].document_id


def chunk_rows(doc_id: int) -> list[Chunk]:
    with session_scope() as s:
        return list(s.query(Chunk).filter_by(document_id=doc_id).order_by(Chunk.ordinal))


def chunk_with(doc_id: int, needle: str) -> int:
    return next(c.id for c in chunk_rows(doc_id) if needle in c.text)


# --- summarization ---------------------------------------------------------------------


def test_summary_maps_every_chunk_and_cites_real_chunks(tmp_path: Path) -> None:
    doc = ingest_story(tmp_path, FILLER * 2)
    n_chunks = len(chunk_rows(doc))
    assert n_chunks >= 3

    def reply(req: ChatRequest) -> str:
        if kind(req) == "map":
            return record("A part about the village of Harwick.", 4)
        return "Harwick is a quiet village with a mill, a school and a bridge over the river."

    backend = ScriptedBackend(reply)
    lm = SpyLM(backend)
    events: list[Event] = []
    result = mapreduce.summarize(doc, map_tokens=0, lm=lm, on_event=events.append, length="short")

    assert result.answer.startswith("Harwick is a quiet village")
    ids = {c.id for c in chunk_rows(doc)}
    assert {p.chunk_id for p in result.provenance} == ids  # a summary rests on every part
    for p in result.provenance:
        assert p.document_id == doc and p.start < p.end and p.quote
    # One map per chunk, one reduce; every call tagged with its node and the run id.
    nodes = [n for n, _ in lm.seen]
    assert nodes.count("map") == n_chunks and nodes.count("reduce") == 1
    assert {r for _, r in lm.seen} == {result.run_id}
    assert result.calls == len(backend.requests) == n_chunks + 1
    assert result.prompt_tokens > 0 and result.completion_tokens > 0
    # Structured output goes through the backend's JSON-schema support.
    maps = [r for r in backend.requests if kind(r) == "map"]
    assert all(r.json_schema == P.RECORD_SCHEMA for r in maps)
    assert all(r.max_tokens == P.RECORD_MAX_TOKENS for r in maps)
    # Progress: mapped k/n up to n, then reduce.
    done = [e.done for e in events if e.stage == "map"]
    assert done[-1] == n_chunks and max(done) == n_chunks
    assert {e.total for e in events if e.stage == "map"} == {n_chunks}
    assert events[-1].stage == "reduce" and events[-1].done == 1

    with session_scope() as s:
        run = s.get(Run, result.run_id)
        assert run.status == "done" and run.pipeline == "mapreduce"
        assert run.target == f"doc:{doc}" and run.params["length"] == "short"
        assert run.answer == result.answer
        assert run.result["calls"] == result.calls
        assert [p["chunk_id"] for p in run.result["provenance"]] == [p.chunk_id for p in result.provenance]


def test_maps_run_concurrently_up_to_the_backend_capacity(tmp_path: Path) -> None:
    doc = ingest_story(tmp_path, FILLER * 3)
    state = {"now": 0, "peak": 0}

    class Counting(ScriptedBackend):
        async def achat(self, request: ChatRequest):
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
            try:
                return await super().achat(request)
            finally:
                state["now"] -= 1

    backend = Counting(lambda r: record("part", 3), latency=0.05, capacity=3)
    mapreduce.summarize(doc, map_tokens=0, lm=LM(backend, cache=False))
    assert state["peak"] == 3  # parallel, and never above capacity


def test_summary_options_reach_the_reduce_prompt(tmp_path: Path) -> None:
    doc = ingest_story(tmp_path, FILLER)
    backend = ScriptedBackend(lambda r: record("part", 3) if kind(r) == "map"
                              else "A long enough summary of the village for the test.")
    mapreduce.summarize(doc, map_tokens=0, lm=LM(backend, cache=False), length="long", style="bullet points")
    reduce = [r for r in backend.requests if kind(r) == "reduce"][0]
    assert "Style: bullet points" in text_of(reduce)
    assert reduce.max_tokens == P.LENGTHS["long"][1]
    with pytest.raises(TomesError, match="length"):
        mapreduce.summarize(doc, lm=LM(backend, cache=False), length="huge")


def test_repeated_sentences_are_dropped_from_the_summary(tmp_path: Path) -> None:
    doc = ingest_story(tmp_path, FILLER)
    loop = "The village is quiet. The mill is old. The village is quiet. The village is quiet."
    backend = ScriptedBackend(lambda r: record("part", 3) if kind(r) == "map" else loop)
    result = mapreduce.summarize(doc, map_tokens=0, lm=LM(backend, cache=False))
    assert result.answer == "The village is quiet. The mill is old."


# --- question answering ----------------------------------------------------------------


def qa_reply(reduce_reply: str | None = None):
    def reply(req: ChatRequest) -> str:
        k = kind(req)
        if k == "map":
            text = text_of(req)
            if "Paris under the old bridge" in text:
                return record("Paris", 5, "the treasure is buried in Paris under the old bridge")
            if "near Lyon" in text:
                return record("Lyon", 2, "a sailor guessed Lyon")
            return record(P.NO_INFO, 1, "")
        return reduce_reply if reduce_reply is not None else "not json at all"

    return reply


def test_no_information_chunks_are_dropped_and_confidence_orders_notes(tmp_path: Path) -> None:
    doc = ingest_story(tmp_path, FILLER[:3] + [LYON] + FILLER[3:] + [PARIS])
    paris, lyon = chunk_with(doc, "Paris under"), chunk_with(doc, "near Lyon")
    assert paris != lyon
    reduce_reply = json.dumps({"answer": "In Paris, under the old bridge.", "rationale": "note 1",
                               "confidence": 5, "notes": [1]})
    backend = ScriptedBackend(qa_reply(reduce_reply))
    result = mapreduce.ask(doc, "Where is the treasure buried?", map_tokens=0, lm=LM(backend, cache=False))

    reduce = [r for r in backend.requests if kind(r) == "reduce"]
    assert len(reduce) == 1
    prompt = text_of(reduce[0])
    # Only the two notes with information reach the reduce, the confident one first.
    assert "[1] (confidence 5) Paris" in prompt and "[2] (confidence 2) Lyon" in prompt
    assert "[3]" not in prompt
    assert result.details["dropped"] == len(chunk_rows(doc)) - 2
    assert result.answer == "In Paris, under the old bridge."
    assert [p.chunk_id for p in result.provenance] == [paris]
    assert "Paris" in result.provenance[0].quote


def test_conflicts_fall_to_the_most_confident_note_when_the_reduce_fails(tmp_path: Path) -> None:
    # Lyon comes later in the document and first in the map replies' order: only the
    # confidence can pick Paris.
    doc = ingest_story(tmp_path, [PARIS] + FILLER + [LYON])
    paris = chunk_with(doc, "Paris under")
    backend = ScriptedBackend(qa_reply("the notes disagree, I cannot say"))
    result = mapreduce.ask(doc, "Where is the treasure buried?", map_tokens=0, lm=LM(backend, cache=False))
    assert result.answer == "Paris"
    assert [p.chunk_id for p in result.provenance] == [paris]
    # The reduce's unparseable reply was retried once with the parse error.
    reduce = [r for r in backend.requests if kind(r) == "reduce"]
    assert len(reduce) == 2 and "not valid JSON" in reduce[1].messages[-1]["content"]


def test_reduce_citations_outside_the_notes_are_ignored(tmp_path: Path) -> None:
    doc = ingest_story(tmp_path, FILLER + [PARIS, LYON])
    reduce_reply = json.dumps({"answer": "Paris or Lyon", "rationale": "", "confidence": 3,
                               "notes": [7, 99, -1]})
    result = mapreduce.ask(doc, "Where is the treasure?", map_tokens=0,
                           lm=LM(ScriptedBackend(qa_reply(reduce_reply)), cache=False))
    ids = {c.id for c in chunk_rows(doc)}
    # No valid citation: the answer rests on the most confident notes, never on made-up ids.
    assert [p.chunk_id for p in result.provenance] == [chunk_with(doc, "Paris under")]
    assert {p.chunk_id for p in result.provenance} <= ids


def test_no_information_anywhere_skips_the_reduce(tmp_path: Path) -> None:
    doc = ingest_story(tmp_path, FILLER)
    backend = ScriptedBackend(qa_reply())
    result = mapreduce.ask(doc, "Where is the treasure?", map_tokens=0, lm=LM(backend, cache=False))
    assert "no information" in result.answer.lower()
    assert result.provenance == []
    assert all(kind(r) == "map" for r in backend.requests)


def test_copied_example_answers_count_as_no_information(tmp_path: Path) -> None:
    doc = ingest_story(tmp_path, FILLER)
    # The 135M model copies the calibration example; Dunmere is not in the text.
    backend = ScriptedBackend(lambda r: record("Dunmere", 5) if kind(r) == "map" else "{}")
    result = mapreduce.ask(doc, "Where is the treasure?", map_tokens=0, lm=LM(backend, cache=False))
    assert result.details["dropped"] == len(chunk_rows(doc))
    assert "Dunmere" not in result.answer


# --- malformed replies -----------------------------------------------------------------


def test_malformed_json_is_retried_then_falls_back_to_the_text(tmp_path: Path) -> None:
    doc = ingest_story(tmp_path, FILLER[:2] + [PARIS] + FILLER[2:4] + [LYON])
    fenced, retried, prose = (chunk_with(doc, FILLER[0][:20]), chunk_with(doc, "Paris under"),
                              chunk_with(doc, "near Lyon"))
    assert len({fenced, retried, prose}) == 3
    texts = {c.id: c.text for c in chunk_rows(doc)}

    def reply(req: ChatRequest) -> str:
        if kind(req) != "map":
            return "{}"
        prompt = text_of(req)
        is_retry = len(req.messages) > 2
        if texts[fenced] in prompt:
            return "```json\n{'extracted': 'a village', 'answer': 'a village', 'confidence': 3,}\n```"
        if texts[retried] in prompt:
            return record("Paris", 5) if is_retry else '{"answer": "Paris", "confidence": 5 "oops'
        if texts[prose] in prompt:
            return "A sailor thought it was Lyon, but he was drunk."
        return record(P.NO_INFO, 1, "")

    backend = ScriptedBackend(reply, supports_json_schema=False)
    result = mapreduce.ask(doc, "Where is the treasure?", map_tokens=0, lm=LM(backend, cache=False))

    assert result.details["parsed"] == {"json": len(texts) - 2, "retry": 1, "fallback": 1}
    retries = [r for r in backend.requests if kind(r) == "map" and len(r.messages) > 2]
    assert len(retries) == 2  # the broken object and the prose, once each
    assert all("not valid JSON" in r.messages[-1]["content"] for r in retries)
    # Without schema support, no schema is sent and a stop sequence bounds the reply.
    assert all(r.json_schema is None and r.stop for r in backend.requests)
    # The fallback record carried the prose as extracted information into the reduce.
    reduce = [r for r in backend.requests if kind(r) == "reduce"][0]
    assert "A sailor thought it was Lyon" in text_of(reduce)
    assert result.answer == "Paris"  # reduce replied "{}": the most confident note


def test_a_backend_failure_fails_the_run_with_a_clear_error(tmp_path: Path) -> None:
    from serving.base import BackendError

    doc = ingest_story(tmp_path, FILLER)
    backend = ScriptedBackend([BackendError("server unreachable at http://x; start it")])
    with pytest.raises(TomesError, match="tomes resume") as err:
        mapreduce.summarize(doc, map_tokens=0, lm=LM(backend, cache=False), run_id="failing-run")
    assert "server unreachable" in str(err.value)
    with session_scope() as s:
        run = s.get(Run, "failing-run")
        assert run.status == "failed" and "server unreachable" in run.error


# --- budgets ---------------------------------------------------------------------------


class UncheckedLM(LM):
    """Sends every request on, however big: the LM's own check would refuse an oversized
    one before the backend saw it, and a test of the pipeline's budgets would see only
    requests that fit whatever the pipeline did."""

    async def _check_fits(self, messages, max_tokens):  # type: ignore[override]
        return self.count_messages(messages)


def fits_window(req: ChatRequest, lm: LM) -> bool:
    return lm.count_messages(req.messages) + req.max_tokens <= lm.context_window


def test_collapse_runs_when_notes_exceed_the_reduce_budget(tmp_path: Path) -> None:
    doc = ingest_story(tmp_path, FILLER * 4)
    n_chunks = len(chunk_rows(doc))
    long_note = "the village " * 60  # ~ 120 tokens per note: they cannot all fit

    def reply(req: ChatRequest) -> str:
        if kind(req) == "reduce":
            return "The village of Harwick, summarized from merged notes."
        return record(long_note, 4, extracted=long_note)

    backend = ScriptedBackend(reply, context_window=1400)
    lm = SpyLM(backend)
    lm._check_fits = UncheckedLM._check_fits.__get__(lm)  # see the pipeline's own sizes
    events: list[Event] = []
    result = mapreduce.summarize(doc, map_tokens=0, lm=lm, on_event=events.append)

    collapses = [r for r in backend.requests if kind(r) == "collapse"]
    assert collapses, "the notes exceed the reduce budget, so they must be collapsed"
    assert all(fits_window(r, lm) for r in backend.requests)
    assert result.details["collapse_levels"] >= 1
    assert any(e.stage == "collapse" for e in events)
    assert ("collapse", result.run_id) in lm.seen
    # Collapsed notes keep the union of their chunk ids: provenance covers every chunk.
    assert {p.chunk_id for p in result.provenance} == {c.id for c in chunk_rows(doc)}
    assert len([r for r in backend.requests if kind(r) == "map"]) == n_chunks


def test_oversized_records_and_chunks_are_cut_to_fit(tmp_path: Path) -> None:
    # A small window without schema support: chunks are bigger than the room a map
    # prompt leaves, so they are split into parts; the model's huge unstructured replies
    # become notes bigger than a collapse prompt's room, so they are cut, never sent whole.
    backend = ScriptedBackend(context_window=800, supports_json_schema=False)
    probe = mapreduce.MapReduce(None, LM(backend, cache=False), mode="summary", length="short")  # type: ignore[arg-type]
    map_room, collapse_room = probe.map_budget(), probe.collapse_budget()
    doc = ingest_story(tmp_path, [" ".join(FILLER)] * 6, chunk_tokens=map_room + 100)
    assert all(c.n_tokens > map_room for c in chunk_rows(doc))
    huge = "words " * 900
    assert backend.tokenizer().count(huge[:1500]) > collapse_room  # a fallback note

    def reply(req: ChatRequest) -> str:
        return huge if kind(req) != "reduce" else "A summary that is long enough to keep."

    backend.replies = reply
    lm = UncheckedLM(backend, cache=False)
    result = mapreduce.summarize(doc, map_tokens=0, lm=lm, length="short")
    assert backend.requests and all(fits_window(r, lm) for r in backend.requests)
    maps = [r for r in backend.requests if kind(r) == "map" and len(r.messages) == 2]
    assert len(maps) > len(chunk_rows(doc))  # split into parts
    assert all("(part " in text_of(r) for r in maps)
    assert result.details["collapse_levels"] >= 1
    assert any("…" in text_of(r) for r in backend.requests if kind(r) == "collapse")
    assert {p.chunk_id for p in result.provenance} == {c.id for c in chunk_rows(doc)}


def test_map_tokens_packs_consecutive_chunks_into_one_call(tmp_path: Path) -> None:
    doc = ingest_story(tmp_path, FILLER * 2)
    rows = chunk_rows(doc)
    with session_scope() as s:
        from app.store import Document

        full = s.get(Document, doc).text
    backend = ScriptedBackend(lambda r: record("part", 3) if kind(r) == "map"
                              else "A summary of the village, long enough to keep.")
    events: list[Event] = []
    result = mapreduce.summarize(doc, lm=LM(backend, cache=False), map_tokens=80,
                                 on_event=events.append)
    maps = [r for r in backend.requests if kind(r) == "map"]
    assert 1 < len(maps) < len(rows)
    # Each map reads an exact span of the document made of whole consecutive chunks.
    packed = [e.data["chunk_ids"] for e in events if e.stage == "map" and e.done]
    assert sorted(i for ids in packed for i in ids) == [c.id for c in rows]
    by_id = {c.id: c for c in rows}
    for ids in packed:
        span = full[by_id[ids[0]].start:by_id[ids[-1]].end]
        assert any(span in text_of(r) for r in maps)
        assert sum(by_id[i].n_tokens for i in ids) <= 80 or len(ids) == 1
    assert {p.chunk_id for p in result.provenance} == set(by_id)


def test_a_target_that_fits_one_packed_call_is_answered_by_one_call(tmp_path: Path) -> None:
    doc = ingest_story(tmp_path, FILLER[:3] + [PARIS] + FILLER[3:])
    rows = chunk_rows(doc)
    assert len(rows) > 2
    backend = ScriptedBackend(lambda r: json.dumps({
        "answer": "Paris, under the old bridge", "confidence": 5,
        "rationale": "the captain's letter says the treasure is buried in Paris"}))
    # The packing size comes from the settings (TOMES_MAP_TOKENS) when not passed.
    with settings.override(map_tokens=4000):
        result = mapreduce.ask(doc, "Where is the treasure?", lm=LM(backend, cache=False))
    assert len(backend.requests) == 1
    (req,) = backend.requests
    assert req.messages[0]["content"].startswith(P.SYSTEM_DIRECT)
    assert all(c.text in text_of(req) for c in rows)  # the whole document, in one prompt
    assert "Paris" in result.answer and result.details["direct"] and result.calls == 1
    # Provenance: the chunks that carry the answer's words, not every chunk it read.
    assert chunk_with(doc, "Paris") in {p.chunk_id for p in result.provenance}
    assert len(result.provenance) < len(rows)


def test_by_default_a_target_that_fits_is_one_call_and_zero_maps_each_chunk(tmp_path: Path) -> None:
    doc = ingest_story(tmp_path, FILLER)
    n = len(chunk_rows(doc))
    for map_tokens, calls in ((None, 1), (0, n + 1)):
        backend = ScriptedBackend(lambda r: record("part", 3) if kind(r) == "map"
                                  else "A village with a river, a mill and a famous baker.")
        result = mapreduce.summarize(doc, lm=LM(backend, cache=False), map_tokens=map_tokens)
        assert len(backend.requests) == calls, map_tokens
        assert result.details["direct"] == (calls == 1)
    with pytest.raises(TomesError, match="map_tokens"):
        mapreduce.summarize(doc, lm=LM(backend, cache=False), map_tokens=-1)


def test_packed_answers_cite_the_chunks_that_carry_them(tmp_path: Path) -> None:
    doc = ingest_story(tmp_path, FILLER + [PARIS] + FILLER)

    def reply(r: ChatRequest) -> str:
        if kind(r) == "map":
            return record("Paris", 5) if "Paris" in text_of(r) else record(P.NO_INFO, 1)
        return json.dumps({"answer": "In Paris, under the old bridge", "confidence": 5,
                           "rationale": "the captain's letter", "notes": [1]})

    backend = ScriptedBackend(reply)
    result = mapreduce.ask(doc, "Where is the treasure?", lm=LM(backend, cache=False), map_tokens=200)
    assert not result.details["direct"]
    packed = [r for r in backend.requests if kind(r) == "map" and "Paris" in text_of(r)]
    assert packed and sum(c.text in text_of(packed[0]) for c in chunk_rows(doc)) > 3
    assert [p.chunk_id for p in result.provenance] == [chunk_with(doc, "Paris")]


def test_one_call_summary_cites_the_whole_text_and_too_big_targets_are_mapped(tmp_path: Path) -> None:
    doc = ingest_story(tmp_path, FILLER)
    rows = chunk_rows(doc)
    backend = ScriptedBackend(lambda r: record("part", 3) if kind(r) == "map"
                              else "A village with a river, a mill and a famous baker.")
    result = mapreduce.summarize(doc, lm=LM(backend, cache=False), map_tokens=4000)
    assert len(backend.requests) == 1 and result.details["direct"]
    assert [p.chunk_id for p in result.provenance] == [c.id for c in rows]
    backend.requests.clear()
    result = mapreduce.summarize(doc, lm=LM(backend, cache=False), map_tokens=60)
    assert not result.details["direct"]
    assert sum(kind(r) == "map" for r in backend.requests) > 1


def test_a_window_too_small_for_any_text_is_a_clear_error(tmp_path: Path) -> None:
    doc = ingest_story(tmp_path, FILLER)
    lm = LM(ScriptedBackend(context_window=300), cache=False)
    with pytest.raises(TomesError, match="larger context window"):
        mapreduce.summarize(doc, lm=lm)


# --- the API and the CLI ---------------------------------------------------------------


def test_api_runs_resume_and_strategies(tmp_path: Path) -> None:
    doc = ingest_story(tmp_path, FILLER)
    t = Tomes()  # the settings' backend: the scripted fake, replying "ok"
    result = t.summarize(str(doc), length="short")
    assert result.run_id and result.answer and result.provenance
    assert result.run_id in {r["id"] for r in t.runs()}
    again = t.resume(result.run_id)  # finished: its result, no new calls
    assert again.answer == result.answer and again.run_id == result.run_id
    with pytest.raises(TomesError, match="strategy"):
        t.ask(doc, "why?", strategy="psychic")
    with pytest.raises(TomesError, match="already exists"):
        t.summarize(doc, run_id=result.run_id)
    with pytest.raises(TomesError, match="empty"):
        t.ask(doc, "  ")


def test_cli_summarize_ask_runs(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from app.cli import app

    ingest_story(tmp_path, FILLER, name="harwick.txt")
    runner = CliRunner()
    out = runner.invoke(app, ["summarize", "harwick.txt", "--length", "short", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["run_id"] and data["provenance"] and data["calls"] >= 1
    assert data["tokens"] == data["prompt_tokens"] + data["completion_tokens"]
    out = runner.invoke(app, ["ask", "harwick.txt", "Where is the mill?", "--backend", "scripted",
                              "--map-tokens", "0", "--strategy", "mapreduce"])
    assert out.exit_code == 0, out.output
    assert "rests on" in out.stdout and "model calls" in out.stdout
    out = runner.invoke(app, ["runs", "--json"])
    runs = json.loads(out.stdout)
    assert len(runs) == 2 and {r["status"] for r in runs} == {"done"}
    long = "Which of the mills, bridges and bakeries of the village " * 4 + "is the oldest?"
    assert runner.invoke(app, ["ask", "harwick.txt", long, "--strategy", "mapreduce"]).exit_code == 0
    out = runner.invoke(app, ["runs"])  # the table keeps every column beside long text
    assert out.exit_code == 0 and all(r["id"] in out.stdout for r in runs)
    assert out.stdout.count("done") == 3 and out.stdout.count("mapreduce") == 3
    out = runner.invoke(app, ["ask", "harwick.txt", "q?", "--strategy", "rlm"])
    assert out.exit_code != 0


# --- lenient JSON ----------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ('{"a": 1}', {"a": 1}),
    ('```json\n{"a": 1,}\n```', {"a": 1}),
    ("Sure! Here it is: {'answer': 'Paris', 'confidence': 4} Hope that helps.",
     {"answer": "Paris", "confidence": 4}),
    ('{"extracted": "Ann went to Leeds", "answer": "Lee', {"extracted": "Ann went to Leeds", "answer": "Lee"}),
    ('{answer: "x", confidence: 5}', {"answer": "x", "confidence": 5}),
    ('{"a": "it\'s", "b": [1, 2,]} trailing', {"a": "it's", "b": [1, 2]}),
    ('{"a": "b", "c":', {"a": "b"}),
])
def test_parse_object_repairs_what_small_models_write(text: str, expected: dict) -> None:
    assert parse_object(text) == expected


@pytest.mark.parametrize("text", ["", "   ", "no json here", "[1, 2]"])
def test_parse_object_reports_what_is_wrong(text: str) -> None:
    with pytest.raises(ParseError):
        parse_object(text)


def test_confidence_reads_any_scale() -> None:
    assert [confidence(v) for v in (4, "4/5", 0.75, "high", "low", "80%", 9, None, "?")] == \
        [4.0, 4.0, 4.0, 5.0, 1.0, 4.2, 5.0, 3.0, 3.0]


def test_graph_is_async_and_checkpointed(tmp_path: Path) -> None:
    # The map node must be a coroutine function: sync nodes would serialize the LM calls.
    assert asyncio.iscoroutinefunction(mapreduce.MapReduce.map)
    assert asyncio.iscoroutinefunction(mapreduce.MapReduce.collapse)
    # Each map's result is saved under the run as it finishes, before the reduce runs.
    import sqlite3

    doc = ingest_story(tmp_path, FILLER)
    seen: list[int] = []
    path = settings.get_settings().checkpoint_path

    def reply(req: ChatRequest) -> str:
        if kind(req) == "reduce":
            with sqlite3.connect(path) as conn:
                seen.append(conn.execute("SELECT count(*) FROM writes WHERE thread_id = ? "
                                         "AND channel = 'mapped'", (current_run.get(),)).fetchone()[0])
            return "Harwick, a village of mills, apples and bread, by a river."
        return record("a note", 3)

    # Checkpoint writes are committed in the background while the model works: give
    # each call the little time a real one takes.
    result = mapreduce.summarize(doc, map_tokens=0, run_id="ckpt-run",
                                 lm=LM(ScriptedBackend(reply, latency=0.3), cache=False))
    assert result.details["mapped"] == len(chunk_rows(doc)) and seen == [len(chunk_rows(doc))]
