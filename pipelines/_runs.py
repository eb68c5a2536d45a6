"""Run bookkeeping: the Run row every pipeline keeps, its lease, and the checkpointer.

The Run row is what users list and resume (``tomes runs``, ``tomes resume RUN``); the
checkpoints (thread id = run id) are what makes a resumed run skip finished work.

A run has one owner at a time: the process working on it holds a lease in the row (pid,
host, heartbeat). A second process that tries to resume a live run is refused, naming the
owner; a run whose owner died (SIGKILL, a crash, a reboot) shows as ``interrupted``.
"""

from __future__ import annotations

import contextvars
import fcntl
import logging
import os
import socket
import sqlite3
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from app.errors import NotFound, TomesError
from app.settings import get_settings
from app.store import Run, session_scope
from app.store.models import utcnow

# The owner refreshes its heartbeat this often; on another host (where its pid cannot be
# checked) an owner silent for LEASE_TTL is taken to be gone.
HEARTBEAT_S = 15.0
LEASE_TTL = timedelta(seconds=120)

_HOST = socket.gethostname()
log = logging.getLogger(__name__)
# Runs this process owns -> the event that stops their heartbeat.
_owned: dict[str, threading.Event] = {}
_owned_lock = threading.Lock()
_interrupted: list[str] = []


class RunBusy(TomesError):
    """Another live process owns the run."""


def new_run_id() -> str:
    return str(uuid.uuid4())


# What callers above a strategy add to the params of the run it creates (the auto
# strategy's choice and reason, the batch item): set around the strategy call.
run_notes: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "tomes_run_notes", default=None)


def create_run(
    run_id: str | None, pipeline: str, target: str, question: str | None, params: dict[str, Any]
) -> str:
    run_id = run_id or new_run_id()
    params = {**params, **(run_notes.get() or {})}
    with session_scope() as s:
        if s.get(Run, run_id) is not None:
            raise TomesError(f"run {run_id} already exists", f"continue it with `tomes resume {run_id}`")
        s.add(Run(id=run_id, pipeline=pipeline, target=target, question=question,
                  params=params, status="running", owner_pid=os.getpid(), owner_host=_HOST,
                  heartbeat_at=utcnow()))
    _start_heartbeat(run_id)
    return run_id


def load_run(run_id: str) -> dict[str, Any]:
    with session_scope() as s:
        run = s.get(Run, run_id)
        if run is None:
            raise NotFound(f"no run with id {run_id}", "list runs with `tomes runs`")
        _reap(run)
        return {c.name: getattr(run, c.name) for c in Run.__table__.columns}


def load_for_resume(run_id: str, pipeline: str) -> tuple[dict[str, Any], Any]:
    """(the run to continue, its stored Result if it is done: nothing left to do)."""
    from pipelines.result import Result

    run = load_run(run_id)
    if run["pipeline"] != pipeline:
        raise TomesError(f"run {run_id} is a {run['pipeline']} run",
                         "resume it with its own pipeline (`tomes resume RUN`)")
    done = Result.from_dict(run["result"]) if run["status"] == "done" and run["result"] else None
    return run, done


@contextmanager
def failures_kept(run_id: str, kept: str = "finished work is kept") -> Iterator[None]:
    """Around a run's work: a failure marks the run failed and comes out as a TomesError
    whose fix ends in the resume command; Ctrl-C, SIGTERM or a cancel mark it interrupted."""
    resume_fix = f"continue with `tomes resume {run_id}` ({kept})"
    try:
        yield
    except TomesError as exc:
        fail_run(run_id, f"{exc.cause}. {exc.fix or ''}".strip())
        raise TomesError(exc.cause, f"{exc.fix}; then {resume_fix}" if exc.fix else resume_fix) from exc
    except Exception as exc:
        from app.store.db import damaged_store, is_damage

        if is_damage(exc):  # the store itself: no run row can be written, resuming won't help
            raise damaged_store(get_settings().db_path, exc) from exc
        fail_run(run_id, f"{type(exc).__name__}: {exc}")
        raise TomesError(f"run {run_id} stopped: {exc}", f"fix the cause, then {resume_fix}") from exc
    except BaseException:
        interrupt_run(run_id)
        raise


