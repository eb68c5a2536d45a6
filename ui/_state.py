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
    """This session's Tomes: the process settings, with the backend/model/endpoint the
    Settings page switched to for this session only."""
    if "tomes" not in st.session_state:
        st.session_state.tomes = Tomes(**serving())
    return st.session_state.tomes


def serving() -> dict[str, Any]:
    """What this session changed about serving (backend, model, base_url)."""
    return dict(st.session_state.get("serving", {}))


def set_serving(**changes: Any) -> None:
    st.session_state.serving = {k: v for k, v in changes.items() if v}
    st.session_state.tomes = Tomes(**st.session_state.serving)


_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+\-.!|~<>$:])")


def plain(text: Any) -> str:
    """``text`` with Markdown's special characters escaped, for labels and captions that
    carry user or document text (a title, a question): shown as written, never as links,
    images or colour directives."""
    return _MARKDOWN.sub(r"\\\1", str(text))


def code(text: Any) -> str:
    """``text`` as an inline code span: Markdown is not read inside one (so no escaping,
    which would show as backslashes); a backtick in the text gets a longer fence."""
    text = " ".join(str(text).split())
    fence = "``" if "`" in text else "`"
    return f"{fence} {text} {fence}" if fence == "``" else f"`{text}`"


def link(page: str, label: str, *, icon: str | None = None, **params: Any) -> None:
    """A link to another page (``app_pages/{page}.py``) that carries query params, e.g.
    the reader at a chunk. A page run on its own (no navigation) gets the label only."""
    from streamlit.errors import StreamlitPageNotFoundError

    query = {k: str(v) for k, v in params.items() if v is not None and v != ""}
    try:
        st.page_link(f"app_pages/{page}.py", label=plain(label), icon=icon, query_params=query or None)
    except StreamlitPageNotFoundError:
        st.caption(plain(label))


@dataclass
class Job:
    """One piece of background work. Written by its worker thread, read by pages."""

    id: str
    kind: str
    label: str
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    events: list[Any] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)  # what the page needs to describe it
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
# Finished jobs are kept (their answers are shown after navigating back) up to this many.
KEEP_FINISHED = 200


def start_job(kind: str, label: str, work: Callable[[Callable[[Any], None]], Any],
              job_id: str | None = None, meta: dict[str, Any] | None = None) -> Job:
    """Run ``work(on_event)`` in a worker thread owned by the process."""
    job = Job(id=job_id or uuid.uuid4().hex, kind=kind, label=label, meta=dict(meta or {}))
    job.thread = threading.Thread(target=job._run, args=(work,), daemon=True, name=f"tomes-{kind}-{job.id[:8]}")
    with _registry_lock:
        jobs = _registry()
        old = jobs.get(job.id)
        if old is not None and old.running:
            raise TomesError(f"{old.label} is already running", "wait for it to finish")
        jobs[job.id] = job
        finished = [j for j in jobs.values() if not j.running]
        for stale in sorted(finished, key=lambda j: j.started)[:max(0, len(finished) - KEEP_FINISHED)]:
            jobs.pop(stale.id, None)
    job.thread.start()
    return job


def start_run(kind: str, label: str, work: Callable[[str, Callable[[Any], None]], Any],
              run_id: str | None = None, meta: dict[str, Any] | None = None) -> Job:
    """Start a pipeline run as a job whose id is the run id, so the Runs page finds the
    live job of a run; ``work(run_id, on_event)``. The session remembers it."""
    run_id = run_id or str(uuid.uuid4())
    job = start_job(kind, label, lambda on_event: work(run_id, on_event), job_id=run_id, meta=meta)
    mine = st.session_state.setdefault("my_runs", [])
    if run_id in mine:
        mine.remove(run_id)
    mine.insert(0, run_id)
    return job


def my_runs() -> list[Job]:
    """This session's run jobs the process still holds, newest first."""
    return [j for j in (get_job(i) for i in st.session_state.get("my_runs", [])) if j]


def running_jobs() -> list[Job]:
    return [j for j in _registry().values() if j.running]


def get_job(job_id: str | None) -> Job | None:
    return _registry().get(job_id) if job_id else None


def describe_error(exc: BaseException) -> tuple[str, str | None]:
    """(cause, fix) of an exception, for showing it."""
    if isinstance(exc, TomesError):
        return exc.cause or type(exc).__name__, exc.fix
    return f"{type(exc).__name__}: {exc}", None


# --- indexing ------------------------------------------------------------------------


def _index_job_id(corpus: str) -> str:
    # Keyed by home too: one process may serve several homes (tests do).
    return f"index:{tomes().settings.home}:{corpus}"


def index_job(corpus: str) -> Job | None:
    return get_job(_index_job_id(corpus))


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


# What the uploader accepts: what ingestion reads (a constant of the core, not logic).
def _suffixes() -> list[str]:
    from app.ingest.readers import SUPPORTED_SUFFIXES

    return sorted(s.lstrip(".") for s in SUPPORTED_SUFFIXES)


SUFFIXES = _suffixes()


def ingest_uploads(files: list[Any], corpus: str, *, on_event: Callable[[Any], None] = lambda e: None
                   ) -> list[dict[str, Any]]:
    """Store uploaded files under safe names in ``<home>/uploads`` and ingest them. One
    entry per file: name (as stored), status, chunks, error. The error never shows the
    server's paths, and a file that was not added (failed, or already there) is not kept."""
    t = tomes()
    limit_mb = t.settings.max_file_mb
    folder = t.settings.home / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    out: list[dict[str, Any]] = []
    saved: dict[Path, dict[str, Any]] = {}
    for f in files:
        path = safe_upload_path(folder, f.name)
        entry = {"name": path.name, "status": "failed", "chunks": 0, "error": None}
        out.append(entry)
        size = getattr(f, "size", None) or len(f.getvalue())
        if size > limit_mb * 1024 * 1024:
            entry["error"] = (f"it is {size / 2**20:.1f} MB, over this server's {limit_mb:g} MB limit "
                              "per file. Upload a smaller file, or split it into parts")
            continue
        path.write_bytes(f.getvalue())
        saved[path] = entry
    if not saved:
        return out
    try:
        report = t.ingest(list(saved), corpus, embed=False, on_event=on_event)
    except TomesError as exc:
        for path, entry in saved.items():
            entry["error"] = _scrub(str(exc), path, entry["name"], folder)
            path.unlink(missing_ok=True)
        return out
    outcomes = {Path(o.path).resolve(): o for o in report.outcomes}
    for path, entry in saved.items():
        o = outcomes.get(path.resolve())
        if o is None:
            entry["error"] = "it was not read (no outcome reported); please report this"
        else:
            entry.update(status=o.status, chunks=o.chunks)
            if o.error:
                entry["error"] = _scrub(o.error, path, entry["name"], folder)
        if entry["status"] not in ("added", "updated"):
            path.unlink(missing_ok=True)
    return out


def _scrub(message: str, path: Path, name: str, folder: Path) -> str:
    """An ingest error for the person who uploaded the file: their file's name instead
    of where the server keeps it, and no other server path."""
    for where in (str(path.resolve()), str(path)):
        message = message.replace(where + ": ", "").replace(where, name)
    for where in (str(folder.resolve()), str(folder)):
        message = message.replace(where, "uploads")
    return message
