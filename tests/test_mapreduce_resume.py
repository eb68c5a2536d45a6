"""A map-reduce run killed mid-map resumes from its checkpoint without redoing maps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from app import settings
from app.api import Tomes
from app.store import Call, Chunk, Run, session_scope
from pipelines import _mapreduce_prompts as P
from pipelines import mapreduce
from serving.backends.scripted import ScriptedBackend
from serving.base import ChatRequest
from serving.lm import LM

ROOT = Path(__file__).resolve().parents[1]

# The child maps with a slow scripted model, two calls at a time, and reports each
# finished map on stdout; the parent kills it once a few are done.
CHILD = textwrap.dedent("""
    import json, sys
    from pipelines import mapreduce
    from serving.backends.scripted import ScriptedBackend
    from serving.lm import LM

    def reply(req):
        return json.dumps({"extracted": "facts", "rationale": "r", "answer": "a part", "confidence": 4})

    def on_event(e):
        if e.stage == "map" and e.done:
            print("mapped", e.data["chunk_id"], flush=True)

    lm = LM(ScriptedBackend(reply, latency=1.5, capacity=2), cache=False)
    mapreduce.summarize(int(sys.argv[1]), lm=lm, run_id=sys.argv[2], on_event=on_event,
                        map_tokens=0)
    print("finished", flush=True)
""")


@pytest.fixture(autouse=True)
def _records_as_scripted():
    """These tests script the model's records to test the pipeline's mechanics, with
    records that need not be borne out by their text; grounding has its own tests
    (tests/test_grounding.py)."""
    with settings.override(grounding="off"):
        yield



def test_killed_run_resumes_without_remapping(tmp_path: Path) -> None:
    paras = [f"Section {i}. " + "The river keeps its own counsel through the valley. " * 4
             for i in range(10)]
    path = tmp_path / "river.txt"
    path.write_text("\n\n".join(paras) + "\n", encoding="utf-8")
    from app import settings

    with settings.override(chunk_tokens=60):
        report = Tomes().ingest([path], "rivers", embed=False)
    doc = report.added[0].document_id
    with session_scope() as s:
        texts = {c.id: c.text for c in s.query(Chunk).filter_by(document_id=doc)}
    assert len(texts) >= 8

    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOMES_GROUNDING": "off"}
    child = subprocess.Popen([sys.executable, str(script), str(doc), "run-killed"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env, cwd=ROOT)
    mapped: list[int] = []
    try:
        assert child.stdout is not None
        for line in child.stdout:
            if line.startswith("mapped"):
                mapped.append(int(line.split()[1]))
            if len(mapped) >= 4:
                break
        # Let the finished maps' checkpoint writes land; the next two are mid-call.
        time.sleep(0.5)
    finally:
        child.send_signal(signal.SIGKILL)
        _, err = child.communicate(timeout=30)
    assert len(mapped) == 4, err

    with session_scope() as s:
        assert s.get(Run, "run-killed").status == "running"  # killed: nothing marked it

    def reply(req: ChatRequest) -> str:
        if req.messages[0]["content"].startswith(P.SYSTEM_MAP):
            return json.dumps({"extracted": "facts", "rationale": "r", "answer": "a part",
                               "confidence": 4})
        return "The river runs through the valley, section by section."

    backend = ScriptedBackend(reply)
    events = []
    result = mapreduce.resume("run-killed", lm=LM(backend, cache=False), on_event=events.append)

    resent = {cid for cid, text in texts.items()
              for r in backend.requests if text in r.messages[-1]["content"]
              and r.messages[0]["content"].startswith(P.SYSTEM_MAP)}
    assert resent.isdisjoint(mapped), "maps finished before the kill were sent again"
    assert resent | set(mapped) == set(texts)  # and every other chunk was mapped
    map_requests = [r for r in backend.requests if r.messages[0]["content"].startswith(P.SYSTEM_MAP)]
    assert len(map_requests) == len(texts) - len(mapped)
    # Progress carries on from where the killed run stopped.
    first_map = next(e for e in events if e.stage == "map" and e.done)
    assert first_map.done == len(mapped) + 1 and first_map.total == len(texts)

    assert result.run_id == "run-killed"
    assert result.answer.startswith("The river runs")
    assert {p.chunk_id for p in result.provenance} == set(texts)
    # Calls made before the kill still count: they are in the checkpointed state.
    assert result.calls == len(texts) + 1
    with session_scope() as s:
        run = s.get(Run, "run-killed")
        assert run.status == "done" and run.answer == result.answer
        # The call log holds both processes' calls under the same run id.
        logged = s.query(Call).filter_by(run_id="run-killed", node="map").count()
        assert logged >= len(texts)
    # A finished run resumes to its stored result without any call.
    before = len(backend.requests)
    again = mapreduce.resume("run-killed", lm=LM(backend, cache=False))
    assert again.answer == result.answer and len(backend.requests) == before
    assert json.loads(json.dumps(again.to_dict()))["run_id"] == "run-killed"
