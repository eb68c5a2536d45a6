"""What the pages share: one Tomes object per session, and jobs owned by the process.

Long work (a run, indexing) runs in a worker thread held by a process-wide registry
(``st.cache_resource``), never by a page: the worker only appends progress events to a
plain list on its Job and never touches Streamlit; pages poll the Job. A session keeps
the ids of its jobs in ``session_state``, so navigating away and back finds them again.
"""

from __future__ import annotations

import re
import threading
import time
import unicodedata
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import streamlit as st

from app.api import Tomes
from app.errors import TomesError


def tomes() -> Tomes:
    if "tomes" not in st.session_state:
        st.session_state.tomes = Tomes()
    return st.session_state.tomes


@dataclass
class Job:
    """One piece of background work. Written by its worker thread, read by pages."""

    id: str
    kind: str
    label: str
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    events: list[Any] = field(default_factory=list)
    result: Any = None
    error: BaseException | None = None
    thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def on_event(self, event: Any) -> None:  # called from the worker: no Streamlit here
        with self._lock:
            self.events.append(event)

    @property
    def running(self) -> bool:
        return self.finished is None

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    def last_event(self) -> Any:
        with self._lock:
            return self.events[-1] if self.events else None

    def calls_done(self) -> int:
        """Model calls finished so far, as far as the progress events tell: the sum of
        each stage's progress steps (a stage that starts again, e.g. a new collapse
        level, counts afresh)."""
        with self._lock:
            last: dict[str, int] = {}
            total = 0
            for e in self.events:
                if e.stage in ("read", "embed", "index"):
                    continue
                prev = last.get(e.stage, 0)
                if e.done > prev:
                    total += e.done - prev
                last[e.stage] = e.done
            return total

    def _run(self, work: Callable[[Callable[[Any], None]], Any]) -> None:
        try:
            self.result = work(self.on_event)
        except BaseException as exc:  # kept on the job and shown by the page
            self.error = exc
        finally:
            self.finished = time.monotonic()


@st.cache_resource
def _registry() -> dict[str, Job]:
    return {}


_registry_lock = threading.Lock()


def start_job(kind: str, label: str, work: Callable[[Callable[[Any], None]], Any],
              job_id: str | None = None) -> Job:
    """Run ``work(on_event)`` in a worker thread owned by the process."""
    job = Job(id=job_id or uuid.uuid4().hex, kind=kind, label=label)
    job.thread = threading.Thread(target=job._run, args=(work,), daemon=True, name=f"tomes-{kind}-{job.id[:8]}")
    with _registry_lock:
        _registry()[job.id] = job
    job.thread.start()
    return job


def get_job(job_id: str | None) -> Job | None:
    return _registry().get(job_id) if job_id else None


def describe_error(exc: BaseException) -> tuple[str, str | None]:
    """(cause, fix) of an exception, for showing it."""
    if isinstance(exc, TomesError):
        return exc.cause or type(exc).__name__, exc.fix
    return f"{type(exc).__name__}: {exc}", None


# --- indexing ------------------------------------------------------------------------


def _index_job_id(corpus: str) -> str:
    return f"index:{corpus}"


def index_in_background(corpus: str) -> None:
    """Embedding is slow on a CPU (~16 chunks/s): run it in a thread so the page stays
    usable; the Library page polls the index status and shows a failure."""
    job = get_job(_index_job_id(corpus))
    if job and job.running:
        return
    t = tomes()
    start_job("index", f"index {corpus}", lambda on_event: t.index(corpus, on_event=on_event),
              job_id=_index_job_id(corpus))


def indexing(corpus: str) -> bool:
    job = get_job(_index_job_id(corpus))
    return bool(job and job.running)


def index_error(corpus: str) -> BaseException | None:
    job = get_job(_index_job_id(corpus))
    return job.error if job and not job.running else None


# --- uploads -------------------------------------------------------------------------


def safe_upload_path(folder: Path, name: str) -> Path:
    """Where to store an uploaded file called ``name``: a plain base name inside
    ``folder`` (no path parts, no control characters), with a numeric suffix rather than
    overwriting a file already there."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = "".join(ch for ch in base if unicodedata.category(ch)[0] != "C")
    base = base.strip().strip(".").strip()
    if not base:
        base = "upload"
    stem, dot, ext = base.rpartition(".")
    if not dot or not stem:
        stem, ext = base, ""
    ext = f".{ext}" if ext else ""
    stem, ext = stem[:150], ext[:20]
    candidate = folder / f"{stem}{ext}"
    n = 1
    while candidate.exists():
        candidate = folder / f"{stem}-{n}{ext}"
        n += 1
    assert candidate.resolve().parent == folder.resolve()
    return candidate