def mark_running(run_id: str) -> None:
    """Take the run's lease for this process (a resume), or refuse if a live process
    holds it. Compare-and-swap on the old owner, so of two resumers only one wins."""
    with session_scope() as s:
        run = s.get(Run, run_id)
        if run is None:
            raise NotFound(f"no run with id {run_id}", "list runs with `tomes runs`")
        if run.status == "running" and not _mine(run) and owner_alive(run):
            raise _busy(run)
        taken = s.execute(
            update(Run)
            # IS NOT DISTINCT FROM: NULL-safe equality on PostgreSQL too (SQLite's IS).
            .where(Run.id == run_id, Run.owner_pid.is_not_distinct_from(run.owner_pid),
                   Run.owner_host.is_not_distinct_from(run.owner_host))
            .values(status="running", error=None, finished_at=None, owner_pid=os.getpid(),
                    owner_host=_HOST, heartbeat_at=utcnow())
            .execution_options(synchronize_session=False)
        ).rowcount
    if not taken:
        raise _busy(_row(run_id))
    _start_heartbeat(run_id)


def _busy(run: Run) -> RunBusy:
    return RunBusy(
        f"run {run.id} is being worked on by process {run.owner_pid} on {run.owner_host}",
        f"wait for it to finish (`tomes runs`), or stop that process (`kill {run.owner_pid}`) "
        "and resume again",
    )


def _row(run_id: str) -> Run:
    with session_scope() as s:
        run = s.get(Run, run_id)
        s.expunge(run)
        return run


def finish_run(run_id: str, answer: str, result: dict[str, Any]) -> None:
    _release(run_id, status="done", answer=answer, result=result, error=None,
             finished_at=utcnow())


def fail_run(run_id: str, error: str) -> None:
    _release(run_id, status="failed", error=error, finished_at=utcnow())


def interrupt_run(run_id: str) -> None:
    """Stopped by the user (Ctrl-C, SIGTERM) or cancelled: resumable, not failed."""
    _release(run_id, status="interrupted", error="interrupted", finished_at=utcnow())
    _interrupted.append(run_id)


def last_runs() -> list[str]:
    """On a clean stop: the runs this process was cut off from, all marked interrupted
    (those still held are released now), for the resume hint."""
    with _owned_lock:
        held = list(_owned)
    for run_id in held:
        interrupt_run(run_id)
    return list(dict.fromkeys(_interrupted))


def reap_runs() -> int:
    """Mark runs whose owner is gone as interrupted; the number marked."""
    with session_scope() as s:
        running = s.scalars(select(Run).where(Run.status == "running")).all()
        return sum(_reap(run) for run in running)


