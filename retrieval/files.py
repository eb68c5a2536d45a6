"""Where a corpus's indexes live (under settings.index_dir: TOMES_INDEX_ROOT, which may
be shared storage), how they are written (atomically) and who may write them (one
process at a time: a file lock beside a SQLite store, an advisory lock in the database
when the store is PostgreSQL, which reaches every machine sharing it)."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from app.settings import get_settings

log = logging.getLogger(__name__)


def corpus_dir(corpus_id: int, name: str) -> Path:
    """<index_dir>/<name>-<id>: readable, and unique even when names repeat over time."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._")[:60] or "corpus"
    return get_settings().index_dir / f"{slug}-{corpus_id}"


def write_npz(path: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Write arrays and a JSON header into one file, atomically: a temp file beside it,
    fsync, rename. A crash leaves the old file or the new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, __meta__=np.array(json.dumps(meta)), **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def read_npz(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """The arrays and header written by write_npz, or None when there is no such file or
    it is damaged (empty, truncated, bit-flipped): index files are derived data, so a
    damaged one is set aside and rebuilt from the store like a missing one."""
    try:
        # An open file keeps reading the version it opened, even if a writer replaces it.
        npz = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        return None
    except Exception as exc:  # EOFError, BadZipFile, ValueError...: all mean "damaged"
        return set_aside(path, exc)
    try:
        with npz:
            arrays = {k: npz[k] for k in npz.files if k != "__meta__"}
            meta = json.loads(str(npz["__meta__"]))
    except Exception as exc:
        return set_aside(path, exc)
    return arrays, meta


def set_aside(path: Path, exc: BaseException) -> None:
    """Move a damaged index file out of the way (kept as *.damaged for a post-mortem) and
    say so in one line; the caller rebuilds it from the store."""
    log.warning("index file %s is damaged (%s: %s); rebuilding it from the store",
                path, type(exc).__name__, str(exc)[:120])
    try:
        os.replace(path, path.with_name(path.name + ".damaged"))
    except OSError:
        pass
    return None


def file_signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _corpus_id_of(directory: Path) -> int | None:
    """The corpus id in a directory named by corpus_dir."""
    found = re.search(r"-(\d+)$", directory.name)
    return int(found.group(1)) if found else None


@contextmanager
def write_lock(directory: Path, *, blocking: bool = True) -> Iterator[bool]:
    """Exclusive right to change a corpus's index files, across threads and processes
    (flock locks each open file description; on PostgreSQL each holder has its own
    connection). Yields False when ``blocking`` is off and another writer holds it."""
    directory.mkdir(parents=True, exist_ok=True)
    corpus_id = _corpus_id_of(directory)
    if corpus_id is not None and get_settings().database_url:
        from app.store.db import LOCK_INDEX, advisory_lock, is_postgres, open_store

        engine = open_store()
        if is_postgres(engine):
            # flock on shared storage (NFS, SMB) is not reliably exclusive across hosts.
            with advisory_lock(LOCK_INDEX, corpus_id, engine=engine,
                               blocking=blocking) as got:
                yield got
            return
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
