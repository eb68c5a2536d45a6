"""The model boundary: what a backend is, what goes in and what comes out.

Pipelines never hold a Backend directly; they hold an ``LM`` (serving/lm.py), which
adds the call log, the cache and the context-overflow check around it.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from app.errors import TomesError
from app.tokens import ApproxTokenizer, Tokenizer  # noqa: F401 - re-exported: serving's API

# Repetition control: small models loop on a sentence without it. 1.1 over the last
# 128 tokens stops the loops seen with SmolLM2 without garbling names it must repeat.
DEFAULT_REPEAT_PENALTY = 1.1


@dataclass(frozen=True)
class ChatRequest:
    messages: list[dict[str, str]]  # [{"role": "system"|"user"|"assistant", "content": ...}]
    max_tokens: int = 512
    temperature: float = 0.0
    stop: list[str] | None = None
    json_schema: dict[str, Any] | None = None  # constrain the reply to this schema
    # Small models repeat themselves; backends map this to what their engine has.
    repeat_penalty: float = DEFAULT_REPEAT_PENALTY

    def params(self) -> dict[str, Any]:
        """Everything but the messages, for the call log and the cache key."""
        return {
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "stop": self.stop,
            "json_schema": self.json_schema,
            "repeat_penalty": self.repeat_penalty,
        }


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Of the prompt tokens, those the server read from its prefix cache (vLLM's and
    # llama.cpp's usage.prompt_tokens_details.cached_tokens); 0 where it does not say.
    cached_tokens: int = 0

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class ChatResponse:
    text: str
    usage: Usage = field(default_factory=Usage)
    latency_s: float = 0.0
    model: str = ""
    finish_reason: str | None = None
    call_id: int | None = None  # set by the call log
    cache_hit: bool = False
    endpoint: str | None = None  # which server answered, for backends with several

    def parse_json(self) -> Any | None:
        """The reply as JSON, tolerating prose or code fences around one object; None
        when there is none (small models sometimes answer in prose anyway)."""
        return parse_json_loosely(self.text)

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "usage": {"prompt_tokens": self.usage.prompt_tokens,
                      "completion_tokens": self.usage.completion_tokens,
                      "cached_tokens": self.usage.cached_tokens},
            "latency_s": round(self.latency_s, 4),
            "model": self.model,
            "finish_reason": self.finish_reason,
            "call_id": self.call_id,
            "cache_hit": self.cache_hit,
        }


def parse_json_loosely(text: str) -> Any | None:
    text = text.strip()
    try:
        return json.loads(text)
    except ValueError:
        pass
    start = min((i for i in (text.find("{"), text.find("[")) if i >= 0), default=-1)
    if start < 0:
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(text[start:])
        return value
    except ValueError:
        return None


class BackendError(TomesError, RuntimeError):
    """A failure users can act on: the message names the cause and the fix."""

    def __init__(self, cause: str, fix: str | None = None, *, retryable: bool = False) -> None:
        super().__init__(cause, fix)
        self.retryable = retryable


class ContextOverflowError(BackendError):
    """The prompt and the reply it asks for do not fit in the model's window."""

    def __init__(
        self, cause: str, fix: str | None = None, *, prompt_tokens: int | None = None,
        max_tokens: int | None = None, context_window: int | None = None,
    ) -> None:
        super().__init__(cause, fix)
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.context_window = context_window

    @property
    def excess(self) -> int | None:
        if None in (self.prompt_tokens, self.max_tokens, self.context_window):
            return None
        return self.prompt_tokens + self.max_tokens - self.context_window  # type: ignore[operator]


# Serving knows no strategies: pipelines and the API add which ones read in pieces
# (pipelines.overflow_advice), from the ones that exist.
OVERFLOW_FIX = "shorten the prompt or max_tokens, or pick a longer-context model (`tomes models`)"


def overflow_error(prompt_tokens: int, max_tokens: int, window: int, model: str) -> ContextOverflowError:
    excess = prompt_tokens + max_tokens - window
    return ContextOverflowError(
        f"the prompt is {prompt_tokens:,} tokens and asks for up to {max_tokens:,} more, "
        f"{excess:,} tokens over the {window:,}-token window of {model}",
        OVERFLOW_FIX,
        prompt_tokens=prompt_tokens, max_tokens=max_tokens, context_window=window,
    )


class Backend(ABC):
    """One way to run a model. Subclasses register under ``name`` in serving/registry.py
    and are imported only when chosen."""

    name: ClassVar[str]
    supports_json_schema: ClassVar[bool] = False
    # One instance per process and configuration (a loaded model is costly); the
    # scripted fake is not shared, so each test gets its own replies.
    shared: ClassVar[bool] = True

    model: str
    context_window: int
    capacity: int  # how many requests it serves at once; pipelines cap fan-out at this

    @abstractmethod
    async def achat(self, request: ChatRequest) -> ChatResponse: ...

    @abstractmethod
    def tokenizer(self) -> Tokenizer: ...

    def prompt_overhead(self, messages: list[dict[str, str]]) -> int:
        """Tokens the chat template adds around the messages (role markers, a default
        system prompt); an upper estimate is fine, the check errs on the safe side."""
        return 8 * len(messages) + 24

    async def aprepare(self) -> None:  # noqa: B027 - optional hook
        """Learn what the engine knows best (served model, window) before the first
        call, without blocking the event loop; called by LM before every call."""

    def check(self) -> None:  # noqa: B027 - optional hook
        """Reach the engine now, raising a BackendError naming what is wrong, so work
        that cannot go on (a resume) fails before it starts rather than mid-run."""

    async def acount_prompt(self, messages: list[dict[str, str]]) -> int | None:
        """The exact prompt size from the engine, when it can tell cheaply; None if not."""
        return None

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        pass

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "model": self.model,
            "context_window": self.context_window,
            "capacity": self.capacity,
            "json_schema": self.supports_json_schema,
        }
