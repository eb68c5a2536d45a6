"""What the one-call strategies (``direct``, ``rag``) share: the answer schema, the one
model call and its tolerant parse, option checks, and the run around it.

A one-call run has no checkpoint: resuming it runs it again, and the call that finished
before a stop is served from the response cache (same prompt, same key).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from app.errors import TomesError
from app.events import OnEvent
from pipelines import _records as R
from pipelines import _runs
from pipelines._structured import ParseError, parse_object, text_field
from pipelines.result import Result
from serving.base import ChatResponse, ContextOverflowError
from serving.lm import LM, events_scope, run_scope, with_schema_instruction

NO_ANSWER = "The text has no information about this question."
ANSWER_TOKENS = 300  # a short answer and its citation; small models ramble past this
SAFETY = 48  # tokens kept free: the engine's template can count a little differently

ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "answer": {"type": "string"},
        "passages": {"type": "array", "items": {"type": "integer"}},
    },
    "required": ["answer", "passages"],
    "additionalProperties": False,
}
QUOTE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"answer": {"type": "string"}, "quote": {"type": "string"}},
    "required": ["answer", "quote"],
    "additionalProperties": False,
}


def check_options(pipeline: str, options: dict[str, Any], known: tuple[str, ...]) -> None:
    unknown = sorted(set(options) - set(known))
    if unknown:
        plural = "s" if len(unknown) > 1 else ""
        raise TomesError(f"the {pipeline} strategy has no option{plural} {', '.join(unknown)}",
                         f"use {', '.join(known)}" if known else f"{pipeline} takes no options")


def positive(name: str, value: Any, least: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise TomesError(f"{name} is {value!r}", f"give a whole number, {least} or more") from None
    if number < least:
        raise TomesError(f"{name} is {number}", f"use {least} or more")
    return number


def prompt_tokens(lm: LM, messages: list[dict[str, str]], schema: dict[str, Any]) -> int:
    """Prompt tokens as the LM will send them (the schema note included where the engine
    has no constrained decoding)."""
    if not getattr(lm.backend, "supports_json_schema", False):
        messages = with_schema_instruction(messages, schema)
    return lm.count_messages(messages)


def usable(answer: str) -> bool:
    return bool(answer.strip()) and not R.is_no_info(answer)


async def call(lm: LM, messages: list[dict[str, str]], *, schema: dict[str, Any],
               max_tokens: int, node: str, advice: str) -> ChatResponse:
    """The one call. A prompt that overflows after all (an engine counting more tokens
    than our tokenizer) is the user's context-overflow error with what to do instead."""
    try:
        return await lm.achat(messages, max_tokens=max_tokens, temperature=0.0,
                              json_schema=schema, node=node,
                              stop=None if getattr(lm.backend, "supports_json_schema", False)
                              else ["\n\n\n"])
    except ContextOverflowError as exc:
        raise TomesError(exc.cause, f"{advice}; or {exc.fix}" if advice else exc.fix) from exc


def parse(text: str, fallbacks: list[str], node: str) -> tuple[dict[str, Any], str]:
    """(the reply's object, its answer). A reply that is not the JSON asked for is not
    asked again (the prompt is the whole context: a retry would cost as much as the
    call); its text is the answer, and that is said in the fallbacks."""
    try:
        obj = parse_object(text)
    except ParseError as exc:
        fallbacks.append(f"{node}: the reply was not the JSON asked for ({exc}); its text is "
                         "the answer")
        return {}, text_field(text, 1500)
    return obj, text_field(obj.get("answer"), 1500)


def usage_of(response: ChatResponse) -> dict[str, int]:
    if response.cache_hit:
        return {"calls": 0, "cache_hits": 1, "prompt_tokens": 0, "completion_tokens": 0}
    return {"calls": 1, "cache_hits": 0, "prompt_tokens": response.usage.prompt_tokens,
            "completion_tokens": response.usage.completion_tokens}


async def execute(run_id: str, on_event: OnEvent, work: Callable[[], Awaitable[Result]]) -> Result:
    """Run ``work`` as the run ``run_id``: failures fail the run (with how to carry on),
    a stop interrupts it, a result finishes it. The bookkeeping runs off the event loop:
    other runs' calls (a batch) start while it waits on the store."""
    await asyncio.to_thread(_runs.mark_running, run_id)
    try:
        with run_scope(run_id), events_scope(on_event):
            result = await work()
    except TomesError as exc:
        await asyncio.to_thread(_runs.fail_run, run_id, f"{exc.cause}. {exc.fix or ''}".strip())
        raise
    except Exception as exc:
        await asyncio.to_thread(_runs.fail_run, run_id, f"{type(exc).__name__}: {exc}")
        raise TomesError(f"run {run_id} stopped: {exc}",
                         f"fix the cause, then run it again with `tomes resume {run_id}`") from exc
    except BaseException:
        _runs.interrupt_run(run_id)
        raise
    await asyncio.to_thread(_runs.finish_run, run_id, result.answer, result.to_dict())
    return result
