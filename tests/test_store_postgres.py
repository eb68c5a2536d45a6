"""The store on PostgreSQL (TOMES_DATABASE_URL): migrations, the call log, concurrent
writers from several processes, index locks in the database, checkpoints for resume.

The server is started by tests/_postgres.py from the machine's own binaries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, func, inspect, select, text

import memory.schema  # noqa: F401 - its tables are in the same migrations
from app import settings
from app.errors import TomesError
from app.store import Base, Call, Chunk, Corpus, Document, Run, open_store, session_scope
from app.store.db import LOCK_INDEX, alembic_config, dispose_all
from tests._postgres import postgres_server, postgres_store, postgres_url  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]


def _env(url: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "TOMES_DATABASE_URL": url, **extra}


# --- opening and migrating ------------------------------------------------------------

def test_the_store_opens_postgres_from_the_url(postgres_store, tomes_home):
    engine = open_store()
    assert engine.dialect.name == "postgresql" and engine.url.get_driver_name() == "psycopg"
    assert {"corpora", "documents", "chunks", "runs", "calls", "memory_entities"} <= set(
        inspect(engine).get_table_names())
    # Nothing of the store lands in TOMES_HOME.
    assert not (tomes_home / "tomes.db").exists()
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diffs == [], f"models and migrations disagree on PostgreSQL: {diffs}"
        head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
        assert MigrationContext.configure(conn).get_current_revision() == head


def test_a_plain_postgresql_url_means_psycopg_3(postgres_url):
    engine = open_store(postgres_url.replace("postgresql+psycopg://", "postgresql://"))
    assert engine.url.get_driver_name() == "psycopg"


def test_upgrade_from_the_first_revision_keeps_user_data(postgres_url):
    engine = create_engine(postgres_url)
    cfg = alembic_config(engine)
    command.upgrade(cfg, ScriptDirectory.from_config(cfg).get_base())
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO corpora (id, name, created_at) VALUES (1, 'c', '2026-01-01')"))
        conn.execute(text(
            "INSERT INTO documents (id, corpus_id, title, source, format, text, content_hash,"
            " meta, tokenizer, created_at) VALUES (1, 1, 'Old', '/x.txt', 'txt', 'Hello world',"
            " 'h', '{}', 'approx', '2026-01-01')"))
    engine.dispose()
    with session_scope(open_store(postgres_url)) as s:  # migrates to head
        doc = s.scalar(select(Document))
        assert doc.title == "Old" and doc.n_chars == len("Hello world") and doc.meta == {}


def test_rows_round_trip_and_deletes_cascade(postgres_store):
    with session_scope() as s:
        doc = Document(corpus=Corpus(name="c"), title="d", source="d", format="txt",
                       text="ab cd", content_hash="x", meta={"k": [1, "two"]}, page_starts=[0, 3])
        doc.chunks = [Chunk(ordinal=0, start=0, end=2, text="ab", n_tokens=1, content_hash="1")]
        s.add(doc)
    with session_scope() as s:
        got = s.scalar(select(Document))
        assert got.meta == {"k": [1, "two"]} and got.page_starts == [0, 3]
        s.execute(text("DELETE FROM documents"))
    with session_scope() as s:
        assert s.scalar(select(Chunk)) is None


def test_the_dedup_constraint_holds(postgres_store):
    from sqlalchemy.exc import IntegrityError

    with session_scope() as s:
        s.add(Corpus(name="c", documents=[Document(title="a", source="a", format="txt",
                                                   text="t", content_hash="same")]))
    with pytest.raises(IntegrityError):
        with session_scope() as s:
            corpus = s.scalar(select(Corpus))
            s.add(Document(corpus=corpus, title="b", source="b", format="txt", text="t",
                           content_hash="same"))


def test_an_entity_goes_with_its_last_mention(postgres_store):
    """The orphan trigger SQLite has, on PostgreSQL too."""
    with session_scope() as s:
        doc = Document(corpus=Corpus(name="c"), title="d", source="d", format="txt",
                       text="Ann met Bob", content_hash="x")
        doc.chunks = [Chunk(ordinal=0, start=0, end=11, text="Ann met Bob", n_tokens=3,
                            content_hash="1")]
        s.add(doc)
        s.flush()
        s.execute(text("INSERT INTO memory_entities (id, corpus_id, name, norm, kind, created_at)"
                       " VALUES (1, :c, 'Ann', 'ann', 'person', now())"), {"c": doc.corpus_id})
        s.execute(text("INSERT INTO memory_mentions (entity_id, chunk_id, name, norm, via)"
                       " VALUES (1, :ch, 'Ann', 'ann', 'model')"), {"ch": doc.chunks[0].id})
    with session_scope() as s:
        s.execute(text("DELETE FROM documents"))
    with session_scope() as s:
        assert s.scalar(text("SELECT count(*) FROM memory_entities")) == 0


def test_a_postgres_url_without_psycopg_says_how_to_install_it(postgres_url, monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg now fails
    with pytest.raises(TomesError) as err:
        open_store(postgres_url)
    assert "psycopg" in err.value.cause and "tomes[scale]" in err.value.fix


def test_an_unreachable_server_is_one_clear_error(postgres_server):
    from tests._postgres import _free_port

    url = f"postgresql+psycopg://tomes@127.0.0.1:{_free_port()}/nowhere"
    with pytest.raises(TomesError) as err:
        open_store(url)
    assert "cannot reach the store" in err.value.cause and "start the PostgreSQL" in err.value.fix


def test_a_url_of_another_database_is_refused():
    with pytest.raises(TomesError):
        settings.Settings(database_url="mysql://x@y/z")


# --- the call log ---------------------------------------------------------------------

def test_model_calls_are_logged_and_cached_in_postgres(postgres_store):
    from serving.backends.scripted import ScriptedBackend
    from serving.calllog import call_tree
    from serving.lm import get_lm, run_scope

    backend = ScriptedBackend(["the answer"])
    lm = get_lm(backend)
    with run_scope("run-pg"):
        with lm.step("map") as step:
            first = lm.chat("question?")
            again = lm.chat("question?")  # the same call: served from the log
    assert first.text == again.text == "the answer" and len(backend.requests) == 1
    tree = call_tree("run-pg")
    assert len(tree) == 1 and tree[0]["id"] == step and tree[0]["step"]
    assert [c["cache_hit"] for c in tree[0]["children"]] == [False, True]
    assert tree[0]["latency_ms"] >= 0
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(Call)) == 3
        call = s.scalar(select(Call).where(Call.cache_hit.is_(False), Call.backend != "step"))
        assert call.messages[-1]["content"] == "question?"  # JSON, as the model reads it


# --- index files and their lock -------------------------------------------------------

def test_index_files_live_under_the_index_root(postgres_store, tmp_path, monkeypatch):
    from app.api import Tomes

    root = tmp_path / "shared-indexes"
    monkeypatch.setenv("TOMES_INDEX_ROOT", str(root))
    settings.reset()
    book = tmp_path / "a.txt"
    book.write_text("The lighthouse keeper counted the gulls every morning.\n\n" * 20)
    api = Tomes()
    api.ingest([book], "lights", embed=True)
    assert any(root.glob("lights-*/*")), "no index files under TOMES_INDEX_ROOT"
    assert not (settings.get_settings().home / "indexes").exists()
    for mode in ("dense", "keyword"):
        hits = api.search("lights", "lighthouse gulls", k=3, mode=mode)
        assert hits, f"no {mode} hits from the index under the root"


def test_index_writers_are_serialized_by_a_lock_in_the_database(postgres_store, tmp_path):
    from retrieval.files import corpus_dir, write_lock

    directory = corpus_dir(7, "books")
    held = text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                "AND classid = :k AND objid = :id AND granted")
    engine = open_store()
    with write_lock(directory) as got:
        assert got
        with engine.connect() as conn:
            assert conn.scalar(held, {"k": LOCK_INDEX, "id": 7}) == 1
        # Another process (another machine, for all the database knows) must wait.
        probe = textwrap.dedent(f"""
            from pathlib import Path
            from retrieval.files import write_lock
            with write_lock(Path({str(directory)!r}), blocking=False) as got:
                print(got)
            with write_lock(Path({str(corpus_dir(8, "other"))!r}), blocking=False) as got:
                print(got)
        """)
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                             env=_env(postgres_store), cwd=ROOT, timeout=60)
        assert out.stdout.split() == ["False", "True"], out.stderr
    with engine.connect() as conn:
        assert conn.scalar(held, {"k": LOCK_INDEX, "id": 7}) == 0
    assert not (directory / ".lock").exists()  # the file lock is SQLite's


# --- concurrent writers ---------------------------------------------------------------

RACER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    go, paths, n_calls, me = Path(sys.argv[1]), sys.argv[2].split(","), int(sys.argv[3]), sys.argv[4]
    from app.api import Tomes
    from app.store import open_store
    from pipelines import _runs
    from serving.backends.scripted import ScriptedBackend
    from serving.lm import LM, run_scope
    open_store()  # migrate (or wait for whoever migrates) before the start line
    api = Tomes()
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.005)
    report = api.ingest(paths, "race", embed=False)
    run = _runs.create_run(f"run-{me}", "test", "corpus:race", None, {})
    lm = LM(ScriptedBackend(lambda req: "ok " + req.messages[-1]["content"]), cache=False)
    with run_scope(run):
        lm.batch([f"{me} call {i}" for i in range(n_calls)])
    _runs.finish_run(run, "done", {})
    print(json.dumps({o.path: o.status for o in report.outcomes}), flush=True)
""")


