"""Opening the database: one engine per file or URL, migrated to the newest schema on
open. SQLite under TOMES_HOME by default; PostgreSQL (psycopg 3) when TOMES_DATABASE_URL
names one, so several processes and machines share one store."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DatabaseError, OperationalError
from sqlalchemy.orm import Session

from app.errors import TomesError
from app.settings import get_settings
from app.store import _kept

_MIGRATIONS = Path(__file__).parent / "migrations"
_lock = threading.Lock()
_engines: dict[str, Engine] = {}
_by_path: dict[str, Engine] = {}  # the path as given (absolute) -> its engine

# PostgreSQL advisory locks take (class, key): the class says what the key counts.
LOCK_MIGRATE = 0x746F6D65  # "tome": key 0
LOCK_INDEX = 0x746F6D66  # key: the corpus id


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


def open_store(path: Path | str | None = None) -> Engine:
    """The engine for ``path`` — a SQLite file or a database URL (default: the settings'
    store) — created and migrated on first use in this process."""
    if path is None:
        path = get_settings().store
    if isinstance(path, str) and "://" in path:
        url = _url(path)
        if url.get_backend_name() != "sqlite":
            return _open_url(url)
        path = url.database or ""
    path = Path(path)
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
            _kept.watch(engine)
            _migrate(engine, path)
            _engines[key] = engine
        if path.is_absolute():
            _by_path[str(path)] = engine
    return engine


def _url(raw: str) -> URL:
    try:
        url = make_url(raw)
    except Exception as exc:  # noqa: BLE001 - any parse failure is the same user error
        raise TomesError(f"TOMES_DATABASE_URL is not a database URL ({exc})",
                         "give postgresql+psycopg://user[:password]@host[:port]/database") from exc
    if url.get_backend_name() == "postgresql" and url.get_driver_name() in ("psycopg2", ""):
        # Plain postgresql:// means psycopg2 to SQLAlchemy; tomes ships psycopg 3.
        url = url.set(drivername="postgresql+psycopg")
    return url


def postgres_dsn(raw: str | None) -> str | None:
    """The libpq URL (no SQLAlchemy driver suffix) of a PostgreSQL TOMES_DATABASE_URL, for
    clients that speak libpq themselves (LangGraph's checkpointer); None otherwise."""
    if not raw:
        return None
    url = _url(raw)
    if url.get_backend_name() != "postgresql":
        return None
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def _open_url(url: URL) -> Engine:
    key = url.render_as_string(hide_password=False)
    engine = _engines.get(key)
    if engine is not None:
        return engine
    shown = url.render_as_string(hide_password=True)
    if url.get_backend_name() != "postgresql":
        raise TomesError(f"the store {shown} is neither SQLite nor PostgreSQL",
                         "set TOMES_DATABASE_URL to a postgresql+psycopg:// URL, or unset it")
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        raise TomesError(
            f"the store {shown} is PostgreSQL, and its driver (psycopg 3) is not installed",
            "pip install 'tomes[scale]' (or pip install 'psycopg[binary]'), or unset "
            "TOMES_DATABASE_URL for SQLite under TOMES_HOME",
        ) from exc
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            # pre_ping: a pooled connection the server closed (restart, idle timeout) is
            # replaced instead of failing the next model-call write.
            engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=20)
            try:
                _migrate_postgres(engine)
            except OperationalError as exc:
                engine.dispose()
                raise TomesError(
                    f"cannot reach the store {shown} "
                    f"({str(exc.orig or exc).strip().splitlines()[0][:160]})",
                    "start the PostgreSQL server (or fix host, port, user, password or "
                    "database in TOMES_DATABASE_URL); the database must exist "
                    "(createdb NAME)",
                ) from exc
            _engines[key] = engine
    return engine


def _migrate_postgres(engine: Engine) -> None:
    """Bring the schema to head, one process at a time across machines: the file lock
    SQLite uses reaches only one host, an advisory lock reaches every client."""
    with advisory_lock(LOCK_MIGRATE, 0, engine=engine):
        command.upgrade(alembic_config(engine), "head")


@contextmanager
def advisory_lock(kind: int, key: int, *, engine: Engine | None = None,
                  blocking: bool = True) -> Iterator[bool]:
    """A PostgreSQL session-level advisory lock (kind, key), held on its own connection
    for the block. Yields False when ``blocking`` is off and another session holds it.
    Released when the block ends, or by the server when the holder's connection dies."""
    engine = engine or open_store()
    with engine.connect() as conn:
        if blocking:
            conn.execute(text("SELECT pg_advisory_lock(:k, :key)"), {"k": kind, "key": key})
            got = True
        else:
            got = bool(conn.scalar(text("SELECT pg_try_advisory_lock(:k, :key)"),
                                   {"k": kind, "key": key}))
        conn.commit()  # the lock is the session's, not the transaction's
        try:
            yield got
        finally:
            if got:
                conn.execute(text("SELECT pg_advisory_unlock(:k, :key)"),
                             {"k": kind, "key": key})
                conn.commit()


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
            raise damaged_store(path, exc) from exc
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def damaged_store(path: Path | str, exc: BaseException) -> TomesError:
    """The one message for a tomes.db that SQLite cannot read."""
    path = Path(path)
    return TomesError(
        f"the tomes database {path} is damaged and cannot be read "
        f"({str(getattr(exc, 'orig', None) or exc).splitlines()[0][:100]})",
        f"restore {path.name} from a backup, or try `sqlite3 {path} .recover | sqlite3 "
        f"recovered.db` and use that, or move it aside to start an empty store (indexes and "
        "the response cache are rebuilt from the store; documents, runs and the call log "
        "live only in it)",
    )


def is_damage(exc: BaseException) -> bool:
    """SQLite's "database disk image is malformed" / "file is not a database": a page of
    the file is damaged. Found on the query that reads that page, long after the open."""
    if not isinstance(exc, DatabaseError):
        return False
    orig = exc.orig
    name = getattr(orig, "sqlite_errorname", "")
    return name in ("SQLITE_CORRUPT", "SQLITE_NOTADB") or any(
        text in str(orig) for text in ("database disk image is malformed", "file is not a database"))


def dispose_all() -> None:
    """Close every engine (tests switch TOMES_HOME between cases)."""
    with _lock:
        for engine in _engines.values():
            _kept.drop(engine)
            engine.dispose()
        _engines.clear()
        _by_path.clear()


@contextmanager
def session_scope(engine: Engine | None = None) -> Iterator[Session]:
    """A session that commits on success and rolls back on any error, so a failure
    never leaves half-written rows."""
    # A plain Session: a sessionmaker per call builds a Session subclass and its event
    # dispatch each time (a third of a batch item's store work).
    session = Session(engine or open_store(), expire_on_commit=False)
    try:
        yield session
        session.commit()
    except DatabaseError as exc:
        try:
            session.rollback()
        except DatabaseError:
            pass  # the damage that raised exc may fail the rollback too
        if is_damage(exc):
            raise damaged_store(session.get_bind().url.database or "", exc) from exc
        raise
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
