"""Fault injection on runs: one resumer per run, dead owners look dead, SIGTERM stops
cleanly with the resume command and the run resumes to the end."""

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

from app.api import Tomes
from app.store import Run, session_scope
from pipelines import _runs
from serving.backends.scripted import ScriptedBackend
from serving.lm import LM

ROOT = Path(__file__).resolve().parents[1]
RECORD = json.dumps({"extracted": "facts", "rationale": "r", "answer": "a part", "confidence": 4})


def _book(tmp_path: Path) -> int:
    from app import settings

    paras = [f"Section {i}. " + "The river keeps its own counsel through the valley. " * 4
             for i in range(10)]
    path = tmp_path / "river.txt"
    path.write_text("\n\n".join(paras) + "\n", encoding="utf-8")
    with settings.override(chunk_tokens=60):
        return Tomes().ingest([path], "rivers", embed=False).added[0].document_id


def _owned_by(run_id: str, pid: int | None) -> None:
    with session_scope() as s:
        run = s.get(Run, run_id)
        run.status, run.owner_pid = "running", pid


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_second_resumer_is_refused_while_the_owner_lives(tmp_path: Path) -> None:
    from pipelines import mapreduce

    doc = _book(tmp_path)
    run_id = _runs.create_run("r-busy", "mapreduce", f"doc:{doc}", None,
                              {"mode": "summary", "map_tokens": 0})
    other = subprocess.Popen(["sleep", "60"])
    try:
        _owned_by(run_id, other.pid)
        backend = ScriptedBackend([RECORD])
        with pytest.raises(_runs.RunBusy) as err:
            mapreduce.resume(run_id, lm=LM(backend, cache=False))
        assert str(other.pid) in err.value.cause and f"kill {other.pid}" in err.value.fix
        assert backend.requests == []  # refused before any call
        assert Tomes().runs()[0]["status"] == "running"  # a live owner is not reaped
    finally:
        other.kill()
        other.wait()
    # Its owner gone, the run is interrupted and the next resume takes it over.
    assert Tomes().runs()[0]["status"] == "interrupted"
    _runs.mark_running(run_id)
    with session_scope() as s:
        run = s.get(Run, run_id)
        assert (run.status, run.owner_pid) == ("running", os.getpid())
    _runs.finish_run(run_id, "a", {})
    with session_scope() as s:
        assert s.get(Run, run_id).owner_pid is None  # a finished run holds no lease


def test_a_run_whose_process_died_shows_as_interrupted() -> None:
    run_id = _runs.create_run(None, "mapreduce", "doc:1", None, {})
    _runs.create_run("r-old", "mapreduce", "doc:1", None, {})
    _owned_by(run_id, _dead_pid())
    _owned_by("r-old", None)  # made before leases: nobody owns it
    statuses = {r["id"]: r["status"] for r in Tomes().runs()}
    assert statuses[run_id] == "interrupted" and statuses["r-old"] == "interrupted"
    assert _runs.load_run(run_id)["status"] == "interrupted"


def test_another_hosts_owner_is_alive_until_its_heartbeat_is_stale() -> None:
    from app.store.models import utcnow

    run_id = _runs.create_run(None, "mapreduce", "doc:1", None, {})
    with session_scope() as s:
        run = s.get(Run, run_id)
        run.owner_host, run.owner_pid = "elsewhere", 1
        run.heartbeat_at = utcnow()
    with pytest.raises(_runs.RunBusy):
        _runs.mark_running(run_id)
    with session_scope() as s:
        s.get(Run, run_id).heartbeat_at = utcnow() - 2 * _runs.LEASE_TTL
    _runs.mark_running(run_id)  # silent too long: taken to be gone


CHILD = textwrap.dedent("""
    import json, sys
    from serving import registry
    from serving.backends.scripted import ScriptedBackend

    class Slow(ScriptedBackend):
        def __init__(self, **kwargs):
            record = json.dumps({"extracted": "facts", "rationale": "r", "answer": "a part",
                                 "confidence": 4})
            super().__init__([record], latency=1.0, capacity=2)

    registry.register("slow", "__main__:Slow")
    from app.cli import main
    sys.argv = ["tomes", *sys.argv[1:]]
    main()
""")


def test_sigterm_stops_cleanly_and_the_run_resumes(tmp_path: Path) -> None:
    doc = _book(tmp_path)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOMES_BACKEND": "slow", "TOMES_CACHE": "0"}
    child = subprocess.Popen([sys.executable, str(script), "summarize", str(doc), "--map-tokens", "0"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env, cwd=ROOT)
    deadline = time.monotonic() + 60
    run_id = None
    while time.monotonic() < deadline and run_id is None:
        time.sleep(0.3)
        with session_scope() as s:
            run = s.query(Run).first()
            if run is not None and s.execute(
                    __import__("sqlalchemy").text("select count(*) from calls")).scalar():
                run_id = run.id
    assert run_id, "the child never started its run"
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 130, err
    assert f"tomes resume {run_id}" in err
    with session_scope() as s:
        run = s.get(Run, run_id)
        assert (run.status, run.owner_pid) == ("interrupted", None)

    def reply(req):
        return RECORD if "extracted" in req.messages[0]["content"] else "The river, all of it."

    result = __import__("pipelines.mapreduce").mapreduce.resume(
        run_id, lm=LM(ScriptedBackend(reply), cache=False))
    assert result.answer == "The river, all of it."
    assert _runs.load_run(run_id)["status"] == "done"
