"""The Python API: the one place the CLI and the UI call. Neither holds logic of its own.

    from app.api import Tomes
    tomes = Tomes()                      # settings from TOMES_* and defaults
    tomes.ingest(["book.txt"], corpus="books")
    result = tomes.summarize("book")     # answer, provenance, run id, calls, tokens
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import delete, func, select
from sqlalchemy.orm import defer

from app import settings as _settings
from app.errors import NotFound, TomesError
from app.events import OnEvent, ignore
from app.ingest.service import IngestReport, document_of, ingest, read_warnings
from app.rows import CallInfo, DocumentDetail, DocumentInfo, RunDetail, RunInfo, RunStats  # noqa: F401 - part of the API
from app.store import Call, Chunk, Corpus, Document, Run, session_scope
from pipelines import STRATEGIES  # noqa: F401 - part of the API
from pipelines.result import Provenance, Result  # noqa: F401 - part of the API
from pipelines.batch import BatchReport  # noqa: F401 - part of the API
from pipelines.targets import id_also_names, resolve_document

F = TypeVar("F", bound=Callable[..., Any])


def _scoped(method: F) -> F:
    """Run the method under this Tomes object's settings."""

    @functools.wraps(method)
    def wrapper(self: Tomes, *args: Any, **kwargs: Any) -> Any:
        with _settings.override(**self._changes):
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class Tomes:
    def __init__(self, **changes: Any) -> None:
        """``changes`` are settings for this object only (home=, backend=, model=, ...)."""
        self._changes = {k: v for k, v in changes.items() if v is not None}

    @property
    def settings(self) -> _settings.Settings:
        with _settings.override(**self._changes) as s:
            return s

    # --- documents -------------------------------------------------------------------

    @_scoped
    def ingest(
        self, paths: Sequence[str | Path], corpus: str = "default", *,
        embed: bool | None = None, on_event: OnEvent = ignore, ray: str | bool | None = None,
        ray_cpus: int | None = None,
    ) -> IngestReport:
        """Read files into a corpus, then embed and index what was stored (``embed``;
        default: ``settings.embed_on_ingest``). ``ray`` reads the files as Ray tasks and
        embeds the chunks with Ray Data ``map_batches`` (True: a local Ray of ``ray_cpus``
        CPUs, or a cluster's address); the index is written here either way."""
        from serving.tokenizers import active_tokenizer

        embed = embed if embed is not None else _settings.get_settings().embed_on_ingest
        if ray:
            from pipelines import _batch_ray

            # One Ray for both: reading, then embedding on the same workers.
            return _batch_ray.ingest([Path(p) for p in paths], corpus,
                                     address=None if ray is True else ray,
                                     num_cpus=ray_cpus, on_event=on_event, embed=embed)
        report = ingest([Path(p) for p in paths], corpus, tokenizer=active_tokenizer(),
                        on_event=on_event)
        if embed:
            from retrieval import sync_corpus

            report.embedded = sync_corpus(corpus, on_event=on_event)
        return report

    @_scoped
    def documents(self, corpus: str | None = None) -> list[DocumentInfo]:
        with session_scope() as s:
            query = (
                select(Document, Corpus.name, func.count(Chunk.id), func.sum(Chunk.n_tokens))
                .options(defer(Document.text), defer(Document.meta))  # books are large
                .join(Corpus)
                .outerjoin(Chunk)
                .group_by(Document.id)
                .order_by(Document.id)
            )
            if corpus:
                query = query.where(Corpus.name == corpus)
            return [
                _doc_info(doc, corpus_name, n, tokens or 0)
                for doc, corpus_name, n, tokens in s.execute(query)
            ]

    @_scoped
    def document(self, ref: str | int, *, with_chunks: bool = True) -> DocumentDetail:
        with session_scope() as s:
            doc = resolve_document(s, ref)
            listed = _doc_info(doc, doc.corpus.name, len(doc.chunks),
                               sum(c.n_tokens for c in doc.chunks))
            meta = doc.meta or {}
            warnings = read_warnings(doc.source, meta)
            others = id_also_names(s, ref)
            if others:
                warnings.insert(0, (
                    f"{str(ref)!r} is read as the id of document {doc.id}; it is also the title "
                    f"of document {', '.join(str(d.id) for d in others)}: name that one by its id"))
            chunks: list[dict[str, Any]] | int = listed.chunks
            if with_chunks:
                chunks = [
                    {"id": c.id, "ordinal": c.ordinal, "start": c.start, "end": c.end,
                     "page": c.page, "tokens": c.n_tokens, "heading": c.heading, "text": c.text}
                    for c in doc.chunks
                ]
            return DocumentDetail(
                **{**listed.to_dict(), "chunks": chunks}, meta=meta, warnings=warnings,
                pages_without_text=(len(meta.get("pages_without_text") or [])
                                    if doc.page_starts else None))

    @_scoped
    def remove(self, ref: str | int) -> DocumentInfo:
        """Remove a document, its chunks and vectors. A number that is one document's id
        and another's title is refused (``doc:3`` says "the id")."""
        with session_scope() as s:
            doc = resolve_document(s, ref)
            others = id_also_names(s, ref)
            if others:
                raise TomesError(
                    f"{str(ref)!r} is the id of document {doc.id} ({doc.title}) and the title of "
                    f"document {', '.join(str(d.id) for d in others)}",
                    f"say which: `tomes rm doc:{doc.id}` for the id, or the other's id")
            # Count rather than load the chunks: loaded ones would be deleted twice
            # (bulk below and by the ORM cascade), which SQLAlchemy warns about.
            n = s.scalar(select(func.count(Chunk.id)).where(Chunk.document_id == doc.id)) or 0
            info = _doc_info(doc, doc.corpus.name, n, 0)
            s.execute(delete(Chunk).where(Chunk.document_id == doc.id))
            s.execute(delete(Document).where(Document.id == doc.id))
        from retrieval import sync_corpus

        # Drops the removed chunks' vectors (and repairs anything else out of step).
        sync_corpus(info.corpus, embed_missing=False)
        return info

    @_scoped
    def corpora(self) -> list[str]:
        with session_scope() as s:
            return list(s.scalars(select(Corpus.name).order_by(Corpus.name)))

    # --- search ----------------------------------------------------------------------

    @_scoped
    def search(
        self, corpus: str, query: str, k: int = 10, mode: str = "hybrid", *,
        document: str | int | None = None, on_event: OnEvent = ignore,
    ) -> list[Any]:
        """Ranked chunks (retrieval.Hit) of a corpus for a query; mode dense|keyword|hybrid.
        ``document`` (id, title or file name) restricts hits to one document."""
        import retrieval

        if not query or not query.strip():
            raise TomesError("the search query is empty", "search for some words")
        if k < 1:
            raise TomesError(f"k={k} asks for no results", "ask for at least 1 (e.g. -k 5)")
        document_id = None
        if document is not None:
            with session_scope() as s:
                document_id = resolve_document(s, document).id
        return retrieval.search(corpus, query, k, mode=mode, document_id=document_id,
                                on_event=on_event)

    @_scoped
    def index(self, corpus: str, *, on_event: OnEvent = ignore) -> int:
        """Embed and index whatever chunks of the corpus are not indexed yet (the UI runs
        this in a background thread after an upload); returns chunks embedded."""
        import retrieval

        return retrieval.sync_corpus(corpus, on_event=on_event)

    @_scoped
    def reembed(self, corpus: str, *, on_event: OnEvent = ignore) -> int:
        """Drop a corpus's dense index and embed every chunk again with the current
        embedder (after changing TOMES_EMBEDDER); returns chunks embedded."""
        import retrieval

        return retrieval.reembed(corpus, on_event=on_event)

    @_scoped
    def index_status(self, corpus: str) -> dict[str, Any]:
        """How a corpus's dense and keyword indexes stand against its chunks."""
        import retrieval

        return retrieval.status(corpus)

    # --- runs and calls --------------------------------------------------------------

    @_scoped
    def runs(self, limit: int = 50) -> list[RunInfo]:
        from pipelines._runs import reap_runs

        reap_runs()  # a run whose process died shows as interrupted, not running forever
        with session_scope() as s:
            rows = s.scalars(select(Run).order_by(Run.created_at.desc()).limit(limit))
            return [_run_info(r) for r in rows]

    @_scoped
    def calls(self, run_id: str, *, steps: bool = False) -> list[CallInfo]:
        """A run's model calls in order, each a full call-log row; ``steps`` adds the
        pipeline steps they sit under (``call_tree`` shows both as a tree)."""
        from serving.calllog import STEP

        query = select(Call).where(Call.run_id == run_id).order_by(Call.id)
        if not steps:
            query = query.where(Call.backend != STEP)
        with session_scope() as s:
            rows = s.scalars(query)
            return [CallInfo.of(call) for call in rows]

    # --- reading documents and managing runs (what the UI shows) --------------------

    @_scoped
    def text(self, ref: str | int, start: int = 0, end: int | None = None) -> str:
        """``document.text[start:end]`` without loading the whole book (the reader pages
        through long documents with it)."""
        if start < 0 or (end is not None and end < start):
            raise TomesError(f"the span {start}-{end} is not a span of text",
                             "give 0 <= start <= end")
        with session_scope() as s:
            doc = resolve_document(s, ref)
            stop = doc.n_chars if end is None else min(end, doc.n_chars)
            if start >= stop:
                return ""
            return s.scalar(select(func.substr(Document.text, start + 1, stop - start))
                            .where(Document.id == doc.id)) or ""

    @_scoped
    def spans(self, ref: str | int) -> list[dict[str, Any]]:
        """A document's chunks in order, without their text: id, ordinal, start, end,
        page, tokens, heading."""
        with session_scope() as s:
            doc = resolve_document(s, ref)
            rows = s.execute(
                select(Chunk.id, Chunk.ordinal, Chunk.start, Chunk.end, Chunk.page,
                       Chunk.n_tokens, Chunk.heading)
                .where(Chunk.document_id == doc.id).order_by(Chunk.ordinal)
            )
            return [{"id": i, "ordinal": o, "start": a, "end": b, "page": p, "tokens": n,
                     "heading": h} for i, o, a, b, p, n, h in rows]

    @_scoped
    def run(self, run_id: str) -> RunDetail:
        """One run: what ``runs()`` lists, plus its params, stored result, finish time
        and the title of its target."""
        from pipelines._runs import load_run

        row = load_run(run_id)  # NotFound with advice; marks a dead owner's run interrupted
        with session_scope() as s:
            title = _target_titles(s, [row["target"]])[row["target"]]
        params = row["params"] or {}
        return RunDetail(
            **{k: row[k] for k in ("id", "pipeline", "target", "question", "status", "answer",
                                   "error", "result")},
            params=params, chosen_by=params.get("chosen_by"), why=params.get("why"),
            created_at=row["created_at"].isoformat(timespec="seconds"),
            finished_at=(row["finished_at"].isoformat(timespec="seconds")
                         if row["finished_at"] else None),
            target_title=title)

    @_scoped
    def run_list(self, limit: int = 50) -> list[RunStats]:
        """Runs, newest first, with what a table of them needs: the target's title,
        calls (backend requests), cache hits, tokens, model time and duration."""
        from sqlalchemy import case

        from app.store.models import utcnow
        from pipelines._runs import reap_runs
        from serving.calllog import STEP

        reap_runs()
        with session_scope() as s:
            runs = list(s.scalars(select(Run).order_by(Run.created_at.desc()).limit(limit)))
            fresh = case((Call.cache_hit.is_(False), 1), else_=0)
            stats = {
                run_id: (calls or 0, hits or 0, tokens or 0, latency or 0.0)
                for run_id, calls, hits, tokens, latency in s.execute(
                    select(Call.run_id, func.sum(fresh), func.sum(1 - fresh),
                           func.sum((Call.prompt_tokens + Call.completion_tokens) * fresh),
                           func.sum(Call.latency_ms * fresh))
                    .where(Call.run_id.in_([r.id for r in runs]), Call.backend != STEP)
                    .group_by(Call.run_id)
                )
            }
            titles = _target_titles(s, [r.target for r in runs])
            now = utcnow()
            out = []
            for r in runs:
                calls, hits, tokens, latency = stats.get(r.id, (0, 0, 0, 0.0))
                out.append(RunStats(
                    **_run_info(r).to_dict(),
                    target_title=titles[r.target], calls=int(calls), cache_hits=int(hits),
                    tokens=int(tokens), model_ms=round(float(latency), 1),
                    duration_s=round(((r.finished_at or now) - r.created_at).total_seconds(), 1),
                    finished_at=r.finished_at.isoformat(timespec="seconds") if r.finished_at else None,
                ))
            return out

    @_scoped
    def delete_run(self, run_id: str) -> dict[str, Any]:
        """Forget a run: its row, its model calls (and so their cached replies) and its
        checkpoints. A run still being worked on is refused."""
        import sqlite3

        from sqlalchemy import update

        from pipelines._runs import load_run
        from serving.calllog import STEP

        run = load_run(run_id)  # a dead owner's run is interrupted by now, not running
        if run["status"] == "running":
            raise TomesError(f"run {run_id} is still running",
                             "wait for it to finish (or stop it), then delete it")
        with session_scope() as s:
            mine = select(Call.id).where(Call.run_id == run_id)
            # A call of another run may nest under one of these: it becomes a root.
            s.execute(update(Call).where(Call.parent_id.in_(mine), Call.run_id.is_distinct_from(run_id))
                      .values(parent_id=None).execution_options(synchronize_session=False))
            calls = s.scalar(select(func.count()).select_from(Call)
                             .where(Call.run_id == run_id, Call.backend != STEP))
            s.execute(delete(Call).where(Call.run_id == run_id))  # its steps too
            s.execute(delete(Run).where(Run.id == run_id))
        path = self.settings.checkpoint_path
        from pipelines._runs import postgres_checkpoints

        if (dsn := postgres_checkpoints()) is not None:
            from langgraph.checkpoint.postgres import PostgresSaver

            with PostgresSaver.from_conn_string(dsn) as saver:
                saver.setup()  # a store no run has checkpointed into yet has no tables
                saver.delete_thread(run_id)
        elif path.exists():
            from langgraph.checkpoint.sqlite import SqliteSaver

            conn = sqlite3.connect(str(path), timeout=30, check_same_thread=False)
            try:
                SqliteSaver(conn).delete_thread(run_id)
            finally:
                conn.close()
        return {"run_id": run_id, "calls": int(calls or 0)}

    def strategies(self) -> list[dict[str, Any]]:
        """Every strategy ``ask`` offers (``pipelines.STRATEGIES``): name, a line about
        it, and whether it can run here (a module may define ``unavailable(settings)``
        returning why not; one that cannot be imported is unavailable with the error), and
        the options it takes."""
        import importlib

        from pipelines._dispatch import options_of

        out = []
        for name, module_name in STRATEGIES.items():
            entry: dict[str, Any] = {"name": name, "available": True, "reason": None,
                                     "about": "", "options": []}
            try:
                module = importlib.import_module(module_name)
            except Exception as exc:  # noqa: BLE001 - shown to the user as the reason
                entry.update(available=False, reason=f"cannot be loaded ({type(exc).__name__}: {exc})")
                out.append(entry)
                continue
            entry["about"] = ((module.__doc__ or "").strip().splitlines() or [""])[0]
            try:  # what the UI offers for it
                entry["options"] = list(options_of(module))
            except (AttributeError, TypeError, ValueError):
                entry["options"] = []  # no usable ask(): the options are unknown
            check = getattr(module, "unavailable", None)
            if callable(check):
                reason = check(self.settings)
                if reason:
                    entry.update(available=False, reason=str(reason))
            out.append(entry)
        return out

    @_scoped
    def check_model(self, *, timeout: float = 30.0) -> dict[str, Any]:
        """Whether the active backend answers: one tiny uncached prompt. Returns what
        answered (backend, model, window, capacity), its reply and the latency; raises
        the backend's TomesError (cause and fix) when it does not answer."""
        import time

        from serving import get_lm

        with _settings.override(request_timeout=min(timeout, self.settings.request_timeout)):
            lm = get_lm()
            started = time.perf_counter()
            response = lm.chat("Reply with the word OK.", max_tokens=8, temperature=0.0,
                               node="check", cache=False)
            latency = (time.perf_counter() - started) * 1000
            info = lm.describe()
            if info.get("context_window") is None:
                # Not learnt by the chat: the window every run on this backend budgets with
                # (from the server's model listing, its preset, or the default).
                info["context_window"] = lm.backend.context_window
        info.update(reply=response.text, latency_ms=round(latency, 1),
                    base_url=getattr(lm.backend, "base_url", None))
        return info

    # --- pipelines -------------------------------------------------------------------

    @_scoped
    def summarize(
        self, doc: str | int, *, length: str = "medium", style: str | None = None,
        on_event: OnEvent = ignore, run_id: str | None = None, map_tokens: int | None = None,
        grounding: str | None = None, strict: bool = False,
    ) -> Result:
        """Summarize a document (or corpus) by map-reduce; length short|medium|long.
        ``map_tokens`` packs consecutive chunks into map calls of up to that many tokens;
        ``grounding`` (auto|select|verify|off) how records are kept true to the text;
        ``strict`` drops summary sentences the cited text does not bear out."""
        from pipelines import mapreduce

        return mapreduce.summarize(doc, length=length, style=style, map_tokens=map_tokens,
                                   on_event=on_event, run_id=run_id, grounding=grounding,
                                   strict=strict)

    @_scoped
    def ask(
        self, target: str | int, question: str, *, strategy: str = "auto",
        on_event: OnEvent = ignore, run_id: str | None = None, map_tokens: int | None = None,
        **options: Any,
    ) -> Result:
        """Answer a question over a document or corpus with the chosen strategy
        (``pipelines.STRATEGIES``; ``auto`` picks one and says why in
        ``result.details``); ``options`` go to that strategy (e.g. k= for rag, mode=,
        max_depth= for recursive) and unknown ones are refused."""
        from pipelines import strategy_module
        from pipelines._dispatch import check_options

        if not question or not question.strip():
            raise TomesError("the question is empty", "ask a question in words")
        module = strategy_module(strategy)
        if map_tokens is not None:
            options["map_tokens"] = map_tokens
        check_options(strategy, module, options)
        return module.ask(target, question, on_event=on_event, run_id=run_id, **options)

    @_scoped
    def memory(self, target: str | int, *, entity: str | None = None, build: bool = False,
               on_event: OnEvent = ignore, top: int = 10) -> dict[str, Any]:
        """The episodic memory workspace of a document, or the merged view of a corpus:
        counts with the top entities and places, or with ``entity`` (any of its names)
        that entity's timeline of roles, states and events. ``build`` first reads the
        chunks the workspace lacks (``memory_build``)."""
        from pipelines import episodic

        return episodic.show(target, entity=entity, build=build, on_event=on_event, top=top)

    @_scoped
    def memory_build(self, target: str | int, *, on_event: OnEvent = ignore,
                     run_id: str | None = None) -> Result:
        """Read a document's or corpus's chunks into its memory workspace: only those it
        has not read (adding a document reads just that document). A run: resumable."""
        from pipelines import episodic

        return episodic.build(target, on_event=on_event, run_id=run_id)

    @_scoped
    def resume(self, run_id: str, *, on_event: OnEvent = ignore, backend: str | None = None,
               model: str | None = None, base_url: str | None = None) -> Result:
        """Continue a stopped run from its checkpoint (a finished run returns its result),
        on the backend, model and endpoint it started with; those given here or to
        ``Tomes(...)`` replace them."""
        from pipelines import resume

        named = {k: self._changes.get(k) for k in ("backend", "model", "base_url")}
        given = {"backend": backend, "model": model, "base_url": base_url}
        serving = named | {k: v for k, v in given.items() if v}
        return resume(run_id, on_event=on_event, serving=serving)

    # --- models ----------------------------------------------------------------------

    @_scoped
    def lm(self, **backend_kwargs: Any) -> Any:
        """The model interface (``serving.LM``) for this object's backend and model."""
        from serving import get_lm

        return get_lm(**backend_kwargs)

    @_scoped
    def chat(
        self, prompt: str, *, system: str | None = None, max_tokens: int = 512,
        temperature: float = 0.0, stop: list[str] | None = None,
        json_schema: dict[str, Any] | None = None, cache: bool | None = None,
        run_id: str | None = None,
    ) -> dict[str, Any]:
        """One prompt through the active backend: text, usage, latency, call id."""
        from serving import get_lm, run_scope

        from pipelines import overflow_advice
        from serving import ContextOverflowError

        lm = get_lm()
        try:
            with run_scope(run_id):
                response = lm.chat(prompt, system=system, max_tokens=max_tokens,
                                   temperature=temperature, stop=stop, json_schema=json_schema,
                                   node="chat", cache=cache)
        except ContextOverflowError as exc:
            exc.fix = f"{overflow_advice()}; or {exc.fix}"
            exc.args = (f"{exc.cause}. {exc.fix}",)
            raise
        out = response.to_dict()
        out["backend"] = lm.backend.name
        if json_schema is not None:
            out["json"] = response.parse_json()
        return out

    @_scoped
    def models(self) -> dict[str, Any]:
        """The model presets, the registered backends and which one is active."""
        from serving import presets, registry
        from serving.launcher import vllm_version

        s = self.settings
        preset = presets.find(s.model) or (presets.EMBEDDED if s.backend in ("embedded", "transformers") else None)
        active: dict[str, Any] = {"backend": s.backend, "model": s.model, "preset": preset.name if preset else None}
        if s.backend == "openai":
            active["base_url"] = s.base_url
        if preset:
            active["context_window"] = preset.context_window
            if not s.model:
                active["model"] = preset.model
        return {"active": active, "presets": [p.to_dict() for p in presets.presets()],
                "backends": registry.names(), "vllm": vllm_version()}

    @_scoped
    def call_tree(self, run_id: str) -> dict[str, Any]:
        """A run's model calls as a tree (parent call -> sub-calls) with totals."""
        from serving.calllog import call_tree, summarize_tree

        roots = call_tree(run_id)
        if not roots:
            raise NotFound(f"no model calls recorded for run {run_id!r}", "list runs with `tomes runs`")
        return {"run_id": run_id, "calls": roots, "totals": summarize_tree(roots)}

    def serve_command(
        self, preset: str, *, host: str = "127.0.0.1", port: int = 8000, extra: Sequence[str] = (),
    ) -> dict[str, Any]:
        """The exact ``vllm serve`` command for a preset (nothing is started)."""
        from serving.launcher import plan

        return plan(preset, host=host, port=port, extra=list(extra)).to_dict()

    @_scoped
    def serve(
        self, preset: str, *, host: str = "127.0.0.1", port: int = 8000, extra: Sequence[str] = (),
        timeout: float = 1800.0, on_event: OnEvent = ignore,
    ) -> Any:
        """Start ``vllm serve`` for a preset and wait until it is healthy; returns the
        running server (``base_url``, ``pid``, ``log_path``, ``wait()``, ``stop()``)."""
        from serving.launcher import plan, start

        return start(plan(preset, host=host, port=port, extra=list(extra)), timeout=timeout,
                     on_event=on_event)

    # --- batches ---------------------------------------------------------------------

    @_scoped
    def batch(
        self, source: str | Path | Sequence[str | dict[str, Any]], out: str | Path, *,
        concurrency: int | None = None, corpus: str = "default", retry_failed: bool = False,
        on_event: OnEvent = ignore, lm: Any = None, ray: str | bool | None = None,
        ray_cpus: int | None = None,
    ) -> Any:
        """Run a JSONL batch of questions and summaries (``pipelines.batch``): ``source``
        is a file or the lines themselves (dicts or JSON text); answers go to ``out`` as they
        finish. Resumable: ids already in ``out`` are skipped (failed ones too, unless
        ``retry_failed``), runs cut off are carried on. File targets are ingested into
        ``corpus``. ``ray`` runs the items as Ray tasks: True for a local Ray of
        ``ray_cpus`` CPUs, or a running cluster's address. Returns a ``BatchReport``."""
        from serving.lm import run_sync

        return run_sync(self.abatch(source, out, concurrency=concurrency, corpus=corpus,
                                    retry_failed=retry_failed, on_event=on_event, lm=lm,
                                    ray=ray, ray_cpus=ray_cpus))

    async def abatch(
        self, source: str | Path | Sequence[str | dict[str, Any]], out: str | Path, *,
        concurrency: int | None = None, corpus: str = "default", retry_failed: bool = False,
        on_event: OnEvent = ignore, lm: Any = None, ray: str | bool | None = None,
        ray_cpus: int | None = None,
    ) -> Any:
        from pipelines import batch

        with _settings.override(**self._changes):
            if ray:
                from pipelines import _batch_ray

                return await _batch_ray.arun_batch(
                    source, out, address=None if ray is True else ray, num_cpus=ray_cpus,
                    corpus=corpus, ingest_path=lambda path: self._ingest_one(path, corpus),
                    concurrency=concurrency, retry_failed=retry_failed, on_event=on_event)
            return await batch.arun(source, out, concurrency=concurrency,
                                    retry_failed=retry_failed, on_event=on_event, lm=lm,
                                    ingest_path=lambda path: self._ingest_one(path, corpus))

    def _ingest_one(self, path: Path, corpus: str) -> int:
        """A file's document id, ingesting it first if it is new. Not embedded here: a
        search embeds what it needs."""
        from serving.tokenizers import active_tokenizer

        with _settings.override(**self._changes):
            return document_of(path, corpus, active_tokenizer())

    def summarize_each(
        self, corpus: str, *, length: str = "medium", style: str | None = None,
        out: str | Path | None = None, concurrency: int | None = None,
        retry_failed: bool = False, map_tokens: int | None = None,
        grounding: str | None = None, strict: bool = False,
        on_event: OnEvent = ignore, lm: Any = None,
    ) -> Any:
        """One summary per document of ``corpus``, as a batch (resumable the same way);
        ``out`` defaults to a file under the home named for the corpus and length."""
        from serving.lm import run_sync

        return run_sync(self.asummarize_each(
            corpus, length=length, style=style, out=out, concurrency=concurrency,
            retry_failed=retry_failed, map_tokens=map_tokens, grounding=grounding,
            strict=strict, on_event=on_event, lm=lm))

    async def asummarize_each(
        self, corpus: str, *, length: str = "medium", style: str | None = None,
        out: str | Path | None = None, concurrency: int | None = None,
        retry_failed: bool = False, map_tokens: int | None = None,
        grounding: str | None = None, strict: bool = False,
        on_event: OnEvent = ignore, lm: Any = None,
    ) -> Any:
        import hashlib

        if corpus.startswith("corpus:"):
            corpus = corpus.removeprefix("corpus:")
        if corpus not in await self.acorpora():
            raise NotFound(f"no corpus named {corpus!r}", "list corpora with `tomes docs`")
        docs = await self.adocuments(corpus)
        summary: dict[str, Any] = {"length": length}
        if style:
            summary["style"] = style
        given = {"map_tokens": map_tokens, "grounding": grounding, "strict": strict or None}
        options = {k: v for k, v in given.items() if v is not None}
        items = [{"custom_id": f"doc-{d['id']}", "target": f"doc:{d['id']}", "summary": summary,
                  "strategy": "mapreduce", "options": options} for d in docs]
        if out is None:
            key = hashlib.sha1(_json_key(summary, options).encode()).hexdigest()[:8]
            out = self.settings.home / "batches" / f"summaries-{corpus}-{length}-{key}.jsonl"
        return await self.abatch(items, out, concurrency=concurrency, retry_failed=retry_failed,
                                 on_event=on_event, lm=lm)

    # --- evaluation ------------------------------------------------------------------

    def eval(
        self, tasks: str | Sequence[str], *, strategies: Sequence[str] | None = None,
        lengths: str | Sequence[int | str] = "4k", n: int = 3, seed: int = 0,
        out: str | Path | None = None, concurrency: int | None = None, corpus: str = "eval",
        options: dict[str, dict[str, Any]] | None = None, on_event: OnEvent = ignore,
        lm: Any = None, plots: bool = True, meta: dict[str, Any] | None = None,
    ) -> Any:
        """Run an evaluation grid (``pipelines.evaluation``): tasks (names or groups:
        ``tomes eval --list``) x strategies x lengths (tokens, "4k,8k") x ``n`` seeded
        cases, every case a run in the store; ``out`` (default: under the home) gets
        cases.jsonl, summary.json, table.md and plots. Resumable: the same ``out`` skips
        finished cases and resumes cut-off runs. Returns an ``EvalReport``."""
        from pipelines.evaluation import runner

        if out is None:
            out = self.settings.home / "eval"
        return runner.run(list(tasks) if not isinstance(tasks, str) else tasks,
                          strategies=list(strategies or runner.DEFAULT_STRATEGIES),
                          lengths=lengths if isinstance(lengths, str) else list(lengths),
                          n=n, seed=seed, out=out, corpus=corpus, concurrency=concurrency,
                          tomes=self, lm=lm, options=options, on_event=on_event, plots=plots,
                          meta=meta)

    def eval_tasks(self) -> list[dict[str, Any]]:
        """The evaluation tasks ``eval`` knows: name, group, what it tests."""
        from pipelines.evaluation import tasks

        return tasks()

    # --- async twins -----------------------------------------------------------------
    # The pipelines run on the caller's event loop (their model calls overlap with the
    # caller's other work); the rest is quick store work, run in a worker thread.

    async def aask(
        self, target: str | int, question: str, *, strategy: str = "auto",
        on_event: OnEvent = ignore, run_id: str | None = None, map_tokens: int | None = None,
        **options: Any,
    ) -> Result:
        from pipelines import _dispatch

        with _settings.override(**self._changes):
            if not question or not question.strip():
                raise TomesError("the question is empty", "ask a question in words")
            if map_tokens is not None:
                options["map_tokens"] = map_tokens
            return await _dispatch.aask(strategy, target, question, on_event=on_event,
                                        run_id=run_id, **options)

    async def asummarize(
        self, doc: str | int, *, length: str = "medium", style: str | None = None,
        on_event: OnEvent = ignore, run_id: str | None = None, map_tokens: int | None = None,
        grounding: str | None = None, strict: bool = False,
    ) -> Result:
        from pipelines import _dispatch

        with _settings.override(**self._changes):
            return await _dispatch.asummarize(doc, length=length, style=style,
                                              on_event=on_event, run_id=run_id,
                                              map_tokens=map_tokens, grounding=grounding,
                                              strict=strict)

    async def aresume(self, run_id: str, *, on_event: OnEvent = ignore, backend: str | None = None,
                      model: str | None = None, base_url: str | None = None) -> Result:
        from pipelines import _dispatch

        named = {k: self._changes.get(k) for k in ("backend", "model", "base_url")}
        given = {"backend": backend, "model": model, "base_url": base_url}
        serving = named | {k: v for k, v in given.items() if v}
        with _settings.override(**self._changes):
            return await _dispatch.aresume(run_id, on_event=on_event, serving=serving)

    async def aingest(self, paths: Sequence[str | Path], corpus: str = "default", *,
                      embed: bool | None = None, on_event: OnEvent = ignore) -> IngestReport:
        return await _in_thread(self.ingest, paths, corpus, embed=embed, on_event=on_event)

    async def adocuments(self, corpus: str | None = None) -> list[DocumentInfo]:
        return await _in_thread(self.documents, corpus)

    # `tomes docs` in Python: the CLI's name for the listing.
    docs = documents
    adocs = adocuments

    async def adocument(self, ref: str | int, *, with_chunks: bool = True) -> DocumentDetail:
        return await _in_thread(self.document, ref, with_chunks=with_chunks)

    async def aremove(self, ref: str | int) -> DocumentInfo:
        return await _in_thread(self.remove, ref)

    async def acorpora(self) -> list[str]:
        return await _in_thread(self.corpora)

    async def asearch(self, corpus: str, query: str, k: int = 10, mode: str = "hybrid", *,
                      document: str | int | None = None, on_event: OnEvent = ignore) -> list[Any]:
        return await _in_thread(self.search, corpus, query, k, mode, document=document,
                                on_event=on_event)

    async def aruns(self, limit: int = 50) -> list[RunInfo]:
        return await _in_thread(self.runs, limit)

    async def arun(self, run_id: str) -> RunDetail:
        return await _in_thread(self.run, run_id)

    async def acalls(self, run_id: str, *, steps: bool = False) -> list[CallInfo]:
        return await _in_thread(self.calls, run_id, steps=steps)

    async def acall_tree(self, run_id: str) -> dict[str, Any]:
        return await _in_thread(self.call_tree, run_id)


