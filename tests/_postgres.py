"""A throwaway PostgreSQL server for tests, from the machine's own binaries.

Use it by importing the fixtures into a test module::

    from tests._postgres import postgres_server, postgres_url, postgres_store  # noqa: F401

- ``postgres_server`` (session): one server per test process, in a temp dir on a free
  localhost port, stopped when the process exits. Skipped (saying why) only when the
  binaries are missing; TOMES_PG_BIN names another directory holding ``initdb``/``pg_ctl``.
- ``postgres_url``: a fresh, empty database on it for each test, as a SQLAlchemy URL
  (``postgresql+psycopg://...``).
- ``postgres_store``: the same, set as the test's TOMES_DATABASE_URL.

PostgreSQL refuses to run as root, so under root the server runs as the ``postgres``
user (or ``nobody``), in a directory that user owns.
"""

from __future__ import annotations

import atexit
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

PG_BIN = Path(os.environ.get("TOMES_PG_BIN", "/usr/lib/postgresql/15/bin"))
USER = "tomes"


@dataclass
class Server:
    root: Path
    port: int
    run_as: str | None

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{database}"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        _pg(self, "pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "stop",
            check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg(server: Server, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    kwargs = {}
    if server.run_as:
        entry = pwd.getpwnam(server.run_as)
        kwargs = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    return subprocess.run([str(PG_BIN / tool), *args], capture_output=True, text=True,
                          check=check, timeout=60, cwd=server.root, **kwargs)


def _run_as() -> str | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root and there is no 'postgres' or 'nobody' user to "
                       "run PostgreSQL as")


def start() -> Server:
    """A running server with trust authentication for user ``tomes`` on 127.0.0.1."""
    # Not under pytest's tmp dirs: those are 0700 root's, and the server may run as
    # another user.
    root = Path(tempfile.mkdtemp(prefix="tomes-pg-"))
    server = Server(root=root, port=_free_port(), run_as=_run_as())
    if server.run_as:
        entry = pwd.getpwnam(server.run_as)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    try:
        _pg(server, "initdb", "-D", str(root / "data"), "-U", USER, "-A", "trust",
            "-E", "UTF8", "--no-locale", "--no-sync")
        # fsync off: a test server's data need not survive a power cut, and commits get
        # ~10x cheaper. Enough connections for several processes with pools.
        opts = (f"-p {server.port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300")
        _pg(server, "pg_ctl", "-D", str(root / "data"), "-o", opts, "-l",
            str(root / "server.log"), "-w", "-t", "60", "start")
    except subprocess.CalledProcessError as exc:
        log = (root / "server.log").read_text(errors="replace")[-2000:] if (
            root / "server.log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"PostgreSQL did not start: {exc.stderr or exc.stdout}\n{log}") from exc
    return server


_server: Server | None = None
_server_lock = threading.Lock()
_names = itertools.count(1)


def server() -> Server:
    """The process's one server (test modules importing the fixtures share it)."""
    global _server
    with _server_lock:
        if _server is None:
            _server = start()
            atexit.register(_server.stop)
        return _server


@pytest.fixture(scope="session")
def postgres_server() -> Server:
    if not (PG_BIN / "initdb").exists() or not (PG_BIN / "pg_ctl").exists():
        pytest.skip(f"PostgreSQL binaries not found in {PG_BIN} (install postgresql-15, or "
                    "set TOMES_PG_BIN to the directory holding initdb and pg_ctl)")
    return server()


@pytest.fixture
def postgres_url(postgres_server: Server) -> str:
    """A fresh, empty database for this test."""
    return postgres_server.create_database(f"t{os.getpid()}_{next(_names)}")


@pytest.fixture
def postgres_store(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """This test's store is a fresh PostgreSQL database (TOMES_DATABASE_URL)."""
    from app import settings
    from app.store.db import dispose_all

    monkeypatch.setenv("TOMES_DATABASE_URL", postgres_url)
    settings.reset()
    yield postgres_url
    dispose_all()
    settings.reset()