def test_processes_ingesting_the_same_files_at_once_store_each_once(postgres_store, tmp_path):
    """N processes on a brand-new database: one migrates, all ingest the same files at the
    same moment, each logs its own run and calls. Every document exactly once, every
    chunk once, no run or call lost."""
    files = []
    for i in range(3):
        path = tmp_path / f"book{i}.txt"
        path.write_text("\n\n".join(f"Book {i}, paragraph {p}. " + "Waves break on stone. " * 30
                                    for p in range(12)))
        files.append(str(path))
    n, n_calls = 4, 15
    go = tmp_path / "go"
    script = tmp_path / "racer.py"
    script.write_text(RACER)
    procs = [subprocess.Popen([sys.executable, str(script), str(go), ",".join(files),
                               str(n_calls), str(i)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=_env(postgres_store), cwd=ROOT)
             for i in range(n)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready", p.stderr.read()
        go.touch()
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    statuses = []
    for (out, err), p in zip(outs, procs):
        assert p.returncode == 0, err
        statuses.append(json.loads(out.strip().splitlines()[-1]))
    for f in files:  # each file added by exactly one process, skipped by the others
        assert sorted(s[f] for s in statuses) == ["added"] + ["skipped"] * (n - 1)

    from app.api import Tomes

    def chunks_of(corpus: str) -> int:
        with session_scope() as s:
            return s.scalar(select(func.count()).select_from(Chunk).join(Document).join(Corpus)
                            .where(Corpus.name == corpus))

    with session_scope() as s:
        docs = s.scalars(select(Document).join(Corpus).where(Corpus.name == "race")).all()
        assert len(docs) == 3 and len({d.content_hash for d in docs}) == 3
        assert s.scalar(select(func.count()).select_from(Corpus)) == 1
    raced = chunks_of("race")
    # What one ingest alone stores.
    alone = Tomes().ingest(files, "alone", embed=False)
    assert len(alone.added) == 3 and raced == chunks_of("alone")
    with session_scope() as s:
        assert sorted(s.scalars(select(Run.id))) == [f"run-{i}" for i in range(n)]
        assert all(r.status == "done" for r in s.scalars(select(Run)))
        calls = s.scalars(select(Call)).all()
        assert len(calls) == n * n_calls
        assert len({c.id for c in calls}) == len(calls)
        for i in range(n):
            mine = sorted(c.messages[-1]["content"] for c in calls if c.run_id == f"run-{i}")
            assert mine == sorted(f"{i} call {j}" for j in range(n_calls))


# --- checkpoints ----------------------------------------------------------------------

MAPPER = textwrap.dedent("""
    import json, sys
    from pipelines import mapreduce
    from serving.backends.scripted import ScriptedBackend
    from serving.lm import LM

    def reply(req):
        return json.dumps({"extracted": "facts", "rationale": "r", "answer": "a part", "confidence": 4})

    def on_event(e):
        if e.stage == "map" and e.done:
            print("mapped", e.data["chunk_id"], flush=True)

    lm = LM(ScriptedBackend(reply, latency=1.0, capacity=2), cache=False)
    mapreduce.summarize(int(sys.argv[1]), lm=lm, run_id=sys.argv[2], on_event=on_event,
                        map_tokens=0)
    print("finished", flush=True)
""")


def test_a_killed_run_resumes_from_checkpoints_in_postgres(postgres_store, tmp_path, tomes_home):
    import signal

    from app.api import Tomes
    from pipelines import _mapreduce_prompts as P
    from pipelines import mapreduce
    from serving.backends.scripted import ScriptedBackend
    from serving.base import ChatRequest
    from serving.lm import LM

    path = tmp_path / "river.txt"
    path.write_text("\n\n".join(f"Section {i}. " + "The river keeps its counsel. " * 6
                                for i in range(8)) + "\n")
    with settings.override(chunk_tokens=60):
        doc = Tomes().ingest([path], "rivers", embed=False).added[0].document_id
    with session_scope() as s:
        texts = {c.id: c.text for c in s.scalars(select(Chunk).where(Chunk.document_id == doc))}
    assert len(texts) >= 6

    script = tmp_path / "mapper.py"
    script.write_text(MAPPER)
    child = subprocess.Popen([sys.executable, str(script), str(doc), "run-pg"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=_env(postgres_store, TOMES_GROUNDING="off"), cwd=ROOT)
    mapped: list[int] = []
    try:
        for line in child.stdout:
            if line.startswith("mapped"):
                mapped.append(int(line.split()[1]))
            if len(mapped) >= 2:
                break
        time.sleep(0.3)  # the finished maps' checkpoint writes land; two more are mid-call
    finally:
        child.send_signal(signal.SIGKILL)
        _, err = child.communicate(timeout=30)
    assert len(mapped) == 2, err
    assert not (tomes_home / "checkpoints.db").exists(), "checkpoints went to SQLite"
    with session_scope() as s:
        assert s.scalar(text("SELECT count(*) FROM checkpoints WHERE thread_id = 'run-pg'")) > 0

    def reply(req: ChatRequest) -> str:
        if req.messages[0]["content"].startswith(P.SYSTEM_MAP):
            return json.dumps({"extracted": "facts", "rationale": "r", "answer": "a part",
                               "confidence": 4})
        return "The river runs through the valley."

    backend = ScriptedBackend(reply)
    with settings.override(grounding="off"):
        result = mapreduce.resume("run-pg", lm=LM(backend, cache=False))
    maps = [r for r in backend.requests if r.messages[0]["content"].startswith(P.SYSTEM_MAP)]
    resent = {cid for cid, t in texts.items() for r in maps if t in r.messages[-1]["content"]}
    assert resent.isdisjoint(mapped), "maps finished before the kill were sent again"
    assert resent | set(mapped) == set(texts) and len(maps) == len(texts) - len(mapped)
    assert result.answer.startswith("The river runs")
    with session_scope() as s:
        assert s.get(Run, "run-pg").status == "done"

    # Deleting the run deletes its checkpoints from PostgreSQL too.
    Tomes().delete_run("run-pg")
    with session_scope() as s:
        assert s.scalar(text("SELECT count(*) FROM checkpoints WHERE thread_id = 'run-pg'")) == 0
        assert s.scalar(text("SELECT count(*) FROM checkpoint_writes WHERE thread_id = 'run-pg'")) == 0
    dispose_all()
