"""The recursive controller in actions mode, driven by scripted root models: the
controller runs the actions itself (no code), with the same limits, call tree and
provenance as code mode."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from app.api import Tomes
from app.errors import TomesError
from pipelines import _recursive_prompts as P
from pipelines import recursive
from serving.backends.scripted import ScriptedBackend
from serving.base import ChatRequest
from serving.lm import LM

KEY = "The brass key was hidden under the blue stone by Martha."


def _book(tmp_path: Path, chapters: int = 12, planted: int = 7) -> int:
    from app import settings

    paras = [f"Chapter {i}. The rain fell on the old town and nobody spoke of it. " * 3
             for i in range(chapters)]
    paras[planted] += " " + KEY
    path = tmp_path / "town.txt"
    path.write_text("\n\n".join(paras) + "\n", encoding="utf-8")
    with settings.override(chunk_tokens=60):
        return Tomes().ingest([path], "town", embed=False).added[0].document_id


def _chunks(doc: int) -> dict[int, str]:
    return {c["id"]: c["text"] for c in Tomes().document(doc)["chunks"]}


def _key_chunk(doc: int) -> int:
    return next(cid for cid, text in _chunks(doc).items() if "brass key" in text)


def _role(req: ChatRequest) -> str:
    system = req.messages[0]["content"]
    for name, prefix in (("root", P.ACTIONS_SYSTEM), ("map", P.MAP_SYSTEM),
                         ("answer", P.ANSWER_SYSTEM)):
        if system.startswith(prefix):
            return name
    return "other"


def _step(req: ChatRequest) -> int:
    """Which step of its controller a root prompt asks for (1-based)."""
    user = req.messages[1]["content"]
    return len(re.findall(r"^\d+\. ", user, re.M)) + 1


def _depth(req: ChatRequest) -> int:
    m = re.search(r"helper at depth (\d+)", req.messages[1]["content"])
    return int(m.group(1)) if m else 0


def _act(action: str, text: str = "", chunks: list[int] | None = None) -> str:
    return json.dumps({"action": action, "text": text, "chunks": chunks or []})


def _map_reply(req: ChatRequest) -> str:
    passage = req.messages[1]["content"]
    return json.dumps({"answer": "Under the blue stone, by Martha." if "brass key" in passage
                       else "NONE"})


def _lm(replies: Any, **kwargs: Any) -> tuple[LM, ScriptedBackend]:
    backend = ScriptedBackend(replies, **kwargs)
    return LM(backend, cache=False), backend


def _tree_depth(run_id: str) -> int:
    calls = {c["id"]: c for c in Tomes().calls(run_id)}

    def depth(cid: int) -> int:
        parent = calls[cid]["parent_id"]
        return 1 + (depth(parent) if parent in calls else 0)

    return max(depth(cid) for cid in calls)


# --- (a) grep, then answer -------------------------------------------------------------


def test_grep_then_answer(tmp_path: Path) -> None:
    doc = _book(tmp_path)

    def reply(req: ChatRequest) -> str:
        assert _role(req) == "root"
        if _step(req) == 1:
            return _act("grep", "brass key")
        # The grep's observation shows the match and the chunk that holds it.
        assert "hidden under the blue stone" in req.messages[1]["content"]
        return _act("answer", "Under the blue stone, where Martha hid it.")

    lm, backend = _lm(reply)
    result = recursive.ask(doc, "Where was the brass key hidden?", lm=lm)
    assert result.answer == "Under the blue stone, where Martha hid it."
    assert result.details["mode"] == "actions" and result.details["iterations"] == 2
    assert result.details["limit"] is None and result.details["answer_from"] == "final"
    assert len(backend.requests) == 2 == result.calls  # no sub-call was needed
    key = _key_chunk(doc)
    assert result.provenance[0].chunk_id == key
    assert "brass key" in result.provenance[0].quote
    assert result.provenance[0].end > result.provenance[0].start
    assert Tomes().run(result.run_id)["status"] == "done"


# --- (b) map over every chunk, then aggregate ------------------------------------------


def test_map_over_all_chunks_in_parallel_then_answer_from_evidence(tmp_path: Path) -> None:
    doc = _book(tmp_path)
    ids = sorted(_chunks(doc))
    assert 8 < len(ids) <= 16

    def reply(req: ChatRequest) -> str:
        role = _role(req)
        if role == "map":
            return _map_reply(req)
        if role == "answer":
            assert "Under the blue stone" in req.messages[1]["content"]
            return json.dumps({"answer": "Martha hid it under the blue stone."})
        if _step(req) == 1:
            return _act("map", "Where was the key hidden?", ids)
        assert "Evidence:" in req.messages[1]["content"]
        return _act("answer", "")  # written from the evidence

    lm, backend = _lm(reply, latency=0.05, capacity=4)
    result = recursive.ask(doc, "Where was the brass key hidden?", lm=lm)
    assert result.answer == "Martha hid it under the blue stone."
    maps = [r for r in backend.requests if _role(r) == "map"]
    assert len(maps) == len(ids)
    assert backend.max_in_flight == 4  # in parallel, up to the backend's capacity
    assert result.details["read"] == ids  # every chunk was read by a sub-call
    assert result.provenance[0].chunk_id == _key_chunk(doc)  # the answer rests on it
    assert {p.chunk_id for p in result.provenance} == set(ids)
    # Sub-calls nest under the iteration that made them.
    calls = Tomes().calls(result.run_id)
    first = next(c for c in calls if c["node"] == "iteration")
    assert {c["parent_id"] for c in calls if c["node"] == "map"} == {first["id"]}
    answer = next(c for c in calls if c["node"] == "answer")
    assert answer["parent_id"] == [c for c in calls if c["node"] == "iteration"][1]["id"]


# --- (c) recurse to depth 2 ------------------------------------------------------------


def _recursing(key: int) -> Any:
    def reply(req: ChatRequest) -> str:
        role = _role(req)
        if role == "answer":
            return json.dumps({"answer": "Under the blue stone."})
        depth, step = _depth(req), _step(req)
        if depth == 0:
            return [_act("search", "brass key"), _act("recurse", "Where is the key?"),
                    _act("answer", "")][min(step, 3) - 1]
        if depth == 1:
            return [_act("recurse", "Where exactly?", [key]), _act("answer", "")][min(step, 2) - 1]
        return [_act("read", "", [key]), _act("answer", "Under the blue stone.")][min(step, 2) - 1]

    return reply


def test_recurse_to_depth_two_nests_the_call_tree(tmp_path: Path) -> None:
    doc = _book(tmp_path)
    key = _key_chunk(doc)
    lm, backend = _lm(_recursing(key))
    result = recursive.ask(doc, "Where was the brass key hidden?", lm=lm, max_depth=2)
    assert result.answer == "Under the blue stone."
    assert result.details["depth"] == 2 and result.details["limit"] is None
    assert {_depth(r) for r in backend.requests if _role(r) == "root"} == {0, 1, 2}
    assert _tree_depth(result.run_id) >= 3
    calls = Tomes().calls(result.run_id)
    by_id = {c["id"]: c for c in calls}
    # The grandchild's steps sit under the child's step that recursed, which sits under
    # the root's step that recursed.
    grandchild = [c for c in calls if c["node"] == "iteration" and "helper at depth 2"
                  in c["messages"][1]["content"]]
    child = by_id[grandchild[0]["parent_id"]]
    assert "helper at depth 1" in child["messages"][1]["content"]
    root = by_id[child["parent_id"]]
    assert root["parent_id"] is None and "helper at depth" not in root["messages"][1]["content"]
    assert key in result.details["read"] and result.provenance[0].chunk_id == key


def test_recursion_beyond_max_depth_is_refused_and_reported(tmp_path: Path) -> None:
    doc = _book(tmp_path)
    lm, backend = _lm(_recursing(_key_chunk(doc)))
    result = recursive.ask(doc, "Where was the brass key hidden?", lm=lm, max_depth=1)
    assert {_depth(r) for r in backend.requests if _role(r) == "root"} == {0, 1}
    assert {"limit": "depth", "depth": 1} in result.details["limits_hit"]
    assert result.details["depth"] == 1
    assert result.answer  # the child answered with what it had


# --- (d) broken replies, then recovery --------------------------------------------------


def test_bad_actions_are_reported_then_the_model_recovers(tmp_path: Path) -> None:
    doc = _book(tmp_path)
    key = _key_chunk(doc)

    def reply(req: ChatRequest) -> str:
        if _role(req) == "map":
            return _map_reply(req)
        if req.messages[-1]["content"].startswith("That reply could not be used"):
            return _act("grep", "brass key")  # the retry, told what was wrong
        step = _step(req)
        if step == 1:
            return "I think I should look for the key first."  # not JSON
        if step == 2:
            return _act("read", "", [99999])  # no such chunk
        if step == 3:
            assert "error: no chunk 99999" in req.messages[1]["content"]
            return _act("map", "Where is the key?", [key])
        return _act("answer", "Under the blue stone.")

    lm, backend = _lm(reply)
    result = recursive.ask(doc, "Where was the brass key hidden?", lm=lm)
    assert result.answer == "Under the blue stone."
    steps = result.details["steps"]
    assert [s["error"] for s in steps] == [False, True, False, False]
    assert steps[0]["what"]["action"] == "grep"  # the retry's action ran
    calls = Tomes().calls(result.run_id)
    retry = next(c for c in calls if c["node"] == "retry")
    assert retry["parent_id"] == calls[0]["id"]  # the retry nests under its first try
    assert result.details["fallbacks"] == []


def test_unusable_twice_falls_back_to_the_natural_step_and_records_it(tmp_path: Path) -> None:
    doc = _book(tmp_path)

    def reply(req: ChatRequest) -> str:
        if _role(req) == "map":
            return _map_reply(req)
        if _role(req) == "answer":
            return json.dumps({"answer": "Under the blue stone."})
        return "no json here at all"

    lm, _ = _lm(reply)
    result = recursive.ask(doc, "Where was the brass key hidden?", lm=lm, max_iterations=5)
    # search, map over what it found, answer from the evidence - taken by the controller.
    assert [s["what"]["action"] for s in result.details["steps"]] == ["search", "map", "answer"]
    assert len(result.details["fallbacks"]) == 3
    assert "unusable reply twice" in result.details["fallbacks"][0]["what"]
    assert result.answer == "Under the blue stone."


def test_a_repeated_step_is_replaced_by_the_next_one(tmp_path: Path) -> None:
    doc = _book(tmp_path)

    def reply(req: ChatRequest) -> str:
        if _role(req) == "map":
            return _map_reply(req)
        if _role(req) == "answer":
            return json.dumps({"answer": "Under the blue stone."})
        return _act("grep", "brass key")  # a small model's loop

    lm, _ = _lm(reply)
    result = recursive.ask(doc, "Where was the brass key hidden?", lm=lm)
    assert [s["what"]["action"] for s in result.details["steps"]] == ["grep", "map", "answer"]
    assert result.answer == "Under the blue stone." and result.details["limit"] is None
    assert any("repeated grep" in f["what"] for f in result.details["fallbacks"])


# --- (e) a model that never stops, stopped by each limit --------------------------------


def _forever(req: ChatRequest) -> str:
    if _role(req) == "map":
        return _map_reply(req)
    if _role(req) == "answer":
        return json.dumps({"answer": "Probably under the blue stone."})
    step = _step(req)
    # Always something new, never an answer: grep, then map what it found, and again.
    return _act("grep", f"brass|rain{step}") if step % 2 else _act("map", f"key? {step}")


def test_iteration_limit_returns_a_partial_answer(tmp_path: Path) -> None:
    doc = _book(tmp_path)
    lm, backend = _lm(_forever)
    result = recursive.ask(doc, "Where was the brass key hidden?", lm=lm, max_iterations=4)
    assert result.details["limit"] == "iterations" and result.details["iterations"] == 4
    assert result.details["answer_from"] == "summary"  # a last call over the evidence
    assert result.answer == "Probably under the blue stone."
    assert sum(1 for r in backend.requests if _role(r) == "root") == 4


def test_error_limit_stops_consecutive_failures(tmp_path: Path) -> None:
    doc = _book(tmp_path)
    lm, backend = _lm(lambda req: _act("read", "", [424242]))
    result = recursive.ask(doc, "Where was the brass key hidden?", lm=lm, max_errors=3)
    assert result.details["limit"] == "errors" and result.details["iterations"] == 3
    assert "No answer was found before the errors limit" in result.answer
    assert len(backend.requests) == 3


def test_token_budget_stops_the_run(tmp_path: Path) -> None:
    doc = _book(tmp_path)
    lm, backend = _lm(_forever)
    result = recursive.ask(doc, "Where was the brass key hidden?", lm=lm, budget_tokens=3000)
    assert result.details["limit"] == "tokens"
    # No call is made once the budget is spent: at most the one that crossed it.
    assert result.tokens < 3000 + 1500
    assert result.answer  # the evidence so far, or a clear report


def test_wall_time_limit_stops_the_run(tmp_path: Path) -> None:
    doc = _book(tmp_path)
    lm, _ = _lm(_forever, latency=0.15)
    result = recursive.ask(doc, "Where was the brass key hidden?", lm=lm, max_seconds=0.5)
    assert result.details["limit"] == "wall_time"
    assert 1 <= result.details["iterations"] <= 4
    assert result.answer


def test_endless_recursion_is_stopped_at_max_depth(tmp_path: Path) -> None:
    doc = _book(tmp_path)
    key = _key_chunk(doc)
    lm, backend = _lm(lambda req: _act("recurse", "deeper?", [key]))
    result = recursive.ask(doc, "Where was the brass key hidden?", lm=lm, max_depth=2,
                           max_iterations=3)
    assert max(_depth(r) for r in backend.requests) == 2
    assert any(h["limit"] == "depth" for h in result.details["limits_hit"])
    assert result.details["depth"] == 2 and result.details["limit"] is not None
    assert result.answer


# --- options, modes and observations ----------------------------------------------------


def test_unknown_options_are_refused_naming_the_valid_ones(tmp_path: Path) -> None:
    doc = _book(tmp_path)
    lm, backend = _lm(["{}"])
    with pytest.raises(TomesError) as err:
        recursive.ask(doc, "q?", lm=lm, max_dept=2)
    assert "max_dept" in err.value.cause and "max_depth" in err.value.fix
    with pytest.raises(TomesError) as err:
        recursive.ask(doc, "q?", lm=lm, mode="python")
    assert "code" in err.value.fix and "actions" in err.value.fix
    with pytest.raises(TomesError):
        Tomes().ask(doc, "q?", strategy="recursive", map_tokens=0)
    assert backend.requests == []


def test_default_mode_comes_from_the_preset() -> None:
    class Embedded(ScriptedBackend):
        name = "embedded"

    assert recursive.default_mode(LM(Embedded()))[0] == "actions"
    assert recursive.default_mode(LM(ScriptedBackend(model="openai/gpt-oss-20b")))[0] == "code"
    assert recursive.default_mode(LM(ScriptedBackend(model="someone/unknown")))[0] == "actions"


def test_through_the_api_with_the_settings_backend(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    doc = _book(tmp_path)
    from serving import registry

    monkeypatch.setitem(registry._BACKENDS, "scripted-grep",
                        "test_recursive_actions:GrepThenAnswer")
    result = Tomes(backend="scripted-grep").ask(doc, "Where was the brass key hidden?",
                                                strategy="recursive", max_iterations=3)
    assert result.answer == "Under the blue stone." and result.pipeline == "recursive"
    run = Tomes().run(result.run_id)
    assert run["params"]["backend"] == "scripted-grep" and run["params"]["mode"] == "actions"
    assert run["params"]["limits"]["max_iterations"] == 3


class GrepThenAnswer(ScriptedBackend):
    name = "scripted-grep"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(lambda req: _act("grep", "brass key") if _step(req) == 1
                         else _act("answer", "Under the blue stone."))


def test_observations_are_bounded_with_a_marker(tmp_path: Path) -> None:
    from app import settings

    path = tmp_path / "long.txt"
    path.write_text(("A long paragraph about the sea and its moods. " * 60 + "\n\n") * 3)
    with settings.override(chunk_tokens=2000):
        doc = Tomes().ingest([path], "sea", embed=False).added[0].document_id
    ids = sorted(_chunks(doc))

    def reply(req: ChatRequest) -> str:
        if _step(req) == 1:
            return _act("read", "", ids[:1])
        return _act("answer", "The sea.")

    lm, _ = _lm(reply)
    result = recursive.ask(doc, "What is it about?", lm=lm, output_chars=300)
    shown = Tomes().calls(result.run_id)[1]["messages"][1]["content"]
    assert "Result of step 1:" in shown and "more characters cut" in shown
    assert len(shown) < 2000  # the 8,000-character chunk is not shown whole


def test_an_answer_that_only_restates_the_question_is_written_from_the_evidence(
        tmp_path: Path) -> None:
    doc = _book(tmp_path)

    def reply(req: ChatRequest) -> str:
        role = _role(req)
        if role == "map":
            return _map_reply(req)
        if role == "answer":
            return json.dumps({"answer": "Martha hid it under the blue stone."})
        if _step(req) == 1:
            return _act("grep", "brass key")
        if _step(req) == 2:
            return _act("map", "Where was the key hidden?")
        return _act("answer", "The text is about where the brass key was hidden.")

    lm, _ = _lm(reply)
    result = recursive.ask(doc, "Where was the brass key hidden?", lm=lm)
    assert result.answer == "Martha hid it under the blue stone."


def test_an_answer_before_reading_anything_reads_first(tmp_path: Path) -> None:
    doc = _book(tmp_path)

    def reply(req: ChatRequest) -> str:
        if _role(req) == "map":
            return _map_reply(req)
        return _act("answer", "Under the blue stone.")

    lm, _ = _lm(reply)
    result = recursive.ask(doc, "Where was the brass key hidden?", lm=lm)
    steps = result.details["steps"]
    assert steps[0]["what"]["action"] == "search" and steps[-1]["what"]["action"] == "answer"
    assert any("before reading" in f["what"] for f in result.details["fallbacks"])