async def _in_thread(method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A sync API method in a worker thread (it applies its object's settings itself)."""
    import asyncio

    return await asyncio.to_thread(method, *args, **kwargs)


def _json_key(*values: Any) -> str:
    import json

    return json.dumps(values, sort_keys=True, default=str)


def _doc_info(doc: Document, corpus: str, n_chunks: int, tokens: int) -> DocumentInfo:
    return DocumentInfo(
        id=doc.id, title=doc.title, corpus=corpus, format=doc.format, source=doc.source,
        chars=doc.n_chars, chunks=n_chunks, tokens=tokens,
        pages=len(doc.page_starts) if doc.page_starts else None,
        created_at=doc.created_at.isoformat(timespec="seconds"),
    )


def _run_info(run: Run) -> RunInfo:
    params = run.params or {}
    return RunInfo(
        id=run.id, pipeline=run.pipeline, target=run.target, question=run.question,
        status=run.status, answer=run.answer, error=run.error,
        created_at=run.created_at.isoformat(timespec="seconds"),
        chosen_by=params.get("chosen_by"), why=params.get("why"),
    )



def _target_titles(session: Any, targets: Sequence[str]) -> dict[str, str]:
    """What a run's target (``doc:12``, ``corpus:books``) is called, for people."""
    ids = {int(t[4:]) for t in targets if t.startswith("doc:") and t[4:].isdigit()}
    rows = session.execute(select(Document.id, Document.title).where(Document.id.in_(ids))) if ids else []
    titles = {doc_id: title for doc_id, title in rows}
    out = {}
    for t in targets:
        kind, _, key = t.partition(":")
        if kind == "doc" and key.isdigit():
            out[t] = titles.get(int(key), f"document {key} (removed)")
        elif kind == "corpus":
            out[t] = f"corpus {key}"
        else:
            out[t] = t
    return out
