"""Fault-injection bench (issue 9): attacks tomes the way a bad day would and prints what
each attack costs. kill -9 at each map-reduce stage then `tomes resume`; kill -9 during
ingest and during embedding then the same ingest again; damaged index files, database,
checkpoints and awkward documents; concurrent ingests and resumes; misbehaving model
servers. Writes bench/results/faults.json.

    .venv/bin/python bench/faults.py [--quick] [--only SUBSTRING]

Every attack runs the real `tomes` CLI in a child process (bench/_faults_child.py) on a
temp TOMES_HOME, with the scripted model ("slow", which logs each request) or the
OpenAI backend against a loopback server (bench/_faults_server.py), and the hash
embedder; every child has a hard timeout, so the bench cannot hang.

Outcomes: "recovered" (the command succeeded and the bench's check of the result
passed), "clear message" (it failed with a one-line error, no traceback), "traceback",
"hang" (killed at the bench's timeout), "silent" (exit 0 but the check failed: damage
went unreported or the result is wrong), "no message" (a non-zero exit with neither a
message nor a traceback, e.g. a bare "Aborted."). Seconds are the wall time of the
command after the attack, CLI start-up included (see startup_s in the JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import _faults_files as F  # noqa: E402
from bench._faults_server import FaultServer  # noqa: E402

CHILD = ROOT / "bench" / "_faults_child.py"
BOOKS = ROOT.parent / "shared" / "data" / "books"
ANSWER = "The river keeps its own counsel through the valley."
STORY_ANSWER = "Mara kept the lighthouse"
# A map-reduce run of the river book on the "slow" model: 24 maps, 4 collapses, 1 reduce.
MR_ENV = {"TOMES_CHUNK_TOKENS": "60", "TOMES_GROUNDING": "off", "TOMES_CACHE": "0",
          "TOMES_FAULTS_LATENCY": "0.3", "TOMES_FAULTS_WINDOW": "1200"}
# Server faults: small bounds keep a hung server's row short.
REQUEST_TIMEOUT, CALL_TIMEOUT = 1.0, 3.0
BOUND_SLACK = 1.0  # seconds past the bound for the exit itself (writing the run, a loaded machine)
TIMEOUT = 90.0  # any one child, at most


# --- running the CLI -----------------------------------------------------------------


@dataclass
class Proc:
    args: list[str]
    rc: int | None
    out: str
    err: str
    seconds: float
    timed_out: bool = False
    pid: int = 0
    ended: float = 0.0  # time.monotonic() when it ended

    @property
    def text(self) -> str:
        return self.err + "\n" + self.out


class Bench:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.cache = work / "cache"
        self.n = 0
        base = {k: v for k, v in os.environ.items() if not k.startswith("TOMES_")}
        self.base_env = {**base, "PYTHONPATH": str(ROOT), "TOMES_BACKEND": "scripted",
                         "TOMES_EMBEDDER": "hash", "TOMES_CACHE_DIR": str(self.cache),
                         "HF_HUB_OFFLINE": "1", "COLUMNS": "220", "NO_COLOR": "1",
                         "PYTHONUNBUFFERED": "1"}

    def home(self, name: str, template: Path | None = None) -> Path:
        self.n += 1
        home = self.work / f"{self.n:02d}-{name}"
        if template is not None:
            shutil.copytree(template, home)
        else:
            home.mkdir(parents=True)
        return home

    def env(self, home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {**self.base_env, "TOMES_HOME": str(home), **(extra or {})}

    def spawn(self, home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, str(CHILD), *args], cwd=home,
                                env=self.env(home, env), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        proc.started = time.monotonic()  # type: ignore[attr-defined]
        return proc

    @staticmethod
    def finish(proc: subprocess.Popen, timeout: float = TIMEOUT) -> Proc:
        left = max(0.1, timeout - (time.monotonic() - proc.started))  # type: ignore[attr-defined]
        timed_out = False
        try:
            out, err = proc.communicate(timeout=left)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
            out, err = proc.communicate()
        ended = time.monotonic()
        return Proc(proc.args[2:], None if timed_out else proc.returncode, out, err,
                    round(ended - proc.started, 2), timed_out, proc.pid, ended)  # type: ignore[attr-defined]

    def tomes(self, home: Path, *args: str, env: dict[str, str] | None = None,
              timeout: float = TIMEOUT) -> Proc:
        return self.finish(self.spawn(home, *args, env=env), timeout)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# --- reading what happened -------------------------------------------------------------


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by the kill
            pass
    return out


def keys(log: list[dict], ev: str, kind: str | None = None, pid: int | None = None) -> list[str]:
    return [e["key"] for e in log if e["ev"] == ev and (kind is None or e.get("kind") == kind)
            and (pid is None or e["pid"] == pid)]


def wait_for(test: Callable[[], bool], proc: subprocess.Popen, deadline: float = 60.0) -> bool:
    """Poll until ``test`` holds; False if the process ended or time ran out first."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if test():
            return True
        if proc.poll() is not None:
            return test()
        time.sleep(0.02)
    return False


