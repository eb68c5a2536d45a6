"""Opening the database: one engine per file, migrated to the newest schema on open."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DatabaseError
from sqlalchemy.orm import Session, sessionmaker

from app.errors import TomesError
from app.settings import get_settings

_MIGRATIONS = Path(__file__).parent / "migrations"
_lock = threading.Lock()
_engines: dict[str, Engine] = {}
_by_path: dict[str, Engine] = {}  # the path as given (absolute) -> its engine


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def _set_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets the UI read while a batch job writes; foreign keys make deletes cascade.
    cur.execute("PRAGMA journal_mode=WAL")
    # With WAL, NORMAL is still safe against corruption (a power cut may lose the last
    # commits, never the database) and makes each commit ~10x cheaper: one model-call
    # log row per call must stay well under a millisecond.
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def open_store(path: Path | None = None) -> Engine:
    """The engine for ``path`` (default: the settings' database), created and migrated
    on first use in this process."""
    path = Path(path) if path is not None else get_settings().db_path
    # Fast path without resolve() (a few syscalls): every model call opens the store.
    fast = _by_path.get(str(path)) if path.is_absolute() else None
    if fast is not None:
        return fast
    key = str(path.resolve())
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(f"sqlite:///{path}")
            event.listen(engine, "connect", _set_pragmas)
            _migrate(engine, path)
            _engines[key] = engine
        if path.is_absolute():
            _by_path[str(path)] = engine
    return engine


def _migrate(engine: Engine, path: Path) -> None:
    """Bring the schema to head, one process at a time: three ingests on a brand-new home
    used to race and fail with "table calls already exists"."""
    import fcntl

    with open(path.with_name(path.name + ".migrate-lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            command.upgrade(alembic_config(engine), "head")
        except DatabaseError as exc:
            engine.dispose()
            raise TomesError(
                f"the tomes database {path} is damaged and cannot be read "
                f"({str(exc.orig or exc).splitlines()[0][:100]})",
                f"restore {path.name} from a backup, or move it aside to start an empty store "
                "(indexes and the response cache are rebuilt from the store; documents, runs "
                "and the call log live only in it)",
            ) from exc
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def dispose_all() -> None:
    """Close every engine (tests switch TOMES_HOME between cases)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
        _by_path.clear()


@contextmanager
def session_scope(engine: Engine | None = None) -> Iterator[Session]:
    """A session that commits on success and rolls back on any error, so a failure
    never leaves half-written rows."""
    factory = sessionmaker(engine or open_store(), expire_on_commit=False)
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
