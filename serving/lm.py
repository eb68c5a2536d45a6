"""``LM``: the one way pipelines call a model.

Every call goes through ``LM.achat``: it checks the prompt fits the model's window,
consults the response cache, calls the backend under its concurrency limit and records
the call (run id, parent call, node, prompt, response, tokens, latency, cache hit) in
the store. The run and parent call come from context variables, so nested pipeline
code does not thread them through every function.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import json
import logging
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from serving.base import (
    DEFAULT_REPEAT_PENALTY,
    Backend,
    BackendError,
    ChatRequest,
    ChatResponse,
    ContextOverflowError,
    Tokenizer,
    Usage,
    overflow_error,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

current_run: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "tomes_run", default=None
)
current_parent: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "tomes_parent_call", default=None
)


# Where a call that keeps the caller waiting says so (the CLI's progress, the UI's status).
current_events: contextvars.ContextVar[Any] = contextvars.ContextVar("tomes_events", default=None)
WAIT_NOTICE_S = 15.0  # a call still running after this reports, and again as often


@contextmanager
def events_scope(on_event: Any) -> Iterator[None]:
    token = current_events.set(on_event)
    try:
        yield
    finally:
        current_events.reset(token)


async def _waiting(coro: Any, what: str, every: float) -> Any:
    """Await ``coro``; while it runs, send a "wait" event every ``every`` seconds."""
    from app.events import Event

    on_event = current_events.get()
    if on_event is None:
        return await coro
    # A timer, not a task around ``coro``: the call starts at once, not after whatever
    # else the loop has ready (a wave's replies being handled).
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    timer: asyncio.TimerHandle | None = None

    def tell() -> None:
        nonlocal timer
        waited = time.perf_counter() - started
        on_event(Event("wait", message=f"{what}: {waited:.0f} s", data={"seconds": waited}))
        timer = loop.call_later(every, tell)

    timer = loop.call_later(every, tell)
    try:
        return await coro
    finally:
        timer.cancel()


# Called when a task's model call queues for a slot (for every call: it must be
# idempotent). The batch runner starts the next item's set-up then: set-ups taken in turn
# start the first calls sooner than all at once, which share the cores and end together.
current_queued: contextvars.ContextVar[Any] = contextvars.ContextVar("tomes_queued", default=None)


# The run being resumed: its finished calls are replayed from the call log by request
# key even with the cache off (see replay_scope).
current_replay: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "tomes_replay", default=None
)


@contextmanager
def replay_scope(run_id: str | None) -> Iterator[None]:
    """Around a resume: a call that run already finished (same request key, logged under
    it) is answered from its log row instead of being made again, cache on or off."""
    token = current_replay.set(run_id)
    try:
        yield
    finally:
        current_replay.reset(token)


@contextmanager
def run_scope(run_id: str | None) -> Iterator[None]:
    token = current_run.set(run_id)
    try:
        yield
    finally:
        current_run.reset(token)


@contextmanager
def parent_scope(call_id: int | None) -> Iterator[None]:
    token = current_parent.set(call_id)
    try:
        yield
    finally:
        current_parent.reset(token)


Messages = str | list[dict[str, str]]


def as_messages(prompt: Messages, system: str | None = None) -> list[dict[str, str]]:
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system:
        messages.insert(0, {"role": "system", "content": system})
    return messages


def with_schema_instruction(messages: list[dict[str, str]], schema: dict[str, Any]) -> list[dict[str, str]]:
    """For engines without constrained decoding: ask for the JSON in words instead."""
    note = (
        "Reply with one JSON object only (no prose, no code fence) that matches this "
        "JSON schema:\n" + json.dumps(schema, ensure_ascii=False)
    )
    out = [dict(m) for m in messages]
    if out and out[0].get("role") == "system":
        out[0]["content"] = f"{out[0]['content']}\n\n{note}"
    else:
        out.insert(0, {"role": "system", "content": note})
    return out


# An empty reply is asked again this many times before the call fails.
EMPTY_REPLY_RETRIES = 2


class EmptyReplyError(BackendError):
    """The model answered with nothing (no text, or reasoning only)."""


# Above this share of the window an approximate count is checked with the engine.
_EXACT_COUNT_ABOVE = 0.8
# Messages of a call that overflowed are logged shortened: it never reached a model.
_OVERFLOW_LOG_CHARS = 2000


class LM:
    def __init__(
        self, backend: Backend, *, cache: bool = True, concurrency: int | None = None,
        db_path: Path | str | None = None,
    ) -> None:
        self.backend = backend
        self.cache = cache
        self.concurrency = concurrency
        # Where calls are logged; None: the database of the settings at call time.
        self.db_path = db_path
        # One semaphore per event loop: the sync wrappers run a fresh loop per call.
        self._limits: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Semaphore]] = {}
        # (tokenizer, text -> tokens) for count_messages
        self._counts: tuple[Any, dict[str, int]] = (None, {})

    @property
    def model(self) -> str:
        return self.backend.model

    @property
    def context_window(self) -> int:
        return self.backend.context_window

    @property
    def capacity(self) -> int:
        return max(1, self.concurrency or self.backend.capacity)

    @property
    def tokenizer(self) -> Tokenizer:
        return self.backend.tokenizer()

    def count_tokens(self, text: str) -> int:
        return self.backend.tokenizer().count(text)

    def count_messages(self, messages: Messages, system: str | None = None) -> int:
        """Prompt tokens for these messages, chat-template markup included (estimate)."""
        msgs = as_messages(messages, system)
        texts = [m.get("content", "") for m in msgs]
        # A multi-turn prompt is mostly the turns of the previous one: each text is
        # counted once (a recursive root prompt repeats its whole history every step).
        tokenizer = self.backend.tokenizer()
        owner, memo = self._counts
        if owner is not tokenizer:  # e.g. the exact tokenizer replaced an estimate
            memo = {}
            self._counts = (tokenizer, memo)
        fresh = [t for t in dict.fromkeys(texts) if t not in memo]
        counts = dict(zip(fresh, tokenizer.count_many(fresh))) if fresh else {}
        if counts:
            if len(memo) > 1024:
                memo.clear()
            # Bounded (it holds the texts): turns of a conversation, not whole passages.
            memo.update((t, n) for t, n in counts.items() if len(t) <= 16384)
        return sum(counts[t] if t in counts else memo[t] for t in texts) + self.backend.prompt_overhead(msgs)

    def describe(self) -> dict[str, Any]:
        info = self.backend.describe()
        info["capacity"] = self.capacity
        info["tokenizer"] = getattr(self.backend.tokenizer(), "name", "?")
        return info

    def _limit(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        entry = self._limits.get(id(loop))
        if entry is None or entry[0] is not loop:
            # A semaphore keeps its loop alive: forget those of loops that are gone.
            self._limits = {k: v for k, v in self._limits.items() if not v[0].is_closed()}
            entry = self._limits[id(loop)] = (loop, asyncio.Semaphore(self.capacity))
        return entry[1]

    async def _check_fits(self, messages: list[dict[str, str]], max_tokens: int) -> int:
        window = self.context_window
        prompt_tokens = self.count_messages(messages)
        if getattr(self.backend.tokenizer(), "approximate", False) and prompt_tokens + max_tokens > _EXACT_COUNT_ABOVE * window:
            exact = await self.backend.acount_prompt(messages)
            if exact is not None:
                prompt_tokens = exact
        if prompt_tokens + max_tokens > window:
            raise overflow_error(prompt_tokens, max_tokens, window, self.model)
        return prompt_tokens

    async def achat(
        self,
        prompt: Messages,
        *,
        system: str | None = None,
        max_tokens: int = 512,
        temperature: float = 0.0,
        stop: list[str] | None = None,
        json_schema: dict[str, Any] | None = None,
        node: str | None = None,
        cache: bool | None = None,
        repeat_penalty: float | None = None,
    ) -> ChatResponse:
        """One model call. ``cache=False`` skips the cache for this call (the call is
        still logged, and later calls may reuse it); ``settings.cache`` does so per run."""
        from app.settings import get_settings
        from serving import calllog

        await self.backend.aprepare()
        messages = as_messages(prompt, system)
        native = json_schema is not None and self.backend.supports_json_schema
        if json_schema is not None and not native:
            messages = with_schema_instruction(messages, json_schema)
        request = ChatRequest(
            messages=messages,
            max_tokens=max_tokens,
            temperature=temperature,
            stop=list(stop) if stop else None,
            json_schema=json_schema if native else None,
            repeat_penalty=DEFAULT_REPEAT_PENALTY if repeat_penalty is None else repeat_penalty,
        )
        backend, model, params = self.backend.name, self.model, request.params()
        run_id, parent_id = current_run.get(), current_parent.get()
        # The endpoint is part of the key: two servers may serve one model name differently.
        endpoint = getattr(self.backend, "base_url", None)
        encoded = calllog.encode_messages(messages)  # once: the key and the log row
        key = calllog.cache_key(backend, model, messages, {**params, "endpoint": endpoint}
                                if endpoint else params, encoded=encoded)
        entry = dict(run_id=run_id, parent_id=parent_id, node=node, backend=backend, model=model,
                     params=params, key=key)

        # Sampled replies (temperature > 0) are not replayed unless asked for (cache=True).
        wanted = cache is True or (cache is None and not temperature)
        cached = wanted and self.cache and get_settings().cache
        replay = wanted and run_id is not None and current_replay.get() == run_id
        if cached or replay:
            started = time.perf_counter()
            hit = calllog.lookup(key, self.db_path) if cached else None
            if hit is None and replay:
                hit = calllog.lookup_in_run(key, run_id, self.db_path)
            if hit is not None:
                latency = time.perf_counter() - started
                call_id = self._record(
                    messages=encoded, response=hit.response, prompt_tokens=hit.prompt_tokens,
                    completion_tokens=hit.completion_tokens, latency_ms=latency * 1000,
                    cache_hit=True, **entry,
                )
                return ChatResponse(
                    text=hit.response, usage=Usage(hit.prompt_tokens, hit.completion_tokens),
                    latency_s=latency, model=hit.model, finish_reason="cached",
                    call_id=call_id, cache_hit=True,
                )

        # A cached answer proves the prompt fit; only new calls are measured.
        try:
            await self._check_fits(messages, max_tokens)
        except ContextOverflowError as exc:
            short = [{**m, "content": m.get("content", "")[:_OVERFLOW_LOG_CHARS]} for m in messages]
            self._record(messages=short, response=None, error=f"ContextOverflowError: {exc}", **entry)
            raise

        queued = current_queued.get()
        if queued is not None:
            queued()
        for attempt in range(1 + EMPTY_REPLY_RETRIES):
            async with self._limit():
                started = time.perf_counter()
                try:
                    response = await _waiting(self.backend.achat(request),
                                              f"waiting for {model}", WAIT_NOTICE_S)
                except BaseException as exc:
                    if not isinstance(exc, asyncio.CancelledError):
                        self._record(messages=encoded, response=None,
                                     latency_ms=(time.perf_counter() - started) * 1000,
                                     error=f"{type(exc).__name__}: {exc}", **entry)
                    raise
                latency = time.perf_counter() - started
            response.latency_s = latency
            # An empty reply is a failed call: logged as one (never served from the
            # cache), retried under the call that failed, then reported.
            empty = not response.text.strip()
            served = getattr(response, "endpoint", None)
            response.call_id = self._record(
                messages=encoded, response=response.text,
                prompt_tokens=response.usage.prompt_tokens,
                completion_tokens=response.usage.completion_tokens, latency_ms=latency * 1000,
                cached_tokens=response.usage.cached_tokens,
                error=f"EmptyReply: finish_reason={response.finish_reason}" if empty else None,
                # Which of several servers answered (the key leaves it out on purpose).
                **({**entry, "params": {**params, "endpoint": served}} if served else entry),
            )
            if not empty:
                return response
            log.warning("%s returned an empty reply (attempt %d)", model, attempt + 1)
            entry["parent_id"] = response.call_id
        raise EmptyReplyError(
            f"{model} returned an empty reply {1 + EMPTY_REPLY_RETRIES} times "
            f"(finish reason: {response.finish_reason or 'none given'})",
            "check the model server's log; a reasoning model may have spent max_tokens on "
            "thinking (raise it), or choose another model (`tomes models`)",
        )

    def _record(self, **values: Any) -> int | None:
        import sqlite3

        from sqlalchemy.exc import SQLAlchemyError

        from serving import calllog

        try:
            return calllog.record(db_path=self.db_path, **values)
        except (SQLAlchemyError, sqlite3.Error, *_pg_errors()) as exc:
            # A call log that cannot be written must not throw away a model's answer.
            log.warning("could not record a model call: %s", exc)
            return None

    def begin_step(self, node: str, label: str | None = None) -> int | None:
        """Open a pipeline step under the current parent; calls made under
        ``parent_scope(step)`` sit under it in the run's call tree."""
        from serving import calllog

        try:
            return calllog.record_step(run_id=current_run.get(), parent_id=current_parent.get(),
                                       node=node, label=label or node, db_path=self.db_path)
        except Exception as exc:  # noqa: BLE001 - the tree is a view; the run goes on
            log.warning("could not record a step: %s", exc)
            return None

    def end_step(self, step_id: int | None) -> None:
        from serving import calllog

        if step_id is not None:
            try:
                calllog.finish_step(step_id, self.db_path)
            except Exception as exc:  # noqa: BLE001
                log.warning("could not finish a step: %s", exc)

    @contextmanager
    def step(self, node: str, label: str | None = None) -> Iterator[int | None]:
        """A step around a block: its calls (and tasks it starts) nest under it."""
        step_id = self.begin_step(node, label)
        try:
            with parent_scope(step_id if step_id is not None else current_parent.get()):
                yield step_id
        finally:
            self.end_step(step_id)

    async def abatch(
        self, prompts: list[Messages], *, return_exceptions: bool = False, **kwargs: Any
    ) -> list[Any]:
        """Many calls at once, as many in flight as the backend's capacity. With
        ``return_exceptions`` a failed call's exception takes its place in the list."""
        return list(await asyncio.gather(
            *(self.achat(p, **kwargs) for p in prompts), return_exceptions=return_exceptions
        ))

    def chat(self, prompt: Messages, **kwargs: Any) -> ChatResponse:
        return run_sync(self.achat(prompt, **kwargs))

    def batch(self, prompts: list[Messages], **kwargs: Any) -> list[Any]:
        return run_sync(self.abatch(prompts, **kwargs))


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine from sync code, even when this thread already runs an event loop
    (a notebook, Streamlit): then on a worker thread, with the same context variables."""
    from app.store import _kept

    try:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(coro)
        ctx = contextvars.copy_context()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(ctx.run, asyncio.run, coro).result()
    finally:
        _kept.flush_all()  # the call-log rows whose commit timer went with the loop


def get_lm(backend: str | Backend | None = None, **backend_kwargs: Any) -> LM:
    """The LM for ``backend`` (a name or an instance), defaulting to the settings'.
    Named backends that load a model are shared per process and configuration."""
    from app.settings import get_settings
    from serving import registry

    settings = get_settings()
    if not isinstance(backend, Backend):
        backend = registry.get(backend or settings.backend, **backend_kwargs)
    return LM(backend, cache=settings.cache, concurrency=settings.concurrency,
              db_path=settings.store)


def _pg_errors() -> tuple[type[BaseException], ...]:
    """psycopg's errors, when the store is PostgreSQL (the call log writes through the
    raw DBAPI connection, so they are not wrapped in SQLAlchemy's)."""
    import sys

    psycopg = sys.modules.get("psycopg")
    return (psycopg.Error,) if psycopg is not None else ()
