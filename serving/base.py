"""The model boundary: what a backend is, what goes in and what comes out.

Pipelines never hold a Backend directly; they hold an ``LM`` (serving/lm.py), which
adds the call log, the cache and the context-overflow check around it.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol


@dataclass(frozen=True)
class ChatRequest:
    messages: list[dict[str, str]]  # [{"role": "system"|"user"|"assistant", "content": ...}]
    max_tokens: int = 512
    temperature: float = 0.0
    stop: list[str] | None = None
    json_schema: dict[str, Any] | None = None  # constrain the reply to this schema
    # Small models repeat themselves; backends map this to what their engine has.
    repeat_penalty: float = 1.1

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


class Tokenizer(Protocol):
    name: str

    def count(self, text: str) -> int: ...

    def count_many(self, texts: list[str]) -> list[int]: ...


class ApproxTokenizer:
    """A cheap stand-in when no model tokenizer is chosen: words and punctuation
    marks, each long word counted as several pieces the way BPE splits them."""

    name = "approx"
    _pieces = re.compile(r"\w{1,6}|[^\w\s]")

    def count(self, text: str) -> int:
        return len(self._pieces.findall(text))

    def count_many(self, texts: list[str]) -> list[int]:
        return [self.count(t) for t in texts]


class BackendError(RuntimeError):
    """A failure users can act on: the message names the cause and the fix."""


class ContextOverflowError(BackendError):
    pass


class Backend(ABC):
    """One way to run a model. Subclasses register under ``name`` in serving/registry.py
    and are imported only when chosen."""

    name: ClassVar[str]
    supports_json_schema: ClassVar[bool] = False

    model: str
    context_window: int
    capacity: int  # how many requests it serves at once; pipelines cap fan-out at this

    @abstractmethod
    async def achat(self, request: ChatRequest) -> ChatResponse: ...

    @abstractmethod
    def tokenizer(self) -> Tokenizer: ...

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
