"""The recursive-LM controller, after Recursive Language Models (Zhang, Kraska, Khattab 2025).

The root model never sees the long input: it sees its size and shape and works on it
through an environment, one iteration at a time, calling sub-models (and child
controllers, one level deeper each) on the pieces it chooses. Two modes:

- ``code``: the model writes Python run in a sandboxed REPL out of process, where the
  input is the variable ``context`` (``pipelines._repl``);
- ``actions``: for models that cannot write code (the embedded SmolLM2), a small action
  language under a JSON schema that the controller runs itself (``pipelines._actions``).

The default comes from the model's preset (``writes_code``). Limits - iterations, depth,
tokens, wall time, consecutive errors - end a run with the best partial answer and
``details["limit"]`` naming the limit. Each iteration is one LangGraph step checkpointed
in SQLite under the run id, so a killed run resumes without asking the model again for
finished iterations; code mode rebuilds the REPL by replaying their code with the
sub-calls answered from the checkpoint.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypedDict

from langgraph.channels.delta import DeltaChannel

from app.errors import TomesError
from app.events import Event, OnEvent, ignore
from pipelines import _records as R
from pipelines import _runs
from pipelines._recursive_run import MODES, Limits, RunContext, Trace, add_usage, new_controller
from pipelines.environment import Environment
from pipelines.result import Provenance, Result
from serving.lm import LM, get_lm, replay_scope, run_scope, run_sync

PIPELINE = "recursive"
# "sync": a node's checkpoint is written before the next node asks the model ("async"
# measured no faster: bench/recursive_peers.py). A node runs one iteration, or several
# that end within CHECKPOINT_EVERY_S of its start (a cached or fast model: the graph step
# and its checkpoint are most of the controller's own time per iteration,
# bench/recursive_peers.py). A kill loses no model call either way: those of the node
# under way are in the call log, which a resume replays while it re-runs their code.
DURABILITY = "sync"
CHECKPOINT_EVERY_S = 1.0
OPTIONS = ("mode", "max_depth", "max_iterations", "budget_tokens", "max_seconds", "max_errors",
           "output_chars", "map_chunks")
_MINIMA = {"max_depth": 0, "max_iterations": 1, "budget_tokens": 1, "max_seconds": 0.001,
           "max_errors": 1, "output_chars": 200, "map_chunks": 1}


def _appended(state: list[dict[str, Any]], writes: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [*state, *(record for batch in writes for record in batch)]


class State(TypedDict, total=False):
    question: str
    # A delta channel: each checkpoint stores the node's new iterations, not the whole
    # list again (a plain reducer re-stored the history at every checkpoint: 4.6 MB of
    # checkpoints for one 60-iteration run printing 3,000 characters a step). Resume
    # replays the writes; checkpoints written with the plain reducer still load.
    iterations: Annotated[list[dict[str, Any]], DeltaChannel(_appended)]
    usage: Annotated[dict[str, int], add_usage]
    answer: str
    how: str
    limit: str | None
    closing: dict[str, Any]  # the trace of the partial answer's calls, if any


def default_mode(lm: LM) -> tuple[str, str]:
    """(mode, why): code for models whose preset says they write code, else actions."""
    from serving import presets

    backend = lm.backend.name
    preset = presets.EMBEDDED if backend in ("embedded", "transformers") else presets.find(lm.model)
    if preset is None:
        return "actions", f"{lm.model} has no preset saying it writes code"
    mode = "code" if preset.writes_code else "actions"
    return mode, f"preset {preset.name}: writes_code={preset.writes_code}"


def _limits(options: dict[str, Any]) -> Limits:
    values: dict[str, Any] = {}
    for key, value in options.items():
        if key == "mode" or value is None:
            continue
        number = float(value) if key == "max_seconds" else int(value)
        if number < _MINIMA[key]:
            raise TomesError(f"{key} is {value}", f"use {_MINIMA[key]:g} or more")
        values[key] = number
    return Limits(**values)


def check_options(options: dict[str, Any]) -> None:
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise TomesError(
            f"the recursive strategy has no option{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(unknown)}",
            f"use {', '.join(OPTIONS)}",
        )
    mode = options.get("mode")
    if mode is not None and mode not in MODES:
        raise TomesError(f"unknown recursive mode {mode!r}", f"use one of: {', '.join(MODES)}")


def _require_sandbox() -> None:
    try:
        import pipelines._sandbox  # noqa: F401
    except ImportError as exc:
        raise TomesError(f"code mode needs the sandbox, which cannot be loaded ({exc})",
                         "use --mode actions") from exc


# --- the graph -------------------------------------------------------------------------


class Recursive:
    """One recursive run over an Environment; ``graph()`` is its LangGraph."""

    def __init__(self, env: Environment, lm: LM, *, question: str, mode: str, limits: Limits,
                 on_event: OnEvent = ignore, mode_from: str = "option") -> None:
        if not (question or "").strip():
            raise TomesError("the question is empty", "ask a question in words")
        self.env = env
        self.lm = lm
        self.question = question.strip()
        self.mode = mode
        self.mode_from = mode_from
        self.limits = limits
        self.on_event = on_event
        self.run = RunContext(env, lm, mode=mode, limits=limits, on_event=on_event)
        self.root = new_controller(self.run, self.run.root_view, self.question, 0, None)
        self._opened = False
        self._failed: Exception | None = None

    def prime(self, values: dict[str, Any]) -> None:
        """Carry a resumed run's spending (tokens, working time) into its limits."""
        history = values.get("iterations", [])
        self.run = RunContext(self.env, self.lm, mode=self.mode, limits=self.limits,
                              on_event=self.on_event, used=values.get("usage"),
                              seconds_before=sum(r.get("seconds", 0.0) for r in history))
        self.root = new_controller(self.run, self.run.root_view, self.question, 0, None)

    async def _open(self, history: list[dict[str, Any]]) -> None:
        if not self._opened:
            self._opened = True
            await self.root.open(history)

    async def iterate(self, state: State) -> Any:
        from langgraph.types import Command

        if self._failed is not None:  # the previous node's iterations are checkpointed now
            failed, self._failed = self._failed, None
            raise failed
        history = state.get("iterations", [])
        await self._open(history)
        records: list[dict[str, Any]] = []
        so_far = list(history)  # and this node's records
        usage: dict[str, int] = {}
        started = time.monotonic()
        while True:  # see CHECKPOINT_EVERY_S
            trace = Trace()
            try:
                record = await self.root.step(so_far, trace)
            except Exception as exc:
                if not records:
                    raise
                # The iterations that finished before it are kept (and their spending
                # counted): checkpointed by this node's end, the error raised by the next.
                self._failed = exc
                return Command(update={"iterations": records, "usage": usage}, goto="iterate")
            record.update(trace.to_record())
            records.append(record)
            so_far.append(record)
            usage = add_usage(usage, trace.usage)
            goto = self.route(so_far)
            if goto != "iterate" or time.monotonic() - started >= CHECKPOINT_EVERY_S:
                break
        # The node names the next one itself: a conditional edge is one more runnable (and
        # a worker thread, for a plain function) an iteration. Same channels either way, so
        # checkpoints of either graph resume with the other.
        return Command(update={"iterations": records, "usage": usage}, goto=goto)

    def route(self, history: list[dict[str, Any]]) -> str:
        """Where a run goes after these iterations: on, or to its answer."""
        if history and history[-1].get("final") is not None:
            return "finish"
        return "finish" if self.run.limit_for(history) else "iterate"

    async def finish(self, state: State) -> dict[str, Any]:
        history = state.get("iterations", [])
        last = history[-1] if history else {}
        trace = Trace()
        if last.get("final") is not None:
            answer, how, limit = last["final"], "final", None
        else:
            limit = self.run.limit_for(history) or "iterations"
            await self._open(history)
            answer, how = await self.root.partial(history, limit, trace)
        self.on_event(Event("answer", 1, 1, message="done" if limit is None else f"{limit} limit"))
        return {"answer": answer, "how": how, "limit": limit, "usage": trace.usage,
                "closing": trace.to_record()}

    def graph(self) -> Any:
        from langgraph.graph import END, START, StateGraph

        builder = StateGraph(State)
        builder.add_node("iterate", self.iterate, destinations=("iterate", "finish"))
        builder.add_node("finish", self.finish)
        builder.add_edge(START, "iterate")
        builder.add_edge("finish", END)
        return builder

    def close(self) -> None:
        self.root.close()
        self.run.close()


