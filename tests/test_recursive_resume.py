"""A recursive run killed mid-run resumes: finished iterations are not asked of the model
again, and code mode's REPL is rebuilt by replaying their code with the sub-calls
answered from the checkpoint."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest
from sqlalchemy import text

from app.api import Tomes
from app.store import Run, session_scope
from pipelines import _recursive_prompts as P
from pipelines import recursive
from serving.backends.scripted import ScriptedBackend
from serving.base import BackendError, ChatRequest
from serving.lm import LM

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent


def _book(tmp_path: Path) -> int:
    from app import settings

    paras = [f"Chapter {i}. The rain fell on the old town and nobody spoke of it. " * 3
             for i in range(10)]
    paras[6] += " The brass key was hidden under the blue stone by Martha."
    path = tmp_path / "town.txt"
    path.write_text("\n\n".join(paras) + "\n", encoding="utf-8")
    with settings.override(chunk_tokens=60):
        return Tomes().ingest([path], "town", embed=False).added[0].document_id


def _assistants(req: ChatRequest) -> int:
    return sum(1 for m in req.messages if m["role"] == "assistant")


def _code_reply(req: ChatRequest) -> str:
    """Iterations 1-4 each keep a sub-call's answer in a variable; the 5th answers with
    all four, so the answer proves the REPL outlived the kill."""
    if not req.messages[0]["content"].startswith(P.CODE_SYSTEM[:60]):
        part = re.search(r"part (\d+)", req.messages[-1]["content"])
        return f"P{part.group(1)}" if part else "?"
    step = _assistants(req) + 1
    if step <= 4:
        return f"```repl\nx{step} = llm_query('part {step}')\nprint(x{step})\n```"
    return "```repl\nFINAL(' '.join([x1, x2, x3, x4]))\n```"


class SlowRoot(ScriptedBackend):
    """Registered by name in both processes, so the resumed run finds its backend the way
    `tomes resume` does: from the run's params."""

    name = "slowrlm"
    LATENCY: ClassVar[float] = 0.6
    seen: ClassVar[list[ChatRequest]] = []

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(self._reply, latency=self.LATENCY, capacity=2)

    def _reply(self, req: ChatRequest) -> str:
        SlowRoot.seen.append(req)
        return _code_reply(req)


CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, {here!r})
    from serving import registry
    registry.register("slowrlm", "test_recursive_resume:SlowRoot")
    from app.cli import main
    sys.argv = ["tomes", *sys.argv[1:]]
    main()
