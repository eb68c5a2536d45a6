"""The call log's connection to a SQLite store: kept open, committed in groups.

The call log writes a row per model call. Through the pool each row paid a checkout, a
reset on return and a commit of its own, more than the insert itself, and all of it on
the path of every iteration of a recursive run (bench/recursive_peers.py). Here a row is
inserted at once on a connection kept open for the engine (so its id is known) and
committed by a timer on the event loop that wrote it, ``COMMIT_WITHIN_S`` later: one
commit for the rows written meanwhile, run while the loop waits on a model. Not by a
thread: waking one per call to commit cost more (GIL hand-offs) than the commit saved.
Code with no running loop commits at once.

Before any other connection of this process is checked out from the engine's pool, the
rows waiting are committed, so every reader in this process sees them and no writer in
it waits on them; other processes see them within ``COMMIT_WITHIN_S``. Rows whose loop
ended (or stalled) before its timer are committed by a watchdog within
``WATCH_EVERY_S``, and at exit. A process killed in that window loses those rows, as it
loses a call under way: a resume asks them again.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, event

COMMIT_WITHIN_S = 0.002
WATCH_EVERY_S = 0.5
_PARK_AFTER = 20  # idle watchdog rounds before it sleeps until the next write

log = logging.getLogger(__name__)


class _Kept:
    def __init__(self, engine: Engine) -> None:
        fairy = engine.raw_connection()
        fairy.detach()  # ours to close (drop), not the pool's
        self.engine, self.pid, self.conn = engine, os.getpid(), fairy
        self.lock = threading.RLock()
        self.dirty = False
        self.dirty_at = 0.0
        self.timer: tuple[Any, Any] | None = None  # (loop, its TimerHandle)
        self.warned = False

    def wrote(self) -> None:
        """A row is waiting (called under the lock): commit it soon."""
        if not self.dirty:
            self.dirty, self.dirty_at = True, time.monotonic()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.commit()
            return
        # One timer at a time (``_due`` clears it); one whose loop is gone is replaced.
        if self.timer is None or self.timer[0].is_closed():
            self.timer = (loop, loop.call_later(COMMIT_WITHIN_S, self._due))
        _watchdog()

    def _due(self) -> None:
        self.timer = None
        self.commit()

    def commit(self) -> None:
        with self.lock:
            if not self.dirty:
                return
            try:
                self.conn.commit()
            except Exception as exc:  # noqa: BLE001 - e.g. locked past busy_timeout: retried
                if not self.warned:
                    self.warned = True
                    log.warning("could not commit the call log yet (%s); retrying", exc)
                return
            self.dirty = False


_kept: dict[int, _Kept] = {}
_guard = threading.Lock()
_wake = threading.Event()
_watch_pid: int | None = None
_parked = False


def _get(engine: Engine) -> _Kept:
    kept = _kept.get(id(engine))
    if kept is None or kept.engine is not engine or kept.pid != os.getpid():
        with _guard:
            kept = _kept.get(id(engine))
            if kept is None or kept.engine is not engine or kept.pid != os.getpid():
                # A forked process makes its own (the parent's is the parent's).
                kept = _kept[id(engine)] = _Kept(engine)
    return kept


@contextmanager
def connection(engine: Engine, *, write: bool = False) -> Iterator[Any]:
    """The engine's kept DBAPI connection, for one statement or a few. A read sees the
    rows still waiting for their commit; a ``write`` is committed soon (do not commit
    it yourself). A failed statement leaves the rows before it waiting, unless SQLite
    ended the transaction; a broken connection is replaced on the next use."""
    kept = _get(engine)
    with kept.lock:
        try:
            yield kept.conn
        except BaseException:
            if not _in_transaction(kept):
                kept.dirty = False
            raise
        if write:
            kept.wrote()


def _in_transaction(kept: _Kept) -> bool:
    try:
        return bool(kept.conn.dbapi_connection.in_transaction)
    except Exception:  # noqa: BLE001 - unusable: the next use opens another
        drop(kept.engine)
        return False


def flush(engine: Engine) -> None:
    """Commit the rows waiting on this engine's kept connection, now."""
    kept = _kept.get(id(engine))
    if kept is not None and kept.engine is engine and kept.pid == os.getpid() and kept.dirty:
        kept.commit()


def flush_all() -> None:
    for kept in list(_kept.values()):
        if kept.pid == os.getpid():
            kept.commit()


def watch(engine: Engine) -> None:
    """Commit what waits before any other connection of ``engine`` is checked out."""
    event.listen(engine, "checkout", lambda *_args: flush(engine))


def drop(engine: Engine) -> None:
    """Commit what waits and close the kept connection (``dispose_all``)."""
    kept = _kept.pop(id(engine), None)
    if kept is None or kept.pid != os.getpid():
        return
    with kept.lock:
        kept.commit()
        try:
            kept.conn.close()
        except Exception:  # noqa: BLE001 - closing what is already broken
            pass


def _watchdog() -> None:
    global _watch_pid
    if _watch_pid != os.getpid():
        with _guard:
            if _watch_pid != os.getpid():
                threading.Thread(target=_watch_forever, name="tomes-call-log-watch",
                                 daemon=True).start()
                _watch_pid = os.getpid()
    elif _parked:
        _wake.set()


def _watch_forever() -> None:
    """Commit rows that waited a whole round (their loop ended or stalled); sleep until
    the next write after ``_PARK_AFTER`` rounds with nothing waiting."""
    global _parked
    idle = 0
    while True:
        time.sleep(WATCH_EVERY_S)
        now, waiting = time.monotonic(), False
        for kept in list(_kept.values()):
            if kept.pid == os.getpid() and kept.dirty:
                waiting = True
                if now - kept.dirty_at >= WATCH_EVERY_S:
                    kept.commit()
        idle = 0 if waiting else idle + 1
        if idle >= _PARK_AFTER:
            _wake.clear()
            _parked = True
            # A write between the last round and the flag would not wake us: look again.
            if not any(k.dirty for k in list(_kept.values()) if k.pid == os.getpid()):
                _wake.wait()
            _parked = False
            idle = 0


atexit.register(flush_all)