def owner_alive(run: Run, now: datetime | None = None) -> bool:
    if run.owner_pid is None:
        return False  # made before leases existed, or released: nobody holds it
    if run.owner_host == _HOST:
        try:
            os.kill(run.owner_pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # another user's live process
        return True
    beat = run.heartbeat_at or run.created_at
    return (now or utcnow()) - beat < LEASE_TTL


def _mine(run: Run) -> bool:
    return run.owner_pid == os.getpid() and run.owner_host == _HOST


def _reap(run: Run) -> bool:
    if run.status != "running" or _mine(run) or owner_alive(run):
        return False
    run.status, run.error = "interrupted", "its process stopped before the run finished"
    run.owner_pid = run.owner_host = None
    return True


def _release(run_id: str, **values: Any) -> None:
    _stop_heartbeat(run_id)
    with session_scope() as s:
        run = s.get(Run, run_id)
        if run is not None:
            for key, value in values.items():
                setattr(run, key, value)
            run.owner_pid = run.owner_host = None


def _start_heartbeat(run_id: str) -> None:
    with _owned_lock:
        if run_id in _owned:
            return
        stop = _owned[run_id] = threading.Event()
    # The beat writes to this run's database: the caller's (possibly scoped) settings.
    context = contextvars.copy_context()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                with session_scope() as s:
                    run = s.get(Run, run_id)
                    if run is None or not _mine(run):
                        return
                    run.heartbeat_at = utcnow()
            except Exception:  # noqa: BLE001 - a missed beat only ages the lease
                continue

    threading.Thread(target=context.run, args=(beat,), name=f"tomes-lease-{run_id[:8]}",
                     daemon=True).start()


def _stop_heartbeat(run_id: str) -> None:
    with _owned_lock:
        stop = _owned.pop(run_id, None)
    if stop is not None:
        stop.set()


def postgres_checkpoints() -> str | None:
    """The libpq URL checkpoints go to when the store is PostgreSQL (they live where the
    store lives, so a run resumes on any machine), else None: SQLite at checkpoint_path."""
    from app.store.db import postgres_dsn

    return postgres_dsn(get_settings().database_url)


@asynccontextmanager
async def checkpointer() -> AsyncIterator[Any]:
    """The checkpointer: SQLite at ``checkpoint_path``, or the store's PostgreSQL
    database. Async: the graphs run async so map calls overlap (the sync savers refuse
    async use)."""
    dsn = postgres_checkpoints()
    if dsn is not None:
        async with _postgres_checkpointer(dsn) as saver:
            yield saver
        return
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    with sqlite_checkpoints() as path:
        async with AsyncSqliteSaver.from_conn_string(str(path)) as saver:
            yield saver


@contextmanager
def sqlite_checkpoints() -> Iterator[Path]:
    """The SQLite checkpoints file, checked before a saver opens it (every SQLite saver
    opens it through this). A damaged one is set aside, with its -wal and -shm, as
    ``checkpoints.db.damaged-<time>`` and a fresh one is started: checkpoints are a
    shortcut, the run's call log has every finished call, and a resume replays them
    (``replay_scope``) instead of asking again. Damage found later, by a read or write
    during the run, sets the file aside the same way and stops the run with one message;
    the next resume starts on the fresh file."""
    path = get_settings().checkpoint_path
    path.parent.mkdir(parents=True, exist_ok=True)
    _set_aside_if_damaged(path)
    try:
        yield path
    except sqlite3.DatabaseError as exc:
        # The store's raw connections (the call log) raise the same class: only a
        # checkpoints file that fails its own check is set aside.
        if _sqlite_damage(exc) and (dest := _set_aside_if_damaged(path)) is not None:
            raise TomesError(
                f"the checkpoints file {path} is damaged ({_first_line(exc)}); it was set "
                f"aside as {dest.name}",
                "nothing finished is lost: a fresh checkpoints file is started and the "
                "run's finished calls are replayed from its call log",
            ) from exc
        raise


def _sqlite_damage(exc: BaseException) -> bool:
    """SQLITE_CORRUPT / SQLITE_NOTADB from the sqlite3 module (not SQLITE_BUSY & co)."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    return getattr(exc, "sqlite_errorname", "") in ("SQLITE_CORRUPT", "SQLITE_NOTADB") or any(
        text in str(exc) for text in ("database disk image is malformed", "file is not a database"))


def _first_line(exc: BaseException | str) -> str:
    return (str(exc).splitlines() or [""])[0][:100]


def _checkpoints_damage(path: Path) -> str | None:
    """Why the file at ``path`` cannot be trusted, or None (whole, or not there yet).
    quick_check reads every page (not the index-to-table cross-checks): 0.1 s for 100 MB."""
    if not path.exists():
        return None
    try:
        con = sqlite3.connect(path, timeout=30)
        try:
            found = [row[0] for row in con.execute("PRAGMA quick_check(3)")]
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        if _sqlite_damage(exc):
            return _first_line(exc)
        raise  # locked, unreadable...: the saver would fail the same way, and say so
    return None if found == ["ok"] else _first_line("; ".join(found))


def _set_aside_if_damaged(path: Path) -> Path | None:
    """Move a damaged checkpoints file aside and say so in one line; where it went, or
    None when it is whole. Under a lock: of two processes that found it damaged, the
    second checks again and finds the first one's fresh file."""
    if _checkpoints_damage(path) is None:
        return None
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        why = _checkpoints_damage(path)
        if why is None:
            return None
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        dest = path.with_name(f"{path.name}.damaged-{stamp}")
        if dest.exists():
            dest = dest.with_name(f"{dest.name}-{os.getpid()}")
        for suffix in ("", "-wal", "-shm"):  # a stale WAL must not be replayed into the new file
            try:
                os.replace(path.with_name(path.name + suffix), dest.with_name(dest.name + suffix))
            except FileNotFoundError:
                pass
    finally:
        os.close(fd)
    _warn(f"the checkpoints file {path} is damaged ({why}); set it aside as {dest.name} and "
          "started a fresh one (a resumed run's finished calls come from its call log)",
          {"damaged": str(dest)})
    return dest


def _warn(message: str, data: dict[str, Any]) -> None:
    """One line on stderr (the log) and, inside a run, in its events (what the UI shows)."""
    log.warning(message)
    from app.events import Event
    from serving.lm import current_events

    on_event = current_events.get()
    if on_event is not None:
        on_event(Event("checkpoints", message=message, data={"warning": True, **data}))


@asynccontextmanager
async def _postgres_checkpointer(dsn: str) -> AsyncIterator[Any]:
    from app.store.db import LOCK_MIGRATE

    try:
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
    except ImportError as exc:
        raise TomesError("the store is PostgreSQL, and LangGraph's PostgreSQL checkpointer "
                         "is not installed",
                         "pip install 'tomes[scale]' (langgraph-checkpoint-postgres)") from exc
    async with AsyncPostgresSaver.from_conn_string(dsn) as saver:
        # Its tables are created one process at a time (CREATE TABLE IF NOT EXISTS races
        # between processes); the graphs' own setup() then finds them in place.
        async with saver.conn.cursor() as cur:
            await cur.execute("SELECT pg_advisory_lock(%s, 1)", (LOCK_MIGRATE,))
            try:
                await saver.setup()
            finally:
                await cur.execute("SELECT pg_advisory_unlock(%s, 1)", (LOCK_MIGRATE,))
        yield saver


# --- the run's model -----------------------------------------------------------------

SERVING_KEYS = ("backend", "model", "base_url")


def serving_of(lm: Any) -> dict[str, Any]:
    """What a resume needs to find the same model again: saved in the run's params."""
    backend = lm.backend
    return {"backend": backend.name, "model": lm.model,
            "base_url": getattr(backend, "base_url", None), "context_window": lm.context_window}


def lm_for_run(run: dict[str, Any], overrides: dict[str, Any] | None = None) -> Any:
    """The LM a resumed run continues on: the backend, model and endpoint it started with
    (today's settings are not the run's), unless the caller names others explicitly.

    Its pieces were planned for the window it started with, so a model with a smaller
    window is refused rather than left to overflow and advise resuming again."""
    from serving.lm import get_lm

    params = run.get("params") or {}
    saved = {k: params.get(k) for k in SERVING_KEYS if params.get(k)}
    overrides = {k: v for k, v in (overrides or {}).items() if v}
    wanted = saved | overrides
    if wanted.get("backend") != saved.get("backend") and "model" not in overrides:
        wanted.pop("model", None)  # another backend: its own default model
    described = " ".join(
        f"{k} {wanted[k]}" for k in SERVING_KEYS if wanted.get(k)) or "the default model"
    flags = "--backend NAME --model MODEL --base-url URL"
    try:
        from app.settings import override

        with override(**wanted):
            lm = get_lm()
            lm.backend.check()  # an unreachable server fails here, not mid-run
            window = lm.context_window
    except TomesError as exc:
        raise TomesError(
            f"run {run['id']} continues on {described}, which is not available: {exc.cause}",
            (f"{exc.fix}; " if exc.fix else "make it available; ")
            + f"or continue on another with `tomes resume {run['id']} {flags}`",
        ) from exc
    planned = params.get("context_window")
    if planned and window < planned:
        raise TomesError(
            f"run {run['id']} was planned for a {planned:,}-token window "
            f"({saved.get('backend')} {saved.get('model')}); {described} has {window:,}",
            f"resume it on a model with at least that window "
            f"(`tomes resume {run['id']} {flags}`), or start the run again to re-plan it",
        )
    return lm
