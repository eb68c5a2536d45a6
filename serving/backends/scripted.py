"""A scripted model for tests and benchmarks, registered like the real backends.

Give it a list of replies (replayed in order, the last one repeated) or a function of
the request; ``latency`` adds a fixed sleep per call to isolate orchestration cost.
A reply may be text, a dict (sent back as JSON text), a ready ChatResponse, or an
exception to raise.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any, ClassVar

from serving.base import ApproxTokenizer, Backend, ChatRequest, ChatResponse, Tokenizer, Usage

Reply = str | dict[str, Any] | ChatResponse | Exception


class ScriptedBackend(Backend):
    name: ClassVar[str] = "scripted"
    supports_json_schema: ClassVar[bool] = True
    shared: ClassVar[bool] = False  # each test scripts its own replies

    def __init__(
        self,
        replies: list[Reply] | Callable[[ChatRequest], Reply] | None = None,
        *,
        model: str = "scripted",
        context_window: int = 8192,
        capacity: int = 8,
        latency: float = 0.0,
        supports_json_schema: bool = True,
        tokenizer: Tokenizer | None = None,
    ) -> None:
        self.replies = replies if replies is not None else ["ok"]
        self.model = model
        self.context_window = context_window
        self.capacity = capacity
        self.latency = latency
        self.supports_json_schema = supports_json_schema  # type: ignore[misc]
        self.requests: list[ChatRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0  # the most calls it was serving at once
        self._tokenizer = tokenizer or ApproxTokenizer()

    def _next(self, request: ChatRequest) -> Reply:
        if callable(self.replies):
            return self.replies(request)
        index = min(len(self.requests) - 1, len(self.replies) - 1)
        return self.replies[index]

    async def achat(self, request: ChatRequest) -> ChatResponse:
        started = time.perf_counter()
        self.requests.append(request)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.latency:
                await asyncio.sleep(self.latency)
            reply = self._next(request)
        finally:
            self.in_flight -= 1
        if isinstance(reply, Exception):
            raise reply
        if isinstance(reply, ChatResponse):
            return reply
        if isinstance(reply, dict):
            reply = json.dumps(reply)
        prompt = "\n".join(m["content"] for m in request.messages)
        return ChatResponse(
            text=reply,
            usage=Usage(self._tokenizer.count(prompt), self._tokenizer.count(reply)),
            latency_s=time.perf_counter() - started,
            model=self.model,
            finish_reason="stop",
        )

    def tokenizer(self) -> Tokenizer:
        return self._tokenizer