""")


def _iteration_calls() -> int:
    with session_scope() as s:
        return s.execute(text("select count(*) from calls where node = 'iteration'")).scalar()


def test_killed_code_run_resumes_without_reasking_and_rebuilds_the_repl(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = _book(tmp_path)
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(here=str(HERE)))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOMES_BACKEND": "slowrlm", "TOMES_CACHE": "0"}
    child = subprocess.Popen(
        [sys.executable, str(script), "ask", str(doc), "Where is the key?", "--strategy",
         "recursive", "--mode", "code", "--max-iterations", "8", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 90
        # The 4th root reply is in: iterations 1-3 are checkpointed, the 4th is mid-call.
        while time.monotonic() < deadline and _iteration_calls() < 4:
            assert child.poll() is None, child.communicate()[1]
            time.sleep(0.1)
    finally:
        child.send_signal(signal.SIGKILL)
        _, err = child.communicate(timeout=30)
    assert _iteration_calls() >= 4, err
    with session_scope() as s:
        run = s.query(Run).one()
        run_id = run.id
        assert run.status == "running" and run.pipeline == "recursive"  # killed: nothing marked it
        assert run.params["backend"] == "slowrlm" and run.params["mode"] == "code"

    from serving import registry

    monkeypatch.setitem(registry._BACKENDS, "slowrlm", "test_recursive_resume:SlowRoot")
    monkeypatch.setattr(SlowRoot, "LATENCY", 0.0)
    monkeypatch.setattr(SlowRoot, "seen", [])
    # No cache: iterations 1-3 come from the checkpoint; the 4th, whose reply was in when
    # the process died, from the run's call log (a resume replays its finished calls).
    result = Tomes(cache=False).resume(run_id)

    assert result.answer == "P1 P2 P3 P4"  # x1..x3 came back from the replayed blocks
    roots = [r for r in SlowRoot.seen if r.messages[0]["content"].startswith(P.CODE_SYSTEM[:60])]
    assert roots and min(_assistants(r) for r in roots) == 4  # iteration 5 on, never 1-4
    assert len(roots) == 1  # iteration 5
    subs = [r.messages[-1]["content"] for r in SlowRoot.seen if r not in roots]
    assert subs == ["part 4"]  # parts 1-3 were answered from the checkpoint
    assert result.details["iterations"] == 5 and result.details["limit"] is None
    assert Tomes().run(run_id)["status"] == "done"
    with session_scope() as s:
        logged = dict(s.execute(text(
            "select node, count(*) from calls where run_id = :r group by node"), {"r": run_id}).all())
    assert logged["iteration"] >= 6  # 4 before the kill, 2 after
    # A finished run resumes to its stored result, with no call at all.
    before = len(SlowRoot.seen)
    assert Tomes().resume(run_id).answer == result.answer and len(SlowRoot.seen) == before


def _act(action: str, text_: str = "", chunks: list[int] | None = None) -> str:
    return json.dumps({"action": action, "text": text_, "chunks": chunks or []})


def test_failed_actions_run_resumes_from_its_last_finished_iteration(tmp_path: Path) -> None:
    doc = _book(tmp_path)

    def script(fail_at: int | None):
        def reply(req: ChatRequest) -> str:
            system, user = req.messages[0]["content"], req.messages[1]["content"]
            if system.startswith(P.MAP_SYSTEM):
                found = "brass key" in user
                return json.dumps({"answer": "Under the blue stone." if found else "NONE"})
            step = len(re.findall(r"^\d+\. ", user, re.M)) + 1
            if step == fail_at:
                raise BackendError("the model server went away", "start it again")
            return [_act("grep", "brass key"), _act("map", "Where is the key?"),
                    _act("answer", "Under the blue stone.")][min(step, 3) - 1]
        return reply

    first = ScriptedBackend(script(fail_at=3))
    with pytest.raises(Exception) as err:
        recursive.ask(doc, "Where is the key?", lm=LM(first, cache=False), run_id="r-fail")
    assert "tomes resume r-fail" in err.value.fix
    assert Tomes().run("r-fail")["status"] == "failed"
    maps_before = sum(1 for r in first.requests if r.messages[0]["content"].startswith(P.MAP_SYSTEM))
    assert maps_before == 1

    second = ScriptedBackend(script(fail_at=None))
    result = recursive.resume("r-fail", lm=LM(second, cache=False))
    assert result.answer == "Under the blue stone."
    assert len(second.requests) == 1  # only step 3: grep and map were not redone
    assert "Steps so far:\n1. grep" in second.requests[0].messages[1]["content"]
    assert result.details["iterations"] == 3
    assert result.provenance and "brass key" in result.provenance[0].quote
    # The calls made before the failure count towards the run's totals.
    assert result.calls == len(first.requests) - 1 + len(second.requests)


def test_quick_iterations_share_a_checkpoint_and_slow_ones_each_get_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint (a graph step) per iteration is most of the controller's own time
    when the model answers at once; iterations within CHECKPOINT_EVERY_S share one."""
    import sqlite3

    from app.settings import get_settings

    doc = _book(tmp_path)

    def reply(req: ChatRequest) -> str:
        step = len(re.findall(r"^\d+\. ", req.messages[1]["content"], re.M)) + 1
        return _act("answer", "Under the blue stone.") if step == 6 else _act("grep", f"key {step}")

    def checkpoints(run_id: str) -> int:
        with sqlite3.connect(get_settings().checkpoint_path) as conn:
            return conn.execute("select count(*) from checkpoints where thread_id = ?",
                                (run_id,)).fetchone()[0]

    quick = recursive.ask(doc, "Where is the key?", lm=LM(ScriptedBackend(reply), cache=False),
                          mode="actions", run_id="r-quick")
    monkeypatch.setattr(recursive, "CHECKPOINT_EVERY_S", 0.0)  # as if each took longer
    slow = recursive.ask(doc, "Where is the key?", lm=LM(ScriptedBackend(reply), cache=False),
                         mode="actions", run_id="r-slow")
    assert quick.answer == slow.answer == "Under the blue stone."
    assert quick.details["iterations"] == slow.details["iterations"] == 6
    assert quick.calls == slow.calls == 6
    # input, the iterations' step(s), the answer
    assert checkpoints("r-slow") >= 6 + 2
    assert checkpoints("r-quick") <= 4


