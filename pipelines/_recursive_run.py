"""What all controllers of one recursive run share: the model and its accounting, the
limits, the clock, and the trace each root iteration collects (chunks read and seen,
fallbacks, limits met, depth reached) for its checkpointed record.

Every model call of the run goes through ``RunContext.call``: it refuses a call once the
token budget or the wall time is spent (``LimitReached``), nests the call under the call
that caused it, and counts its tokens for the run and for the iteration.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from app.events import Event, OnEvent, ignore
from pipelines._view import Reads, View
from pipelines.environment import Environment
from serving.base import ChatResponse
from serving.lm import LM, Messages, as_messages, parent_scope

MODES = ("code", "actions")
LIMITS = ("iterations", "depth", "tokens", "wall_time", "errors")


class LimitReached(Exception):
    """A run-wide limit (tokens, wall time) is spent: no more model calls."""

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit


@dataclass(frozen=True)
class Limits:
    max_iterations: int = 12  # per controller
    max_depth: int = 1  # child controllers may go this many levels below the root
    budget_tokens: int | None = None  # prompt + completion tokens of every call of the run
    max_seconds: float | None = None  # the run's working time (resumes add to it)
    max_errors: int = 3  # consecutive failed iterations of one controller
    output_chars: int = 2000  # of one iteration's output fed back to the model
    map_chunks: int = 16  # chunks one `map` action may read (actions mode)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Trace:
    """What one root iteration did, children included."""

    read: dict[int, None] = field(default_factory=dict)  # chunks sub-calls read
    seen: dict[int, None] = field(default_factory=dict)  # chunks shown to a controller
    fallbacks: list[dict[str, Any]] = field(default_factory=list)
    limits: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # sub-call answers, for a partial answer
    warnings: list[str] = field(default_factory=list)  # the sandbox's, once per run
    depth: int = 0  # the deepest controller that ran
    usage: dict[str, int] = field(default_factory=dict)

    def read_all(self, ids: list[int]) -> None:
        self.read.update(dict.fromkeys(ids))

    def see(self, ids: list[int | None]) -> None:
        self.seen.update(dict.fromkeys(i for i in ids if i is not None))

    def note(self, text: str) -> None:
        if text and text.strip():
            self.notes.append(" ".join(text.split())[:400])
            del self.notes[:-24]

    def to_record(self) -> dict[str, Any]:
        return {"read": list(self.read), "seen": list(self.seen), "fallbacks": self.fallbacks,
                "limits_hit": self.limits, "notes": self.notes, "reached": self.depth,
                "sandbox_warnings": self.warnings, "usage": self.usage}


def add_usage(a: dict[str, int] | None, b: dict[str, int] | None) -> dict[str, int]:
    out = dict(a or {})
    for key, value in (b or {}).items():
        out[key] = out.get(key, 0) + value
    return out


class RunContext:
    def __init__(self, env: Environment, lm: LM, *, mode: str, limits: Limits,
                 on_event: OnEvent = ignore, used: dict[str, int] | None = None,
                 seconds_before: float = 0.0) -> None:
        self.env = env
        self.lm = lm
        self.mode = mode
        self.limits = limits
        self.on_event = on_event
        self.usage: dict[str, int] = dict(used or {})
        self.reads = Reads(env.chunks)
        self.root_view = View.of(env)
        self.warnings: dict[str, None] = {}
        self._counts: dict[str, int] = {}
        self._slots: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None
        self._started = time.monotonic() - seconds_before
        self.loop: asyncio.AbstractEventLoop | None = None
        # Sandbox start-ups and search/grep (which may embed a query) run off the loop, in
        # a pool of the run's own, so nested controllers never starve the default executor.
        self.pool = concurrent.futures.ThreadPoolExecutor(32, thread_name_prefix="tomes-rlm")
        self.closed = False

    def close(self) -> None:
        self.closed = True
        self.pool.shutdown(wait=False, cancel_futures=True)

    # --- clock and budget ------------------------------------------------------------

    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def tokens_used(self) -> int:
        return self.usage.get("prompt_tokens", 0) + self.usage.get("completion_tokens", 0)

    def spent(self) -> str | None:
        """The run-wide limit already spent, if any."""
        budget, seconds = self.limits.budget_tokens, self.limits.max_seconds
        if budget is not None and self.tokens_used() >= budget:
            return "tokens"
        if seconds is not None and self.elapsed() >= seconds:
            return "wall_time"
        return None

    def check(self) -> None:
        spent = self.spent()
        if spent == "tokens":
            raise LimitReached("tokens", f"the run's token budget ({self.limits.budget_tokens:,} "
                               f"tokens) is spent ({self.tokens_used():,} used)")
        if spent == "wall_time":
            raise LimitReached("wall_time", f"the run's time limit ({self.limits.max_seconds:g} s) "
                               "is spent")

    def remaining_seconds(self) -> float | None:
        if self.limits.max_seconds is None:
            return None
        return max(0.0, self.limits.max_seconds - self.elapsed())

    def limit_for(self, history: list[dict[str, Any]]) -> str | None:
        """The limit that stops a controller before its next iteration, if any."""
        if len(history) >= self.limits.max_iterations:
            return "iterations"
        spent = self.spent()
        if spent:
            return spent
        errors = 0
        for rec in reversed(history):
            if not rec.get("error"):
                break
            errors += 1
        if errors >= self.limits.max_errors:
            return "errors"
        return None

    # --- model calls -----------------------------------------------------------------

    async def call(self, prompt: Messages, *, node: str, max_tokens: int, trace: Trace,
                   parent: int | None, schema: dict[str, Any] | None = None,
                   stop: list[str] | None = None) -> ChatResponse:
        # The budget is checked when a slot is free, not when the call is queued: of a
        # batch of 64, the calls still waiting when the budget runs out are refused.
        async with self._slot():
            self.check()
            with parent_scope(parent):
                response = await self.lm.achat(as_messages(prompt), max_tokens=max_tokens,
                                               temperature=0.0, json_schema=schema, node=node,
                                               stop=stop)
        if response.cache_hit:
            delta = {"cache_hits": 1}
        else:
            delta = {"calls": 1, "prompt_tokens": response.usage.prompt_tokens,
                     "completion_tokens": response.usage.completion_tokens}
        self.usage = add_usage(self.usage, delta)
        trace.usage = add_usage(trace.usage, delta)
        return response

    def _slot(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._slots is None or self._slots[0] is not loop:
            self._slots = (loop, asyncio.Semaphore(self.lm.capacity))
        return self._slots[1]

    def count(self, messages: list[dict[str, str]]) -> int:
        """Prompt tokens as ``LM.count_messages`` counts them, each message's text counted
        once per run: a root prompt is mostly the history it already counted."""
        memo = self._counts
        texts = [m.get("content", "") for m in messages]
        fresh = [t for t in dict.fromkeys(texts) if t not in memo]
        if fresh:
            if len(memo) > 4096:
                memo.clear()
            memo.update(zip(fresh, self.lm.tokenizer.count_many(fresh)))
        return sum(memo[t] for t in texts) + self.lm.backend.prompt_overhead(messages)

    def fits(self, messages: list[dict[str, str]], max_tokens: int) -> bool:
        return self.count(messages) + max_tokens + 32 <= self.lm.context_window

    def emit(self, depth: int, iteration: int, message: str, **data: Any) -> None:
        if depth == 0:
            self.on_event(Event("iteration", iteration, self.limits.max_iterations,
                                message=message, data=data))


class Controller(ABC):
    """One controller (the root, or a child at ``depth``) over a view."""

    def __init__(self, run: RunContext, view: View, question: str, depth: int,
                 parent_call: int | None) -> None:
        self.run = run
        self.view = view
        self.question = question
        self.depth = depth
        self.parent_call = parent_call

    async def open(self, history: list[dict[str, Any]]) -> None:  # noqa: B027 - optional
        """Rebuild what earlier iterations left (a resumed run)."""

    def close(self) -> None:  # noqa: B027 - optional
        pass

    @abstractmethod
    async def step(self, history: list[dict[str, Any]], trace: Trace) -> dict[str, Any]:
        """One iteration: ask the model, act, observe. Returns the iteration's record;
        ``record["final"]`` is the answer once there is one."""

    @abstractmethod
    async def partial(self, history: list[dict[str, Any]], limit: str,
                      trace: Trace) -> tuple[str, str]:
        """(the best answer there is, how it was made) when ``limit`` stops the work."""


def new_controller(run: RunContext, view: View, question: str, depth: int,
                   parent_call: int | None) -> Controller:
    if run.mode == "code":
        from pipelines._repl import CodeController

        return CodeController(run, view, question, depth, parent_call)
    from pipelines._actions import ActionsController

    return ActionsController(run, view, question, depth, parent_call)


async def run_child(run: RunContext, view: View, question: str, depth: int,
                    parent_call: int | None, trace: Trace) -> tuple[str, str]:
    """A child controller from start to (answer, how it was made); not checkpointed: it
    lives inside the one parent iteration that started it. Its limits are met with a
    partial answer (how "none": a report that there is none)."""
    trace.depth = max(trace.depth, depth)
    child = new_controller(run, view, question, depth, parent_call)
    history: list[dict[str, Any]] = []
    try:
        await child.open(history)
        while True:
            limit = run.limit_for(history)
            if limit:
                trace.limits.append({"limit": limit, "depth": depth})
                answer, how = await child.partial(history, limit, trace)
                if how != "final":
                    trace.fallbacks.append({"depth": depth, "what": f"partial answer ({how}) "
                                            f"after the {limit} limit"})
                return answer, how
            record = await child.step(history, trace)
            history.append(record)
            if record.get("final") is not None:
                return record["final"], "final"
    finally:
        child.close()
