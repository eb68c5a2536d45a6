"""``LM``: the one way pipelines call a model.

Every call goes through ``LM.achat``: it checks the prompt fits the model's window,
consults the response cache, calls the backend under its concurrency limit and records
the call (run id, parent call, node, prompt, response, tokens, latency, cache hit) in
the store. The run and parent call come from context variables, so nested pipeline
code does not thread them through every function.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from serving.base import Backend, ChatRequest, ChatResponse

current_run: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "tomes_run", default=None
)
current_parent: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "tomes_parent_call", default=None
)


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


class LM:
    def __init__(self, backend: Backend, *, cache: bool = True) -> None:
        self.backend = backend
        self.cache = cache
        self._semaphore: asyncio.Semaphore | None = None

    @property
    def model(self) -> str:
        return self.backend.model

    @property
    def context_window(self) -> int:
        return self.backend.context_window

    @property
    def capacity(self) -> int:
        return self.backend.capacity

    def count_tokens(self, text: str) -> int:
        return self.backend.tokenizer().count(text)

    def _limit(self) -> asyncio.Semaphore:
        # Created lazily: a semaphore binds to the loop that first awaits it.
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(max(1, self.capacity))
        return self._semaphore

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
    ) -> ChatResponse:
        request = ChatRequest(
            messages=as_messages(prompt, system),
            max_tokens=max_tokens,
            temperature=temperature,
            stop=stop,
            json_schema=json_schema if self.backend.supports_json_schema else None,
        )
        async with self._limit():
            return await self.backend.achat(request)

    async def abatch(self, prompts: list[Messages], **kwargs: Any) -> list[ChatResponse]:
        return list(await asyncio.gather(*(self.achat(p, **kwargs) for p in prompts)))

    def chat(self, prompt: Messages, **kwargs: Any) -> ChatResponse:
        return asyncio.run(self.achat(prompt, **kwargs))

    def batch(self, prompts: list[Messages], **kwargs: Any) -> list[ChatResponse]:
        return asyncio.run(self.abatch(prompts, **kwargs))


def get_lm(backend: str | Backend | None = None, **backend_kwargs: Any) -> LM:
    """The LM for ``backend`` (a name or an instance), defaulting to the settings'."""
    from app.settings import get_settings
    from serving import registry

    settings = get_settings()
    if not isinstance(backend, Backend):
        backend = registry.create(backend or settings.backend, **backend_kwargs)
    return LM(backend, cache=settings.cache)