def _grep_then_answer(steps: int, fail_at: int | None = None):
    def reply(req: ChatRequest) -> str:
        step = len(re.findall(r"^\d+\. ", req.messages[1]["content"], re.M)) + 1
        if step == fail_at:
            raise BackendError("the model server went away", "start it again")
        return _act("answer", "Under the blue stone.") if step == steps else _act("grep", f"rain {step}")
    return reply


def _checkpoint_bytes(run_id: str) -> tuple[int, int]:
    """(bytes in the thread's checkpoints, bytes in its writes)."""
    import sqlite3

    from app.settings import get_settings

    with sqlite3.connect(get_settings().checkpoint_path) as conn:
        return tuple(conn.execute(f"select coalesce(sum(length({col})), 0) from {table} "
                                  "where thread_id = ?", (run_id,)).fetchone()[0]
                     for table, col in (("checkpoints", "checkpoint"), ("writes", "value")))


def test_checkpoints_store_each_iteration_once_not_the_history_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One checkpoint per iteration (any real model): a checkpoint holding the whole
    history grows the file with the square of the run's length."""
    doc = _book(tmp_path)

    def reply(req: ChatRequest) -> str:
        step = _assistants(req) + 1
        return "```repl\nFINAL('done')\n```" if step == 30 else \
            f"```repl\nprint({step}, context[:600])\n```"

    monkeypatch.setattr(recursive, "CHECKPOINT_EVERY_S", 0.0)
    result = recursive.ask(doc, "Where is the key?", mode="code", run_id="r-long",
                           max_iterations=40,
                           lm=LM(ScriptedBackend(reply, context_window=32768), cache=False))
    assert result.answer == "done" and result.details["iterations"] == 30
    checkpoints, writes = _checkpoint_bytes("r-long")
    # The iterations are in the writes once; the checkpoints only point at them.
    assert writes > 29 * 600
    assert checkpoints < writes


def test_a_run_checkpointed_with_the_plain_list_reducer_resumes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Checkpoints written before the delta channel (the whole list in each) still load."""
    import operator
    from typing import Annotated, TypedDict

    old = TypedDict("State", {  # noqa: UP013 - the functional form names the fields as stored
        **{k: v for k, v in recursive.State.__annotations__.items()},
        "iterations": Annotated[list[dict[str, Any]], operator.add],
    }, total=False)
    doc = _book(tmp_path)
    with monkeypatch.context() as patch:
        patch.setattr(recursive, "State", old)
        patch.setattr(recursive, "CHECKPOINT_EVERY_S", 0.0)
        first = ScriptedBackend(_grep_then_answer(5, fail_at=4))
        with pytest.raises(Exception, match="went away"):
            recursive.ask(doc, "Where is the key?", mode="actions", run_id="r-old",
                          lm=LM(first, cache=False))
    checkpoints, writes = _checkpoint_bytes("r-old")
    assert checkpoints > writes  # the old format: the list in every checkpoint
    second = ScriptedBackend(_grep_then_answer(5))
    result = recursive.resume("r-old", lm=LM(second, cache=False))
    assert result.answer == "Under the blue stone."
    assert result.details["iterations"] == 5
    assert len(second.requests) == 2  # steps 4 and 5: the three before were kept
    assert result.cache_hits == 0  # ... by the checkpoint, not replayed from the call log
