"""The recursive controller in code mode, driven by scripted root models: their code runs
in the out-of-process sandbox, sub-calls come back through the run's LM, and FINAL is
read robustly."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from app.api import Tomes
from pipelines import _final
from pipelines import _recursive_prompts as P
from pipelines import recursive
from serving.backends.scripted import ScriptedBackend
from serving.base import ChatRequest
from serving.lm import LM

KEY = "The brass key was hidden under the blue stone by Martha."
QUESTION = "Where was the brass key hidden?"


def _book(tmp_path: Path, chapters: int = 12) -> int:
    from app import settings

    paras = [f"Chapter {i}. The rain fell on the old town and nobody spoke of it. " * 3
             for i in range(chapters)]
    paras[7] += " " + KEY
    path = tmp_path / "town.txt"
    path.write_text("\n\n".join(paras) + "\n", encoding="utf-8")
    with settings.override(chunk_tokens=60):
        return Tomes().ingest([path], "town", embed=False).added[0].document_id


def _key_chunk(doc: int) -> int:
    return next(c["id"] for c in Tomes().document(doc)["chunks"] if "brass key" in c["text"])


def _is_root(req: ChatRequest) -> bool:
    return req.messages[0]["content"].startswith(P.CODE_SYSTEM[:60])


def _step(req: ChatRequest) -> int:
    return sum(1 for m in req.messages if m["role"] == "assistant") + 1


def _depth(req: ChatRequest) -> int:
    system = req.messages[0]["content"]
    m = re.search(r"You are at depth (\d+)", system)
    return int(m.group(1)) if m else -1  # -1: the deepest level


def _sub_reply(req: ChatRequest) -> str:
    return "Under the blue stone." if "brass key" in req.messages[-1]["content"] else "NONE"


def _script(steps: list[str], sub: Any = _sub_reply) -> Any:
    def reply(req: ChatRequest) -> str:
        if not _is_root(req):
            return sub(req)
        return steps[min(_step(req), len(steps)) - 1]

    return reply


def _repl(code: str, before: str = "") -> str:
    return f"{before}\n```repl\n{code}\n```\n"


def _lm(replies: Any, **kwargs: Any) -> tuple[LM, ScriptedBackend]:
    backend = ScriptedBackend(replies, **kwargs)
    return LM(backend, cache=False), backend


def _root_prompts(backend: ScriptedBackend) -> list[ChatRequest]:
    return [r for r in backend.requests if _is_root(r)]


# --- (a) grep, then answer -------------------------------------------------------------


def test_grep_then_final(tmp_path: Path) -> None:
    doc = _book(tmp_path)
    steps = [
        _repl("hits = grep('brass key')\nprint(len(context), len(hits), hits[0]['chunk_id'])\n"
              "c = [c for c in chunks if c['id'] == hits[0]['chunk_id']][0]\n"
              "print(c['text'][c['text'].find('The brass'):])",
              "I will grep for it, then call FINAL(answer) once I know."),
        'The grep shows it.\nFINAL("Under the blue stone, by Martha.")',
    ]
    lm, backend = _lm(_script(steps))
    result = recursive.ask(doc, QUESTION, lm=lm, mode="code")
    # The plan's "FINAL(answer)" was not taken: the run went on to read the output.
    assert result.answer == "Under the blue stone, by Martha."
    assert result.details["iterations"] == 2 and result.details["mode"] == "code"
    second = _root_prompts(backend)[1].messages
    assert KEY in second[-1]["content"]  # the block's output came back
    assert result.provenance[0].chunk_id == _key_chunk(doc)
    assert "brass key" in result.provenance[0].quote


def test_the_system_prompt_documents_the_environment_with_its_sizes(tmp_path: Path) -> None:
    doc = _book(tmp_path)
    lm, backend = _lm(_script(['FINAL("x")']))
    recursive.ask(doc, QUESTION, lm=lm, mode="code", max_depth=1)
    system = backend.requests[0].messages[0]["content"]
    info = Tomes().document(doc)
    chars = len(Tomes().text(doc))
    assert f"{chars:,} characters" in system
    assert f"list of {len(info['chunks'])} dicts" in system
    for name in ("context", "chunks", "documents", "search(query, k=5)", "grep(pattern",
                 "llm_query(prompt)", "llm_query_batched(prompts)", "rlm_query(prompt, context)",
                 "FINAL(value)", "FINAL_VAR"):
        assert name in system
    assert "8 in parallel" in system  # the scripted backend's capacity


# --- (b) batched sub-calls over every chunk, then aggregate ------------------------------


def test_batched_sub_calls_over_all_chunks_then_final_var(tmp_path: Path) -> None:
    doc = _book(tmp_path)
    n_chunks = len(Tomes().document(doc)["chunks"])
    steps = [
        _repl("prompts = [f'Where is the key? Passage: {c[\"text\"]}' for c in chunks]\n"
              "answers = llm_query_batched(prompts)\n"
              "found = [a for a in answers if a != 'NONE']\nprint(len(answers), found)"),
        _repl("answer = found[0]\nFINAL_VAR('answer')"),
    ]
    lm, backend = _lm(_script(steps), latency=0.05, capacity=4)
    result = recursive.ask(doc, QUESTION, lm=lm, mode="code")
    assert result.answer == "Under the blue stone."
    subs = [r for r in backend.requests if not _is_root(r)]
    assert len(subs) == n_chunks and backend.max_in_flight == 4
    assert f"{n_chunks} ['Under the blue stone.']" in _root_prompts(backend)[1].messages[-1]["content"]
    calls = Tomes().calls(result.run_id)
    iterations = [c for c in calls if c["node"] == "iteration"]
    assert {c["parent_id"] for c in calls if c["node"] == "llm_query"} == {iterations[0]["id"]}
    assert len(result.details["read"]) == n_chunks  # each sub-call's chunk was recognised
    assert result.provenance[0].chunk_id == _key_chunk(doc)


# --- (c) recursion to depth 2 -----------------------------------------------------------


def test_rlm_query_recurses_to_depth_two(tmp_path: Path) -> None:
    doc = _book(tmp_path)

    def reply(req: ChatRequest) -> str:
        if not _is_root(req):
            return _sub_reply(req)
        depth, step = _depth(req), _step(req)
        if depth == 0:
            return [_repl("hit = grep('brass key')[0]\n"
                          "piece = [c for c in chunks if c['id'] == hit['chunk_id']][0]['text']\n"
                          "r = rlm_query('Where is the key?', piece)\nprint(r)"),
                    "FINAL(r)"][min(step, 2) - 1]
        if depth == 1:
            return [_repl("r = rlm_query('Where exactly?', context)\nprint(r)"),
                    _repl("FINAL(r)")][min(step, 2) - 1]
        # The deepest level still has a REPL of its own, over the text it was given.
        assert "deepest level" in req.messages[0]["content"]
        return [_repl("FINAL(llm_query('Where is the key? ' + context))")][0]

    lm, backend = _lm(reply)
    result = recursive.ask(doc, QUESTION, lm=lm, mode="code", max_depth=2)
    assert result.answer == "Under the blue stone."
    assert result.details["depth"] == 2 and result.details["limit"] is None
    calls = {c["id"]: c for c in Tomes().calls(result.run_id)}

    def depth(cid: int) -> int:
        parent = calls[cid]["parent_id"]
        return 1 + (depth(parent) if parent in calls else 0)

    assert max(depth(c) for c in calls) >= 3
    deepest = max(calls, key=depth)
    assert calls[deepest]["node"] == "llm_query"  # under the grandchild's iteration
    assert result.provenance[0].chunk_id == _key_chunk(doc)


def test_rlm_query_at_max_depth_is_one_sub_call(tmp_path: Path) -> None:
    doc = _book(tmp_path)
    steps = [_repl("r = rlm_query('Where is the key?', context)\nprint(r)"), "FINAL(r)"]
    lm, backend = _lm(_script(steps))
    result = recursive.ask(doc, QUESTION, lm=lm, mode="code", max_depth=0)
    assert result.answer == "Under the blue stone."
    assert {"limit": "depth", "depth": 0} in result.details["limits_hit"]
    assert any("deepest level" in f["what"] for f in result.details["fallbacks"])
    nodes = [c["node"] for c in Tomes().calls(result.run_id)]
    assert nodes == ["iteration", "rlm_query", "iteration"]


# --- (d) broken code, then recovery -----------------------------------------------------


def test_broken_code_is_reported_and_the_model_recovers(tmp_path: Path) -> None:
    doc = _book(tmp_path)
    steps = [
        _repl("hits = grep('brass key')\nprint(hits[0]['chunkid'])"),  # a typo
        _repl("print(hits[0]['chunk_id'])\nx = 'Under the blue stone.'"),
        "FINAL(x)",
    ]
    lm, backend = _lm(_script(steps))
    result = recursive.ask(doc, QUESTION, lm=lm, mode="code")
    assert result.answer == "Under the blue stone."
    assert [s["error"] for s in result.details["steps"]] == [True, False, False]
    fed_back = _root_prompts(backend)[1].messages[-1]["content"]
    assert "KeyError" in fed_back and "chunkid" in fed_back
    # Variables of the failed block survive: `hits` was set before the error.
    assert str(_key_chunk(doc)) in _root_prompts(backend)[2].messages[-1]["content"]


def test_a_reply_without_code_or_final_is_an_error_fed_back(tmp_path: Path) -> None:
    doc = _book(tmp_path)
    steps = ["Let me think about where the key could be.", 'FINAL("Under the stone.")']
    lm, backend = _lm(_script(steps))
    result = recursive.ask(doc, QUESTION, lm=lm, mode="code")
    assert result.details["steps"][0]["error"] is True
    assert P.CODE_NO_CODE in _root_prompts(backend)[1].messages[-1]["content"]
    assert result.answer == "Under the stone."


def test_final_in_a_failed_iteration_is_a_candidate_not_the_answer(tmp_path: Path) -> None:
    doc = _book(tmp_path)
    steps = [_repl("y = undefined_name", 'FINAL("a guess")'), _repl("print(1/0)")]
    lm, _ = _lm(_script(steps))
    result = recursive.ask(doc, QUESTION, lm=lm, mode="code", max_iterations=3)
    assert result.details["limit"] == "errors" or result.details["limit"] == "iterations"
    assert result.answer == "a guess" and result.details["answer_from"] == "candidate"


def test_sandbox_containment_does_not_stop_the_run(tmp_path: Path) -> None:
    doc = _book(tmp_path)
    escaped = tmp_path / "escaped"
    steps = [_repl(f"import os\nos.system('echo hi > {escaped}')\nprint(open('{escaped}').read())"),
             _repl("import sys\nsys.exit(3)"),
             _repl("x = 42\nprint(x)"), "FINAL(x)"]
    lm, _ = _lm(_script(steps))
    result = recursive.ask(doc, QUESTION, lm=lm, mode="code", max_errors=5)
    assert result.answer == "42"
    assert result.details["steps"][0]["error"] and result.details["steps"][1]["error"]
    assert not escaped.exists()


# --- (e) a model that never stops, stopped by each limit --------------------------------


def _forever(req: ChatRequest) -> str:
    if not _is_root(req):
        return "NONE"
    return _repl(f"n = {_step(req)}\nprint(llm_query('again ' + str(n)))")


def test_iteration_limit(tmp_path: Path) -> None:
    doc = _book(tmp_path)
    lm, backend = _lm(_forever)
    result = recursive.ask(doc, QUESTION, lm=lm, mode="code", max_iterations=3)
    assert result.details["limit"] == "iterations" and result.details["iterations"] == 3
    assert len(_root_prompts(backend)) == 3
    assert P.CODE_LAST in _root_prompts(backend)[2].messages[-1]["content"]
    # A last call over what the sub-calls said makes the partial answer.
    assert result.details["answer_from"] == "summary"
    assert Tomes().calls(result.run_id)[-1]["node"] == "answer"


def test_error_limit(tmp_path: Path) -> None:
    doc = _book(tmp_path)
    lm, backend = _lm(_script([_repl("raise ValueError('broken again')")]))
    result = recursive.ask(doc, QUESTION, lm=lm, mode="code", max_errors=2)
    assert result.details["limit"] == "errors" and result.details["iterations"] == 2
    assert result.answer.startswith("No answer was found before the errors limit")


def test_token_budget(tmp_path: Path) -> None:
    doc = _book(tmp_path)
    lm, backend = _lm(_forever)
    result = recursive.ask(doc, QUESTION, lm=lm, mode="code", budget_tokens=4000)
    assert result.details["limit"] == "tokens"
    per_iteration = result.tokens / result.details["iterations"]
    # It stopped once the budget was spent: at most the iteration that crossed it.
    assert 4000 <= result.tokens < 4000 + 2 * per_iteration
    assert result.answer.startswith("No answer was found before the tokens limit")


def test_token_budget_refuses_sub_calls_mid_iteration(tmp_path: Path) -> None:
    doc = _book(tmp_path)
    loop = _repl("out = []\nfor c in chunks * 4:\n    try:\n        out.append(llm_query('Key? ' + c['text']))\n"
                 "    except RuntimeError as e:\n        out.append(str(e))\nprint(out[-1])")
    batch = _repl("r = llm_query_batched(['Key? ' + c['text'] for c in chunks] * 4)\n"
                  "print(sum(x.startswith('Error') for x in r))")
    for code in (loop, batch):
        lm, backend = _lm(_script([code]), capacity=2)
        result = recursive.ask(doc, QUESTION, lm=lm, mode="code", budget_tokens=2500)
        subs = [r for r in backend.requests if not _is_root(r)]
        assert 0 < len(subs) < 52  # of 52: those after the budget ran out were never made
        assert result.details["limit"] == "tokens" and result.details["iterations"] == 1
        assert result.tokens < 2500 + 300  # at most the calls in flight when it ran out


def test_wall_time_limit(tmp_path: Path) -> None:
    doc = _book(tmp_path)
    lm, _ = _lm(_forever, latency=0.2)
    result = recursive.ask(doc, QUESTION, lm=lm, mode="code", max_seconds=1.0)
    assert result.details["limit"] == "wall_time"
    assert result.answer.startswith("No answer was found before the wall time limit")


def test_endless_recursion_is_flattened_at_max_depth(tmp_path: Path) -> None:
    doc = _book(tmp_path)

    def reply(req: ChatRequest) -> str:
        if not _is_root(req):
            return "deeper"
        return _repl("print(rlm_query('deeper?', context[:2000]))")

    lm, backend = _lm(reply)
    result = recursive.ask(doc, QUESTION, lm=lm, mode="code", max_depth=1, max_iterations=2)
    assert result.details["depth"] == 1
    assert any(h["limit"] == "depth" for h in result.details["limits_hit"])
    assert result.details["limit"] == "iterations"


def test_output_is_bounded_with_a_marker(tmp_path: Path) -> None:
    doc = _book(tmp_path)
    steps = [_repl("print('x' * 100_000)"), 'FINAL("done")']
    lm, backend = _lm(_script(steps))
    recursive.ask(doc, QUESTION, lm=lm, mode="code", output_chars=500)
    fed_back = _root_prompts(backend)[1].messages[-1]["content"]
    assert "more characters cut" in fed_back and len(fed_back) < 1500


def test_long_histories_keep_to_the_window(tmp_path: Path) -> None:
    doc = _book(tmp_path)
    lm, backend = _lm(lambda req: _repl("print('y' * 1900)") if _is_root(req) else "ok",
                      context_window=2048)
    result = recursive.ask(doc, QUESTION, lm=lm, mode="code", max_iterations=6)
    assert result.details["limit"] == "iterations"
    last = _root_prompts(backend)[-1].messages
    assert any("are not shown" in m["content"] for m in last)
    assert lm.count_messages(last) + 256 <= 2048


# --- reading FINAL ---------------------------------------------------------------------


@pytest.mark.parametrize("reply, expected", [
    ("I will call FINAL(answer) when I know.", None),  # a plan that mentions it
    ("First grep, then FINAL(\"x\").", None),
    ('FINAL("Under the stone.")', _final.Final("Under the stone.")),
    ("  FINAL(Martha)", _final.Final("Martha", expr="Martha")),
    ("**FINAL(found[0])**", _final.Final("found[0]", expr="found[0]")),
    ("FINAL_VAR('best')", _final.Final("", expr="best", placeholder=True, var=True)),
    ("FINAL(answer)", _final.Final("answer", expr="answer", placeholder=True)),
    ('```repl\nFINAL("inside code")\n```', None),  # code runs; it is not prose
    ('```json\n{"a": "FINAL(x)"}\n```\nno marker here', None),
    ("FINAL(It was (as she said) under the stone", _final.Final(
        "It was (as she said) under the stone", expr="It was (as she said) under the stone")),
])
def test_final_markers(reply: str, expected: _final.Final | None) -> None:
    assert _final.find_final(reply) == expected


def test_code_blocks_run_only_python_fences() -> None:
    reply = "plan\n```repl\na = 1\n```\n```json\n{\"b\": 2}\n```\n```python\nprint(a)\n```\n```\nc = 3"
    assert _final.code_blocks(reply) == ["a = 1", "print(a)", "c = 3"]


def test_final_naming_a_variable_resolves_to_its_value(tmp_path: Path) -> None:
    doc = _book(tmp_path)
    steps = [_repl("answer = 'Under the ' + 'blue stone.'"), "So:\nFINAL(answer)"]
    lm, _ = _lm(_script(steps))
    assert recursive.ask(doc, QUESTION, lm=lm, mode="code").answer == "Under the blue stone."


def test_final_naming_no_variable_is_refused(tmp_path: Path) -> None:
    doc = _book(tmp_path)
    steps = ["FINAL(answer)", 'FINAL("Under the stone.")']
    lm, backend = _lm(_script(steps))
    result = recursive.ask(doc, QUESTION, lm=lm, mode="code")
    assert result.answer == "Under the stone."
    assert "is not an answer" in _root_prompts(backend)[1].messages[-1]["content"]