# --- running ---------------------------------------------------------------------------


def ask(target: str | int, question: str, *, on_event: OnEvent = ignore,
        run_id: str | None = None, lm: LM | None = None, **options: Any) -> Result:
    return run_sync(aask(target, question, on_event=on_event, run_id=run_id, lm=lm, **options))


def resume(run_id: str, *, on_event: OnEvent = ignore, lm: LM | None = None) -> Result:
    return run_sync(aresume(run_id, on_event=on_event, lm=lm))


async def aask(target: str | int, question: str, *, on_event: OnEvent = ignore,
               run_id: str | None = None, lm: LM | None = None, **options: Any) -> Result:
    """Answer ``question`` over ``target`` (a document or corpus), recorded as a Run."""
    check_options(options)
    lm = lm or get_lm()
    mode, mode_from = options.get("mode"), "option"
    if mode is None:
        mode, mode_from = default_mode(lm)
    if mode == "code":
        _require_sandbox()
    limits = _limits(options)
    env = Environment.load(target, lm=lm)
    job = Recursive(env, lm, question=question, mode=mode, limits=limits, on_event=on_event,
                    mode_from=mode_from)
    params = {"mode": mode, "mode_from": mode_from, "limits": limits.to_dict(),
              **_runs.serving_of(lm)}
    try:
        run_id = _runs.create_run(run_id, PIPELINE, env.target.label, job.question, params)
    except BaseException:
        job.close()
        raise
    return await _execute(job, run_id)