def sql(home: Path, query: str, args: tuple = ()) -> list[tuple]:
    """Read-only, straight from SQLite: the bench's checks do not go through tomes."""
    db = home / "tomes.db"
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=2)
    try:
        return con.execute(query, args).fetchall()
    except sqlite3.Error:
        return []
    finally:
        con.close()


def fold_wal(db: Path) -> None:
    """Fold a database's WAL into its main file so damage to the file is damage to all."""
    con = sqlite3.connect(db)
    try:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()
    for suffix in ("-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)


@contextmanager
def inside(home: Path) -> Iterator[None]:
    """tomes' own API on ``home`` in this process (for `runs` and index status)."""
    from app import settings
    from app.store.db import dispose_all

    saved = {k: os.environ.get(k) for k in ("TOMES_HOME", "TOMES_BACKEND", "TOMES_EMBEDDER")}
    os.environ.update(TOMES_HOME=str(home), TOMES_BACKEND="scripted", TOMES_EMBEDDER="hash")
    settings.reset()
    try:
        yield
    finally:
        dispose_all()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        settings.reset()


def index_state(home: Path, corpus: str) -> dict[str, Any]:
    import retrieval
    from retrieval import files

    with inside(home):
        info = retrieval.status(corpus)
    directory = Path(info["directory"])
    info["files_whole"] = all(files.read_npz(p) is not None for p in directory.glob("*.npz"))
    return info


def expected_vectors(home: Path) -> int:
    """Vectors the hash embedder makes for the store's chunks: one per window."""
    from retrieval.embedders import HashEmbedder

    e = HashEmbedder()
    return sum(len(e.windows(t) or [t]) for (t,) in sql(home, "select text from chunks"))


PROGRESS = ("━", "╸", "╺")


def message(proc: Proc) -> str:
    """The first line a user would read as the answer to what happened."""
    lines = [ln.strip() for ln in (proc.err + "\n" + proc.out).splitlines()]
    lines = [ln for ln in lines if ln and not any(c in ln for c in PROGRESS)]
    for mark in ("error:", "✗", "Traceback", "!", "WARNING", "index file", "warning"):
        for ln in lines:
            if ln.startswith(mark) or (mark == "index file" and mark in ln):
                if mark == "Traceback":
                    return _last_exception(lines)
                return ln
    return lines[0] if lines else ""


def fix_line(proc: Proc) -> str | None:
    return next((ln.strip() for ln in proc.err.splitlines() if ln.strip().startswith("fix:")), None)


def _last_exception(lines: list[str]) -> str:
    for ln in reversed(lines):
        if ":" in ln and not ln.startswith(("File ", "^", "~")) and ln.split(":")[0].replace(".", "").isidentifier():
            return "Traceback … " + ln
    return "Traceback"


def outcome(proc: Proc, ok: bool) -> str:
    if proc.timed_out:
        return "hang"
    if "Traceback (most recent call last)" in proc.text:
        return "traceback"
    if proc.rc == 0:
        return "recovered" if ok else "silent"
    if any(ln.strip().startswith(("error:", "✗")) for ln in proc.text.splitlines()):
        return "clear message"
    return "no message"


@dataclass
class Row:
    group: str
    attack: str
    outcome: str
    seconds: float | None
    lost: str
    message: str
    goal: str
    met: bool
    details: dict[str, Any] = field(default_factory=dict)


# --- templates --------------------------------------------------------------------------


class Templates:
    """Homes built once and copied per attack."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self._made: dict[str, Path] = {}

    def get(self, name: str) -> Path:
        if name not in self._made:
            self._made[name] = getattr(self, "_" + name)()
        return self._made[name]

    def _check(self, proc: Proc, what: str) -> None:
        if proc.rc != 0:
            raise RuntimeError(f"template {what} failed: {proc.err[-400:]}")

    def _river(self) -> Path:
        home = self.bench.home("template-river")
        book = F.river_book(home / "river.txt")
        self._check(self.bench.tomes(home, "ingest", str(book), "--no-embed", env=MR_ENV), "river")
        return home

    def _notes(self) -> Path:
        home = self.bench.home("template-notes")
        book = F.notes_book(home / "notes.txt")
        self._check(self.bench.tomes(home, "ingest", str(book), "-c", "f"), "notes")
        fold_wal(home / "tomes.db")
        return home

    def _story(self) -> Path:
        home = self.bench.home("template-story")
        story = F.short_story(home / "story.txt")
        self._check(self.bench.tomes(home, "ingest", str(story), "--no-embed"), "story")
        return home

    def _books(self) -> Path:
        """The sample books, stored by a clean ingest: what a killed one must end up as."""
        home = self.bench.home("template-books")
        self._check(self.bench.tomes(home, "ingest", *map(str, book_files()), "--no-embed"), "books")
        return home


def book_files() -> list[Path]:
    return sorted(BOOKS.glob("*.txt"), key=lambda p: p.stat().st_size)[:6]


def chunk_counts(home: Path) -> dict[str, int]:
    return dict(sql(home, "select d.title, count(c.id) from documents d "
                          "left join chunks c on c.document_id = d.id group by d.id"))


def doc_damage(home: Path, reference: dict[str, int]) -> dict[str, int]:
    rows = sql(home, "select title, content_hash from documents")
    titles = Counter(t for t, _ in rows)
    counts = chunk_counts(home)
    return {
        "lost": sum(1 for t in reference if t not in titles),
        "duplicated": sum(n - 1 for n in titles.values() if n > 1),
        "partial": sum(1 for t, n in counts.items() if t in reference and n != reference[t]),
        "documents": len(rows),
    }


# --- attacks: kill -9 during a map-reduce run ----------------------------------------------


@dataclass
class Killed:
    home: Path
    run_id: str
    log: list[dict]
    pid: int
    status_after_kill: str


TRIGGERS: dict[str, Callable[[list[dict]], bool]] = {
    # Six maps finished and more in flight.
    "map": lambda log: len(keys(log, "end", "map")) >= 6
    and len(keys(log, "begin", "map")) > len(keys(log, "end", "map")),
    # Two of the four merges finished, the third under way: the collapse node is not done.
    "collapse": lambda log: len(keys(log, "end", "collapse")) >= 2
    and len(keys(log, "begin", "collapse")) >= 3,
    "reduce": lambda log: len(keys(log, "begin", "reduce")) >= 1,
}


def kill_run(bench: Bench, t: Templates, stage: str, env: dict[str, str] = MR_ENV) -> Killed:
    home = bench.home(f"kill-{stage}", t.get("river"))
    log_path = home / "first.jsonl"
    proc = bench.spawn(home, "summarize", "1", "--map-tokens", "0",
                       env={**env, "TOMES_BACKEND": "slow", "TOMES_FAULTS_LOG": str(log_path)})
    hit = wait_for(lambda: TRIGGERS[stage](read_log(log_path)), proc)
    if not hit:
        done = bench.finish(proc, 5)
        raise RuntimeError(f"the run never reached {stage}: rc {done.rc} {done.err[-300:]}")
    time.sleep(0.1)  # inside the call (each takes 0.3 s)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    (run_id,) = sql(home, "select id from runs")[0]
    with inside(home):
        from app.api import Tomes

        status = Tomes().runs()[0]["status"]
    return Killed(home, run_id, read_log(log_path), proc.pid, status)


def resume_row(bench: Bench, killed: Killed, attack: str, group: str = "kill -9, then resume",
               home: Path | None = None, goal: str = "recovered, no call redone",
               env: dict[str, str] = MR_ENV) -> Row:
    home = home or killed.home
    log2 = home / "resume.jsonl"
    proc = bench.tomes(home, "resume", killed.run_id, env={**env, "TOMES_FAULTS_LOG": str(log2)})
    after = read_log(log2)
    finished = Counter(keys(killed.log, "end"))
    in_flight = Counter(keys(killed.log, "begin")) - finished
    resent = keys(after, "begin")
    redone = [k for k in resent if k in finished]
    run = sql(home, "select status, answer from runs where id = ?", (killed.run_id,))
    ok = bool(run) and run[0][0] == "done" and (run[0][1] or "").startswith(ANSWER)
    kinds = Counter(e["kind"] for e in after if e["ev"] == "begin")
    out = outcome(proc, ok)
    return Row(group, attack, out, proc.seconds,
               f"{len(redone)} calls redone" + (f" ({in_flight.total()} in flight)" if in_flight else ""),
               message(proc) if out != "recovered" else
               f"run done: {(run[0][1] or '')[:50]}",
               goal, out == "recovered" and not redone,
               {"status_after_kill": killed.status_after_kill, "calls_before_kill": finished.total(),
                "in_flight_at_kill": in_flight.total(), "resume_calls": dict(kinds),
                "redone": len(redone), "redone_kinds": dict(Counter(
                    e["kind"] for e in after if e["ev"] == "begin" and e["key"] in finished)),
                "rc": proc.rc, "fix": fix_line(proc), "run_status": run[0][0] if run else None})


def attack_kill(stage: str, cache: bool = False) -> Callable[[Bench, Templates], list[Row]]:
    """Without the call cache by default: what the checkpoints alone keep. With it (the
    default setting), a finished call the checkpoint lost is answered from the cache."""
    env = {**MR_ENV, "TOMES_CACHE": "1" if cache else "0"}

    def run(bench: Bench, t: Templates) -> list[Row]:
        killed = kill_run(bench, t, stage, env)
        row = resume_row(bench, killed, f"kill -9 during {stage}" + (", call cache on" if cache else ""),
                         env=env)
        row.message = f"runs showed '{killed.status_after_kill}'; " + row.message
        return [row]
    return run


def attack_checkpoints(bench: Bench, t: Templates) -> list[Row]:
    """checkpoints.db damaged after a kill mid-map: what `tomes resume` does with it."""
    killed = kill_run(bench, t, "map")
    rows = []
    for how in ("random", "truncated"):
        home = bench.home(f"ckpt-{how}", killed.home)
        db = home / "checkpoints.db"
        fold_wal(db)
        F.damage(db, how)
        row = resume_row(bench, killed, f"checkpoints.db {'random bytes' if how == 'random' else 'truncated'}, resume",
                         group="damaged files", home=home,
                         goal="recovered, or a message naming checkpoints.db and what to do")
        row.met = row.outcome == "recovered" or (row.outcome == "clear message"
                                                 and "checkpoints.db" in row.message)
        rows.append(row)
    # The same killed run, resumed by two processes at once.
    home = bench.home("two-resumes", killed.home)
    logs = [home / "a.jsonl", home / "b.jsonl"]
    procs = [bench.spawn(home, "resume", killed.run_id, env={**MR_ENV, "TOMES_FAULTS_LOG": str(p)})
             for p in logs]
    done = [bench.finish(p) for p in procs]
    finished = set(keys(killed.log, "end"))
    sent = [keys(read_log(p), "begin") for p in logs]
    twice = set(sent[0]) & set(sent[1])
    redone = [k for s in sent for k in s if k in finished]
    run = sql(home, "select status, answer from runs where id = ?", (killed.run_id,))
    ok = bool(run) and run[0][0] == "done"
    outs = [outcome(d, ok) for d in done]
    loser = next((d for d, o in zip(done, outs) if o != "recovered"), None)
    # Both going ahead is the defect this row looks for, even when the run ends "done".
    label = outcome(loser, ok) if loser is not None else "silent"
    rows.append(Row(
        "concurrent processes", "two resumes of one run at once", label,
        (loser or done[0]).seconds,
        f"{len(twice)} calls made twice, {len(redone)} redone",
        message(loser) if loser else "both resumes ran to the end",
        "one refuses naming the owner, the other finishes; nothing twice",
        label == "clear message" and ok and not twice and not redone
        and any("recovered" == o for o in outs),
        {"outcomes": outs, "rcs": [d.rc for d in done], "calls": [len(s) for s in sent],
         "made_twice": len(twice), "redone": len(redone), "run_status": run[0][0] if run else None}))
    rows.insert(0, resume_row(bench, killed, "kill -9 during map"))
    rows[0].message = f"runs showed '{killed.status_after_kill}'; " + rows[0].message
    return rows


# --- attacks: kill -9 during ingest and embedding -----------------------------------------


def attack_ingest_kill(bench: Bench, t: Templates) -> list[Row]:
    reference = chunk_counts(t.get("books"))
    files = [str(p) for p in book_files()]
    home = bench.home("kill-ingest")
    proc = bench.spawn(home, "ingest", *files, "--no-embed")
    hit = wait_for(lambda: bool(sql(home, "select count(*) from documents"))
                   and sql(home, "select count(*) from documents")[0][0] >= 2, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    stored = doc_damage(home, reference)
    again = bench.tomes(home, "ingest", *files, "--no-embed")
    after = doc_damage(home, reference)
    ok = hit and after["lost"] == after["duplicated"] == after["partial"] == 0
    out = outcome(again, ok)
    return [Row("kill -9, then run again", "kill -9 during ingest, ingest again", out, again.seconds,
                f"{after['lost']} docs lost, {after['duplicated']} duplicated, {after['partial']} partial",
                message(again), "recovered, nothing lost or duplicated", out == "recovered",
                {"killed_mid_way": hit, "stored_at_kill": stored, "after": after, "rc": again.rc, "fix": fix_line(again)})]


def attack_embed_kill(bench: Bench, t: Templates) -> list[Row]:
    reference = chunk_counts(t.get("books"))
    files = [str(p) for p in book_files()]
    home = bench.home("kill-embed")
    log = home / "embed.jsonl"
    # 0.1 s a batch: still faster than a real model (MiniLM: ~0.5 s per 32 chunks here).
    env = {"TOMES_FAULTS_LOG": str(log), "TOMES_FAULTS_EMBED_DELAY": "0.1"}
    proc = bench.spawn(home, "ingest", *files, env=env)
    hit = wait_for(lambda: sum(1 for e in read_log(log) if e["ev"] == "encode") >= 25, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    batches = [e["rows"] for e in read_log(log) if e["ev"] == "encode"]
    embedded_before = sum(batches[:-1])  # the last batch was cut off mid-way
    log2 = home / "embed2.jsonl"
    again = bench.tomes(home, "ingest", *files, env={"TOMES_FAULTS_LOG": str(log2)})
    rerun = sum(e["rows"] for e in read_log(log2) if e["ev"] == "encode")
    docs = doc_damage(home, reference)
    state = index_state(home, "default")
    want = expected_vectors(home)
    redone = max(0, embedded_before + rerun - want)
    ok = (hit and state["missing"] == 0 and state["stale"] == 0 and state["vectors"] == want
          and state["keyword_in_step"] and docs["lost"] == docs["duplicated"] == docs["partial"] == 0)
    out = outcome(again, ok)
    # The batch under way at the kill is lost; those before it were journaled.
    batch = max(batches, default=0)
    return [Row("kill -9, then run again", "kill -9 during embedding, ingest again", out, again.seconds,
                f"{docs['lost']} docs lost, {docs['duplicated']} dup; {redone} vectors redone",
                message(again), "recovered, nothing lost or duplicated, at most one batch redone",
                out == "recovered" and redone <= batch,
                {"killed_mid_way": hit, "vectors_done_at_kill": embedded_before,
                 "vectors_embedded_on_rerun": rerun, "vectors_expected": want,
                 "vectors_redone": redone, "batch_vectors": batch, "index": {k: state[k] for k in
                 ("chunks", "vectors", "missing", "stale", "keyword_in_step", "files_whole")},
                 "documents": docs, "rc": again.rc, "fix": fix_line(again)})]


# --- attacks: damaged files ------------------------------------------------------------------


def attack_index(bench: Bench, t: Templates, name: str, how: str, then: str = "search") -> Row:
    home = bench.home(f"{name}-{how}", t.get("notes"))
    (path,) = (home / "indexes").glob(f"*/{name}")
    F.damage(path, how)
    mode = "keyword" if name == "keyword.npz" else "dense"
    if then == "search":
        proc = bench.tomes(home, "search", "f", "flour oven bread", "-k", "3", "--mode", mode, "--json")
        try:
            hits = json.loads(proc.out)
        except json.JSONDecodeError:
            hits = []
        found = bool(hits) and "Bakery" in hits[0].get("text", "")
    else:
        more = F.notes_book(home / "more.txt", {"comets": "comet moon orbit tail ice dust"}, seed=9)
        proc = bench.tomes(home, "ingest", str(more), "-c", "f")
        found = True
    state = index_state(home, "f")
    ok = found and state["missing"] == 0 and state["keyword_in_step"] and state["files_whole"]
    out = outcome(proc, ok)
    label = {"empty": "empty", "truncated": "truncated", "bitflip": "bit-flipped"}[how]
    return Row("damaged files", f"{name} {label}, then {then}", out, proc.seconds,
               "nothing (derived)" if ok else f"index {'missing ' + str(state['missing']) if state['missing'] else 'out of step'}",
               message(proc), "recovered: rebuilt from the store, said in one line",
               out == "recovered" and "damaged" in message(proc),
               {"rc": proc.rc, "fix": fix_line(proc), "found": found, "index": {k: state[k] for k in
                ("chunks", "vectors", "missing", "keyword_in_step", "files_whole")}})


def attack_indexes(bench: Bench, t: Templates) -> list[Row]:
    rows = [attack_index(bench, t, name, how) for name in ("keyword.npz", "dense.npz")
            for how in ("empty", "truncated", "bitflip")]
    rows += [attack_index(bench, t, name, "bitflip", then="ingest") for name in ("keyword.npz", "dense.npz")]
    return rows


def attack_index_quick(bench: Bench, t: Templates) -> list[Row]:
    return [attack_index(bench, t, "keyword.npz", "truncated"), attack_index(bench, t, "dense.npz", "bitflip")]


def attack_database(bench: Bench, t: Templates) -> list[Row]:
    rows = []
    variants = [("random", "replaced by random bytes", "docs"), ("truncated", "truncated to half", "docs"),
                ("chunks", "chunks table's root page damaged", "search")]
    for how, label, command in variants:
        home = bench.home(f"db-{how}", t.get("notes"))
        db = home / "tomes.db"
        if how == "chunks":
            F.break_table(db, "chunks")
        else:
            F.damage(db, how)
        args = ["docs"] if command == "docs" else ["search", "f", "flour oven bread", "-k", "3"]
        proc = bench.tomes(home, *args)
        out = outcome(proc, ok=False)  # primary data damaged: success would be silence
        named = str(db) in proc.text and "damaged" in proc.text
        rows.append(Row("damaged files", f"tomes.db {label}, then {command}", out, proc.seconds,
                        "store damaged (primary data)", message(proc),
                        "clear message naming the file and how to restore it",
                        out == "clear message" and named, {"rc": proc.rc, "fix": fix_line(proc), "names_file": named}))
    return rows


def attack_documents(bench: Bench, t: Templates) -> list[Row]:
    rows = []
    home = bench.home("utf8")
    path, bad_at = F.utf8_with_bad_bytes(home / "book.txt")
    proc = bench.tomes(home, "ingest", str(path), "--no-embed")
    text = (sql(home, "select text from documents") or [("",)])[0][0]
    ok = text.count("\ufffd") == 3 and text.count("“It was the best of times,”") >= 37
    out = outcome(proc, ok)
    where = ", ".join(f"{o:,}" for o in bad_at)
    says = "3 byte(s)" in proc.out and where in " ".join(proc.out.split())
    rows.append(Row("damaged files", "UTF-8 book with 3 bad bytes, ingest", out, proc.seconds,
                    f"{text.count(chr(0xFFFD))} chars replaced, text not garbled" if ok else "text garbled",
                    message(proc), "stored as UTF-8, says how many bytes and where",
                    out == "recovered" and says, {"rc": proc.rc, "fix": fix_line(proc), "says_where": says,
                                                  "replacement_chars": text.count("\ufffd")}))

    home = bench.home("pdf-partly")
    pdf = F.scanned_pdf(home / "mixed.pdf", ["Chapter one begins here with words.", None, None,
                                              "Chapter four goes on.", None])
    proc = bench.tomes(home, "ingest", str(pdf), "--no-embed")
    flat = " ".join(proc.out.split())
    ok = bool(sql(home, "select id from documents"))
    out = outcome(proc, ok)
    says = "3 of 5 pages have no text" in flat
    rows.append(Row("damaged files", "PDF with 3 of 5 pages scanned, ingest", out, proc.seconds,
                    "text pages kept" if ok else "document not stored", message(proc),
                    "stored with a warning naming the pages and OCR", out == "recovered" and says,
                    {"rc": proc.rc, "fix": fix_line(proc), "warns": says, "ocr_hint": "OCR" in flat}))

    home = bench.home("pdf-scanned")
    pdf = F.scanned_pdf(home / "scanned.pdf", [None, None, None])
    proc = bench.tomes(home, "ingest", str(pdf), "--no-embed")
    out = outcome(proc, ok=False)  # nothing to store: success would be a silent empty document
    rows.append(Row("damaged files", "PDF with every page scanned, ingest", out, proc.seconds,
                    "nothing to keep", message(proc), "clear message: no text, needs OCR",
                    out == "clear message" and "OCR" in proc.text, {"rc": proc.rc, "fix": fix_line(proc)}))
    return rows


# --- attacks: concurrent processes --------------------------------------------------------------


def worst(done: list[Proc], outs: list[str]) -> tuple[Proc, str] | None:
    """The process a user would complain about: a failure before a wrong success."""
    rank = ["traceback", "hang", "no message", "clear message", "silent"]
    bad = [(rank.index(o), i) for i, o in enumerate(outs) if o in rank]
    if not bad:
        return None
    _, i = min(bad)
    return done[i], outs[i]


def attack_concurrent_ingests(bench: Bench, t: Templates, trials: int = 4) -> list[Row]:
    """Races are intermittent: each attack is tried ``trials`` times on a fresh home and
    the row reports the first trial that went wrong (and how many did)."""
    topics = [{"bakery": "flour oven bread crust yeast"}, {"orbit": "planet moon gravity comet"},
              {"harbour": "boat tide rope gull pier"}]

    def three_files(i: int) -> tuple[list[Proc], bool, dict]:
        home = bench.home(f"three-ingests-{i}")
        paths = [F.notes_book(home / f"n{j}.txt", tp, seed=j) for j, tp in enumerate(topics)]
        done = [bench.finish(p) for p in [bench.spawn(home, "ingest", str(p)) for p in paths]]
        docs = sql(home, "select title from documents")
        state = index_state(home, "default") if docs else {"missing": -1, "keyword_in_step": False}
        ok = len(docs) == 3 and state["missing"] == 0 and state["keyword_in_step"]
        return done, ok, {"documents": len(docs), "index_missing": state["missing"],
                          "lost": max(0, 3 - len(docs)), "duplicated": max(0, len(docs) - 3)}

    def one_file(i: int) -> tuple[list[Proc], bool, dict]:
        home = bench.home(f"same-file-{i}")
        path = F.notes_book(home / "same.txt")
        done = [bench.finish(p) for p in [bench.spawn(home, "ingest", str(path)) for _ in range(3)]]
        docs = sql(home, "select title from documents")
        added = sum("1 added" in d.out for d in done)
        unchanged = sum("1 unchanged" in d.out for d in done)
        ok = len(docs) == 1 and added == 1 and unchanged == 2
        odd = [ln.strip() for d in done for ln in d.out.splitlines()
               if "in corpus" in ln and "1 added" not in ln and "1 unchanged" not in ln]
        return done, ok, {"documents": len(docs), "added": added, "unchanged": unchanged,
                          "lost": 1 if not docs else 0, "duplicated": max(0, len(docs) - 1),
                          "chunks": len(sql(home, "select id from chunks")), "odd": odd}

    rows = []
    for attack, run, goal in (("three ingests at once on a fresh home", three_files,
                               "all three stored and indexed"),
                              ("one file ingested three times at once", one_file,
                               "stored once: one added, two unchanged")):
        trials_info, first_bad = [], None
        for i in range(trials):
            done, ok, info = run(i)
            outs = [outcome(d, ok) for d in done]
            info.update(outcomes=outs, rcs=[d.rc for d in done], seconds=max(d.seconds for d in done))
            trials_info.append(info)
            bad = worst(done, outs)
            if bad and first_bad is None:
                first_bad = (bad, info)
        failed = sum(1 for info in trials_info if any(o != "recovered" for o in info["outcomes"]))
        lost = sum(info["lost"] for info in trials_info)
        dup = sum(info["duplicated"] for info in trials_info)
        if first_bad:
            (proc, out), info = first_bad
            # All exit 0 but one said something else: that line is the message.
            text = info["odd"][0] if out == "silent" and info.get("odd") else message(proc)
        else:
            out, info, text = "recovered", trials_info[0], "every process exit 0, each file stored once"
        rows.append(Row("concurrent processes", attack, out, info["seconds"],
                        f"{failed}/{trials} trials went wrong: {lost} good files not stored, {dup} duplicated"
                        if failed else f"nothing ({trials} trial{'s' if trials > 1 else ''})",
                        text, goal, failed == 0, {"trials": trials_info}))
    return rows


# --- attacks: model servers ---------------------------------------------------------------------

NGINX = (200, "text/html", b"<html><head><title>Welcome to nginx!</title></head><body>nginx</body></html>")

SERVER_FAULTS: list[tuple[str, Callable[[FaultServer], None], str]] = [
    ("500 then ok", lambda s: s.script.append(("status", 500, {"message": "boom"}, {})), "recovered"),
    ("429 then ok", lambda s: s.script.append(
        ("status", 429, {"error": {"message": "slow down"}}, {"Retry-After": "1"})), "recovered"),
    ("503 loading, twice, then ok", lambda s: s.script.extend(
        [("status", 503, {"error": {"message": "loading"}}, {})] * 2), "recovered"),
    ("hang (no reply for 30 s)", lambda s: setattr(s, "default", ("sleep", 30.0)), "clear message"),
    ("trickle (a byte every 50 ms)", lambda s: setattr(s, "default", ("trickle", 30.0)), "clear message"),
    ("HTML page at /v1/models", lambda s: setattr(s, "models_reply", NGINX), "clear message"),
    ("500 at /v1/models", lambda s: setattr(s, "models_reply", (500, "text/plain", b"Internal Server Error")),
     "clear message"),
    ("empty reply, always", lambda s: setattr(s, "default", ("empty",)), "clear message"),
    ("empty reply once, then ok", lambda s: s.script.append(("empty",)), "recovered"),
    ("malformed JSON body, always", lambda s: setattr(s, "default", ("malformed",)), "clear message"),
]


def _server_env(url: str) -> dict[str, str]:
    return {"TOMES_BACKEND": "openai", "TOMES_BASE_URL": url, "TOMES_CACHE": "0",
            "TOMES_REQUEST_TIMEOUT": str(REQUEST_TIMEOUT), "TOMES_CALL_TIMEOUT": str(CALL_TIMEOUT)}


def _server_row(bench: Bench, attack: str, proc: Proc, server: FaultServer | None, want: str) -> Row:
    ok = STORY_ANSWER in proc.out
    out = outcome(proc, ok)
    # From the first chat request (else the first request of any kind) to the process's
    # exit: start-up and loading the pipeline are not the server's doing. With no server
    # (down), from the start less the measured CLI start-up.
    since = server and (server.first_chat or server.first_seen)
    if since:
        waited = round(proc.ended - since, 2)
    else:  # an estimate: start-up varies on a loaded machine
        waited = max(0.0, round(proc.seconds - bench.startup, 2))  # type: ignore[attr-defined]
    within = waited <= CALL_TIMEOUT + BOUND_SLACK
    requests = server.chat_requests if server is not None else None
    return Row("model server", attack, out, proc.seconds,
               (f"{requests} requests, " if requests is not None else "") + f"waited {waited:.1f} s",
               message(proc), f"{want}, waited at most the {CALL_TIMEOUT:g} s bound",
               out == want and within,
               {"rc": proc.rc, "fix": fix_line(proc), "chat_requests": requests,
                "waited_s": waited, "within_bound": within, "bound_s": CALL_TIMEOUT})


def attack_servers(bench: Bench, t: Templates, *, quick: bool = False) -> list[Row]:
    rows = []
    faults = [f for f in SERVER_FAULTS if not quick or f[0] in ("500 then ok", "hang (no reply for 30 s)",
                                                              "empty reply, always")]
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    home = bench.home("server-down", t.get("story"))
    proc = bench.tomes(home, "summarize", "1", env=_server_env(f"http://127.0.0.1:{port}/v1"))
    rows.append(_server_row(bench, "server down (connection refused)", proc, None, "clear message"))
    for attack, setup, want in faults:
        home = bench.home("server", t.get("story"))
        with FaultServer() as server:
            setup(server)
            proc = bench.tomes(home, "summarize", "1", env=_server_env(server.base_url), timeout=45)
        rows.append(_server_row(bench, attack, proc, server, want))
    return rows


# --- the bench -----------------------------------------------------------------------------------


ATTACKS: list[tuple[str, Callable[..., list[Row]], bool]] = [
    # name, attack, in --quick
    ("kill-map+checkpoints+two-resumes", attack_checkpoints, True),
    ("kill-collapse", attack_kill("collapse"), False),
    ("kill-collapse-cached", attack_kill("collapse", cache=True), False),
    ("kill-reduce", attack_kill("reduce"), True),
    ("kill-ingest", attack_ingest_kill, True),
    ("kill-embed", attack_embed_kill, False),
    ("indexes", attack_indexes, False),
    ("indexes-quick", attack_index_quick, True),
    ("database", attack_database, True),
    ("documents", attack_documents, True),
    ("concurrent-ingests", attack_concurrent_ingests, True),
    ("servers", attack_servers, True),
]

GROUPS = ["kill -9, then resume", "kill -9, then run again", "damaged files", "concurrent processes",
          "model server", "bench"]
QUICK = {"servers": {"quick": True}, "concurrent-ingests": {"trials": 1}}

COLOURS = {"recovered": "green", "clear message": "cyan", "traceback": "red", "hang": "red",
           "silent": "red", "no message": "yellow", "bench error": "magenta"}


def _short(text: str, limit: int = 150) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a subset: one attack of each kind")
    parser.add_argument("--only", help="run the attacks whose name contains this")
    parser.add_argument("--keep", action="store_true", help="keep the temp homes (printed)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "faults.json")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    for key in [k for k in os.environ if k.startswith("TOMES_")]:
        # This process reads the attacked homes through tomes' API: none of the user's
        # settings (a TOMES_DATABASE_URL above all) may point it anywhere else.
        del os.environ[key]
    console = Console(width=max(Console().width, 180))
    work = Path(tempfile.mkdtemp(prefix="tomes-faults-"))
    bench = Bench(work)
    templates = Templates(bench)
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    probe = bench.tomes(bench.home("startup"), "--help")
    bench.startup = probe.seconds  # type: ignore[attr-defined]
    rows: list[Row] = []
    chosen = [(n, a) for n, a, q in ATTACKS
              if (q or not args.quick) and (args.quick or n != "indexes-quick")
              and (not args.only or args.only in n)]
    for name, attack in chosen:
        t0 = time.perf_counter()
        try:
            got = attack(bench, templates, **QUICK.get(name, {})) if args.quick else attack(bench, templates)
        except Exception as exc:  # one broken attack must not cost the others' rows
            got = [Row("bench", name, "bench error", None, "—", f"{type(exc).__name__}: {exc}"[:200],
                       "—", False)]
        for r in got:  # temp paths say nothing: each is the attack's own home
            r.message = re.sub(re.escape(str(work)) + r"/[^/\s]+", "$TOMES_HOME", r.message)
        rows.extend(got)
        console.print(f"[dim]{name}: {len(got)} rows in {time.perf_counter() - t0:.1f} s[/]")

    order = [g for g in GROUPS if any(r.group == g for r in rows)]
    rows.sort(key=lambda r: order.index(r.group) if r.group in order else len(order))
    table = Table(title="tomes under faults (issue 9)", show_lines=False)
    for col, kw in (("attack", {"max_width": 44}), ("outcome", {"no_wrap": True}),
                    ("s", {"justify": "right"}), ("work lost", {"max_width": 36}),
                    ("message (first line)", {"max_width": 64, "overflow": "fold"}),
                    ("goal", {"justify": "center"})):
        table.add_column(col, **kw)
    group = None
    for r in rows:
        if r.group != group:
            table.add_section()
            table.add_row(f"[bold]{r.group}[/]", "", "", "", "", "")
            group = r.group
        table.add_row(r.attack, f"[{COLOURS.get(r.outcome, 'white')}]{r.outcome}[/]",
                      "" if r.seconds is None else f"{r.seconds:.1f}", r.lost,
                      _short(r.message).replace("[", "\\["), "[green]✓[/]" if r.met else "[red]✗[/]")
    console.print(table)
    counts = Counter(r.outcome for r in rows)
    met = sum(r.met for r in rows)
    console.print(f"{met}/{len(rows)} rows meet the goal; outcomes: "
                  + ", ".join(f"{k} {v}" for k, v in counts.most_common())
                  + f"; {time.perf_counter() - started:.0f} s in all; load average "
                  f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after (timings stretch with it)")

    result = {
        "machine": platform.platform(), "python": sys.version.split()[0],
        "cpus": os.cpu_count(), "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "quick": args.quick, "startup_s": bench.startup,  # type: ignore[attr-defined]
        "seconds": round(time.perf_counter() - started, 1),
        "settings": {"request_timeout_s": REQUEST_TIMEOUT, "call_timeout_s": CALL_TIMEOUT,
                     "mapreduce_env": MR_ENV, "child_timeout_s": TIMEOUT},
        "summary": {"rows": len(rows), "goal_met": met, "outcomes": dict(counts)},
        "rows": [r.__dict__ for r in rows],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False, default=str) + "\n")
    console.print(f"[dim]wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}[/]")
    if args.keep:
        console.print(f"[dim]homes kept under {work}[/]")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
