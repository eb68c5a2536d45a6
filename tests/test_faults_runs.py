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


def _book(tmp_path: Path, sections: int = 10) -> int:
    from app import settings

    paras = [f"Section {i}. " + "The river keeps its own counsel through the valley. " * 4
             for i in range(sections)]
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


# --- what a resume does not redo ----------------------------------------------------

MAP_NOTE = "the river and the valley and the mill " * 12


class _Stop(Exception):
    """The process "dies" here: the run stops with the merges finished so far logged."""


def _river_model(fail_at_merge: int | None = None, answer: str = "The river, all of it."):
    """Map notes long enough that they collapse before the reduce; each merge names the
    sections it merged, so different merges are different requests."""
    import re

    from pipelines import _mapreduce_prompts as P

    merges = []

    def reply(req):
        system, prompt = req.messages[0]["content"], req.messages[-1]["content"]
        if system.startswith(P.SYSTEM_MAP):
            section = re.search(r"Section (\d+)", prompt)
            note = f"section {section.group(1) if section else '?'}: {MAP_NOTE}"
            return json.dumps({"extracted": note, "rationale": "r", "answer": note, "confidence": 4})
        if system.startswith(P.SYSTEM_MERGE):
            merges.append(prompt)
            if fail_at_merge is not None and len(merges) == fail_at_merge:
                return _Stop("killed mid-collapse")
            merged = "sections " + ", ".join(re.findall(r"section (\d+)", prompt)) + ": the river"
            return json.dumps({"extracted": merged, "rationale": "r", "answer": merged, "confidence": 4})
        return answer

    backend = ScriptedBackend(reply, capacity=1, context_window=1200)
    return backend, merges


def _kinds(backend) -> dict[str, int]:
    from collections import Counter

    from pipelines import _mapreduce_prompts as P

    def kind(req):
        system = req.messages[0]["content"]
        return ("map" if system.startswith(P.SYSTEM_MAP) else
                "collapse" if system.startswith(P.SYSTEM_MERGE) else "reduce")
    return dict(Counter(kind(r) for r in backend.requests))


def test_a_resume_after_a_stop_mid_collapse_does_not_redo_the_finished_merges(tmp_path: Path) -> None:
    """kill -9 mid-collapse with the cache off: the collapse level's finished merges had
    no checkpoint of their own, and the resume made them all again."""
    from app import settings
    from pipelines import mapreduce

    doc = _book(tmp_path, sections=24)
    # The whole run once, to know how many merges a level has.
    whole, _ = _river_model()
    with settings.override(cache=False, grounding="off"):
        mapreduce.summarize(doc, map_tokens=0, lm=LM(whole, cache=False))
    merges_in_all = _kinds(whole)["collapse"]
    assert merges_in_all >= 3, _kinds(whole)

    first, tried = _river_model(fail_at_merge=3)
    with settings.override(cache=False, grounding="off"):
        with pytest.raises(Exception):
            mapreduce.summarize(doc, map_tokens=0, lm=LM(first, cache=False), run_id="r-collapse")
        assert _runs.load_run("r-collapse")["status"] == "failed"
        again, _ = _river_model()
        result = mapreduce.resume("r-collapse", lm=LM(again, cache=False))
    assert result.answer == "The river, all of it."
    made = _kinds(again)
    finished = len(tried) - 1  # all but the one that failed
    assert finished >= 2
    # The finished merges come from the run's call log; the one that failed and those
    # never started are made now. No map is made again either.
    assert made.get("map", 0) == 0, made
    assert made["collapse"] == merges_in_all - finished, made


# --- a damaged checkpoints.db -------------------------------------------------------------