async def aresume(run_id: str, *, on_event: OnEvent = ignore, lm: LM | None = None) -> Result:
    """Continue a run from its last finished iteration; a finished run returns its result."""
    run, done = _runs.load_for_resume(run_id, PIPELINE)
    if done is not None:
        return done
    params = run["params"] or {}
    lm = lm or _runs.lm_for_run(run)
    mode = params.get("mode", "actions")
    if mode == "code":
        _require_sandbox()
    env = Environment.load(run["target"], lm=lm)
    job = Recursive(env, lm, question=run["question"] or "", mode=mode,
                    limits=Limits(**(params.get("limits") or {})), on_event=on_event,
                    mode_from=params.get("mode_from", "option"))
    with replay_scope(run_id):  # finished calls a lost checkpoint did not keep: from the call log
        return await _execute(job, run_id)


def _loop_saver_class() -> type:
    """LangGraph's SQLite checkpointer with its async methods run on the event loop itself
    (imported on first use, as the graph is).

    An iteration writes two small rows; ``AsyncSqliteSaver`` hands each statement and
    each commit to its own thread and back (eight thread switches an iteration, most of
    the controller's own overhead on a busy 2-core machine: bench/recursive_peers.py).
    The same statements inline take well under a millisecond, as the call log's do.
    Same tables and format, so runs checkpointed by either saver resume with the other.
    """
    global _LoopSaver
    if _LoopSaver is not None:
        return _LoopSaver
    from langgraph.checkpoint.sqlite import SqliteSaver

    class LoopSaver(SqliteSaver):
        async def aget_tuple(self, config: Any) -> Any:
            return self.get_tuple(config)

        async def alist(self, config: Any, *, filter: dict[str, Any] | None = None,  # noqa: A002
                        before: Any = None, limit: int | None = None) -> AsyncIterator[Any]:
            for item in self.list(config, filter=filter, before=before, limit=limit):
                yield item

        async def aput(self, config: Any, checkpoint: Any, metadata: Any,
                       new_versions: Any) -> Any:
            return self.put(config, checkpoint, metadata, new_versions)

        async def aput_writes(self, config: Any, writes: Any, task_id: str,
                              task_path: str = "") -> None:
            self.put_writes(config, writes, task_id, task_path)

        async def adelete_thread(self, thread_id: str) -> None:
            self.delete_thread(thread_id)

        async def aget_delta_channel_history(self, *, config: Any, channels: Any) -> Any:
            return self.get_delta_channel_history(config=config, channels=channels)

    _LoopSaver = LoopSaver
    return LoopSaver


_LoopSaver: type | None = None


@asynccontextmanager
async def _loop_saver() -> AsyncIterator[Any]:
    """The run's checkpointer: the store's PostgreSQL database when the store is there
    (``_runs.checkpointer``: a run resumes on any machine), else the SQLite file at
    ``checkpoint_path`` through the on-loop saver, checked (and set aside if damaged) as
    ``_runs.checkpointer`` checks it."""
    if _runs.postgres_checkpoints() is not None:
        async with _runs.checkpointer() as saver:
            yield saver
        return
    with _runs.sqlite_checkpoints() as path:
        conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
        try:
            saver = _loop_saver_class()(conn)
            saver.setup()
            # WAL (set by setup) with NORMAL: a commit survives a killed process without
            # an fsync per iteration (as the store does, app/store/db.py).
            conn.execute("PRAGMA synchronous=NORMAL")
            yield saver
        finally:
            conn.close()


async def _execute(job: Recursive, run_id: str) -> Result:
    _runs.mark_running(run_id)
    config = {"configurable": {"thread_id": run_id},
              "recursion_limit": job.limits.max_iterations + 8}
    try:
        with _runs.failures_kept(run_id, "finished iterations are kept"):
            with run_scope(run_id):
                async with _loop_saver() as saver:
                    graph = job.graph().compile(checkpointer=saver)
                    snapshot = await graph.aget_state(config)
                    if snapshot.values:
                        job.prime(snapshot.values)
                        inputs = None
                    else:
                        inputs = {"question": job.question}
                    final = await graph.ainvoke(inputs, config, durability=DURABILITY)
    finally:
        job.close()
    result = _result(job, run_id, final)
    _runs.finish_run(run_id, result.answer, result.to_dict())
    return result


def _result(job: Recursive, run_id: str, final: dict[str, Any]) -> Result:
    history = final.get("iterations", [])
    closing = final.get("closing") or {}
    parts = [*history, closing]
    usage = final.get("usage", {}) or {}
    answer = final.get("answer", "")
    read = list(dict.fromkeys(c for r in parts for c in r.get("read", [])))
    seen = list(dict.fromkeys(c for r in parts for c in r.get("seen", [])))
    candidates = list(dict.fromkeys(read + seen))
    hint = answer if final.get("how") != "none" else job.question
    cited = R.supporting_chunks(job.env, candidates, hint, most=5) if candidates else []
    ordered = cited + [c for c in read if c not in cited]
    limits_hit = [hit for r in parts for hit in r.get("limits_hit", [])]
    if final.get("limit"):
        limits_hit.append({"limit": final["limit"], "depth": 0})
    return Result(
        answer=answer,
        provenance=_provenance(job.env, ordered, hint),
        run_id=run_id,
        pipeline=PIPELINE,
        calls=usage.get("calls", 0),
        cache_hits=usage.get("cache_hits", 0),
        prompt_tokens=usage.get("prompt_tokens", 0),
        completion_tokens=usage.get("completion_tokens", 0),
        details={
            "mode": job.mode, "mode_from": job.mode_from, "question": job.question,
            "target": job.env.target.label, "iterations": len(history),
            "depth": max([r.get("reached", 0) for r in parts] or [0]),
            "limit": final.get("limit"), "limits_hit": limits_hit,
            "answer_from": final.get("how"), "cited": cited, "read": read,
            "fallbacks": [f for r in parts for f in r.get("fallbacks", [])],
            "sandbox_warnings": list(dict.fromkeys(
                w for r in parts for w in r.get("sandbox_warnings", []))),
            "limits": job.limits.to_dict(), "steps": [_step(r) for r in history],
            "backend": job.lm.backend.name, "model": job.lm.model,
        },
    )


def _step(record: dict[str, Any]) -> dict[str, Any]:
    what = record.get("action") or {"code": [b.get("code", "")[:200] for b in record.get("blocks", [])]}
    return {"n": record.get("n"), "what": what, "error": bool(record.get("error")),
            "observation": " ".join((record.get("observation") or "").split())[:300],
            "call_id": record.get("call_id"), "seconds": record.get("seconds")}


def _provenance(env: Environment, chunk_ids: list[int], hint: str) -> list[Provenance]:
    out = []
    for cid in chunk_ids:
        if not env.has_chunk(cid):
            continue
        chunk = env.chunk(cid)
        out.append(Provenance(
            chunk_id=cid, document_id=chunk.document_id,
            title=env.document(chunk.document_id).title, start=chunk.start, end=chunk.end,
            page=chunk.page, quote=R.quote(chunk.text, hint),
        ))
    return out