def _damage_checkpoints(how: str) -> Path:
    """Fold the WAL in (so damage to the file is damage to all), then damage the file."""
    import random
    import sqlite3

    from app import settings

    db = settings.get_settings().checkpoint_path
    con = sqlite3.connect(db)
    try:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()
    for suffix in ("-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)
    data = db.read_bytes()
    db.write_bytes(random.Random(5).randbytes(len(data)) if how == "random" else data[: len(data) // 2])
    return db


def _finished_prompts(run_id: str) -> set[str]:
    from app.store import Call

    with session_scope() as s:
        calls = s.query(Call).filter(Call.run_id == run_id, Call.error.is_(None),
                                     Call.response.is_not(None), Call.backend != "step").all()
        return {json.dumps(c.messages) for c in calls}


@pytest.mark.parametrize("how", ["random", "truncated"])
def test_a_checkpoints_file_damaged_after_a_kill_is_set_aside_and_nothing_finished_is_asked_again(
        tmp_path: Path, how: str, caplog) -> None:
    """kill -9 mid-map, then checkpoints.db damaged: every resume used to stop with
    "run … stopped: file is not a database", again and again."""
    import sqlite3

    from pipelines import _mapreduce_prompts as P
    from pipelines import mapreduce

    doc = _book(tmp_path)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOMES_BACKEND": "slow", "TOMES_CACHE": "0"}
    child = subprocess.Popen([sys.executable, str(script), "summarize", str(doc), "--map-tokens", "0"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env=env, cwd=ROOT)
    sql = __import__("sqlalchemy").text(
        "select count(*) from calls where response is not null and backend != 'step'")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.2)
        with session_scope() as s:
            if s.execute(sql).scalar() >= 4:
                break
    child.kill()  # SIGKILL: no clean stop, the checkpoint is what the process left
    _, err = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL, err
    with session_scope() as s:
        (run_id,) = s.query(Run.id).one()
    finished = _finished_prompts(run_id)
    assert len(finished) >= 4
    db = _damage_checkpoints(how)

    backend = ScriptedBackend(["The river, all of it."])  # maps too: their raw text is the note
    events = []
    with caplog.at_level("WARNING", logger="pipelines._runs"):
        result = mapreduce.resume(run_id, on_event=events.append, lm=LM(backend, cache=False))
    assert result.answer == "The river, all of it."
    assert _runs.load_run(run_id)["status"] == "done"
    # Nothing that finished before the kill was asked again: it came from the call log.
    asked = [json.dumps(r.messages) for r in backend.requests]
    assert not finished & set(asked), "a finished call was made again"
    assert any(r.messages[0]["content"].startswith(P.SYSTEM_MAP) for r in backend.requests)  # the rest
    # One line said so, in the log and in the run's events, naming the file and where it went.
    (aside,) = db.parent.glob("checkpoints.db.damaged-*")
    warned = [r.getMessage() for r in caplog.records if "checkpoints file" in r.getMessage()]
    said = [e.message for e in events if e.stage == "checkpoints"]
    assert len(warned) == 1 and said == warned, (warned, said)
    assert str(db) in warned[0] and aside.name in warned[0] and "damaged" in warned[0]
    # The fresh file is a whole database holding the resumed run's checkpoints.
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA quick_check").fetchone() == ("ok",)
        assert con.execute("select count(*) from checkpoints where thread_id = ?",
                           (run_id,)).fetchone()[0] > 0
    finally:
        con.close()


def _recursive_script(fail_at: int | None):
    """Actions mode: grep, map, answer; the model "goes away" at step ``fail_at``."""
    import re

    from pipelines import _recursive_prompts as P
    from serving.base import BackendError

    def act(action: str, text_: str = "") -> str:
        return json.dumps({"action": action, "text": text_, "chunks": []})

    def reply(req):
        system, user = req.messages[0]["content"], req.messages[1]["content"]
        if system.startswith(P.MAP_SYSTEM):
            return json.dumps({"answer": "It keeps its own counsel." if "river" in user else "NONE"})
        step = len(re.findall(r"^\d+\. ", user, re.M)) + 1
        if step == fail_at:
            raise BackendError("the model server went away", "start it again")
        return [act("grep", "counsel"), act("map", "What does the river keep?"),
                act("answer", "Its own counsel.")][min(step, 3) - 1]
    return ScriptedBackend(reply)


def test_a_recursive_run_resumes_past_a_damaged_checkpoints_file(tmp_path: Path) -> None:
    """The recursive controller opens its own (on-loop) saver: it sets the file aside too,
    and the finished iterations come from the call log, not the model."""
    from pipelines import recursive

    doc = _book(tmp_path)
    first = _recursive_script(fail_at=3)
    with pytest.raises(Exception):
        recursive.ask(doc, "What does the river keep?", lm=LM(first, cache=False), run_id="r-ck")
    finished = _finished_prompts("r-ck")
    assert finished
    db = _damage_checkpoints("random")
    second = _recursive_script(fail_at=None)
    result = recursive.resume("r-ck", lm=LM(second, cache=False))
    assert result.answer == "Its own counsel."
    assert not finished & {json.dumps(r.messages) for r in second.requests}
    assert len(second.requests) == 1  # only the step that failed
    assert len(list(db.parent.glob("checkpoints.db.damaged-*"))) == 1


def test_damage_found_during_a_run_sets_the_file_aside_with_one_message(tmp_path: Path) -> None:
    """A page read mid-run fails: the file is set aside and the run stops with one message
    (the next resume starts on a fresh file). The same error from the store's own
    connection, with the checkpoints file whole, is not the checkpoints' doing."""
    import sqlite3

    from app.errors import TomesError

    malformed = sqlite3.DatabaseError("database disk image is malformed")
    with pytest.raises(sqlite3.DatabaseError) as kept:
        with _runs.sqlite_checkpoints() as db:
            sqlite3.connect(db).execute("create table t (x)").connection.close()
            raise malformed
    assert kept.value is malformed and db.exists()
    assert not list(db.parent.glob("checkpoints.db.damaged-*"))

    with pytest.raises(TomesError) as info:
        with _runs.sqlite_checkpoints() as db:
            _damage_checkpoints("random")
            raise malformed
    assert str(db) in info.value.cause and "set aside" in info.value.cause
    assert "call log" in info.value.fix
    assert not db.exists() and len(list(db.parent.glob("checkpoints.db.damaged-*"))) == 1


from tests._postgres import postgres_server, postgres_store, postgres_url  # noqa: E402,F401


def test_a_recursive_run_on_a_postgres_store_checkpoints_there(postgres_store, tmp_path: Path,
                                                               tomes_home: Path) -> None:
    """Its on-loop saver wrote SQLite beside a PostgreSQL store: a run could not resume on
    another machine."""
    from sqlalchemy import text

    from pipelines import recursive

    doc = _book(tmp_path)
    with pytest.raises(Exception) as err:
        recursive.ask(doc, "What does the river keep?", lm=LM(_recursive_script(3), cache=False),
                      run_id="r-pg")
    assert "went away" in str(err.value), err.value
    assert not (tomes_home / "checkpoints.db").exists(), "checkpoints went to SQLite"
    with session_scope() as s:
        assert s.scalar(text("SELECT count(*) FROM checkpoints WHERE thread_id = 'r-pg'")) > 0
    second = _recursive_script(None)
    result = recursive.resume("r-pg", lm=LM(second, cache=False))
    assert result.answer == "Its own counsel." and len(second.requests) == 1


@pytest.mark.parametrize("strategy", ["direct", "rag"])
def test_a_one_call_run_stopped_after_its_call_replays_it_on_resume(tmp_path: Path, strategy) -> None:
    """The call finished, the process died before the run was marked done: with the cache
    off, the resume used to ask the model again."""
    import importlib

    from app import settings

    module = importlib.import_module(f"pipelines.{strategy}")
    doc = _book(tmp_path, sections=3)
    first = ScriptedBackend(["The river keeps its own counsel."])
    with settings.override(cache=False, grounding="off"):
        module.ask(doc, "What does the river keep?", lm=LM(first, cache=False), run_id="r-one")
        assert len(first.requests) >= 1
        with session_scope() as s:  # as a kill after the call would leave it
            run = s.get(Run, "r-one")
            run.status, run.result, run.owner_pid, run.owner_host = (
                "running", None, _dead_pid(), __import__("socket").gethostname())
        again = ScriptedBackend(["asked again"])
        result = module.resume("r-one", lm=LM(again, cache=False))
    assert again.requests == [] and result.answer.startswith("The river keeps")
