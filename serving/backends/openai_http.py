"""Any OpenAI-compatible chat-completions server: vLLM first (``tomes serve vllm``),
also llama.cpp's ``llama-server``, Ollama and hosted APIs.

Concurrency is capped by the LM; this adds timeouts, retries with exponential backoff
on connection errors, timeouts, 429 and 5xx, and one clear error when the server
cannot be reached. Several servers of the same model (``base_url`` a list, or
TOMES_BASE_URL="http://a:8000/v1,http://b:8000/v1") share the load: each request goes to
the least busy one, a failed request goes on to another at once, and a server that
cannot be reached is left alone for a cool-down (serving/backends/_endpoints.py). The
capacity is the sum of theirs. Structured output goes in ``response_format`` (json_schema) and in
vLLM's ``structured_outputs`` ({"json": schema}); the removed ``guided_json`` is never
sent (current servers ignore it silently, which would leave the reply unconstrained).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Any, ClassVar

import httpx

from serving.backends._endpoints import DEFAULT_COOLDOWN, Endpoint, Endpoints, parse_urls
from serving.backends._oai import context_error, error_message, is_context_error, parse_reply, response_format
from serving.base import (
    DEFAULT_REPEAT_PENALTY,
    Backend,
    BackendError,
    ChatRequest,
    ChatResponse,
    Tokenizer,
)

DEFAULT_WINDOW = 32768  # when neither the server nor a preset says
DEFAULT_CAPACITY = 16
START_HINT = (
    "start one with `tomes serve vllm --preset NAME` (presets: `tomes models`), or point "
    "TOMES_BASE_URL at a running OpenAI-compatible server (vLLM, llama-server, Ollama)"
)


class OpenAIBackend(Backend):
    name: ClassVar[str] = "openai"
    supports_json_schema: ClassVar[bool] = True

    def __init__(
        self,
        model: str | None = None,
        *,
        base_url: str | list[str] | tuple[str, ...] | None = None,
        api_key: str | None = None,
        context_window: int | None = None,
        capacity: int | None = None,
        timeout: float | None = None,
        call_timeout: float | None = None,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 20.0,
        strict_openai: bool | None = None,
        cooldown: float = DEFAULT_COOLDOWN,
    ) -> None:
        from app.settings import get_settings
        from serving import presets

        settings = get_settings()
        urls = parse_urls(base_url or settings.base_url)
        # The first URL stands for them all where one is named (the response cache's key,
        # messages): the answer must not depend on which server of the model gave it.
        self.base_url = urls[0]
        requested = model or settings.model
        self.preset = presets.find(requested)
        self._model = self.preset.model if self.preset and self.preset.backend == "openai" else requested
        self._api_key = api_key if api_key is not None else os.environ.get(settings.api_key_env)
        self.api_key_env = settings.api_key_env
        self._window = context_window
        # ``capacity`` is each server's; TOMES_CONCURRENCY, a cap on the whole, is the LM's.
        each = max(1, capacity or (settings.concurrency if len(urls) == 1 else None) or (
            self.preset.max_num_seqs if self.preset else DEFAULT_CAPACITY))
        self.endpoints = Endpoints(urls, each, cooldown=cooldown)
        self.capacity = self.endpoints.capacity
        self.timeout = timeout or settings.request_timeout  # one request's whole reply
        self.call_timeout = max(self.timeout, call_timeout or settings.call_timeout)  # with retries
        self.retries = max(0, retries)
        self.backoff = backoff
        self.max_backoff = max_backoff
        # Hosted OpenAI rejects fields it does not know; local servers take vLLM's extras.
        self.strict_openai = (any("api.openai.com" in u for u in urls)
                              if strict_openai is None else strict_openai)
        self._clients: dict[int, tuple[asyncio.AbstractEventLoop, httpx.AsyncClient]] = {}
        self._server_info: dict[str, Any] | None = None
        self._prepared = False
        self._tokenize_ok: bool | None = None
        self._tokenizer: Tokenizer | None = None
        self.retried = 0  # retries made so far (tests and the bench read it)
        self.failovers = 0  # failed requests sent on to another endpoint at once

    # --- configuration the server knows best ------------------------------------------

    @property
    def base_urls(self) -> list[str]:
        return [e.url for e in self.endpoints.items]

    @property
    def root_url(self) -> str:
        return _root(self.base_url)

    @property
    def model(self) -> str:  # type: ignore[override]
        if self._model is None:
            self._fetch_info_sync()
        if self._model is None:
            raise BackendError(
                f"the server at {self.base_url} lists no model",
                "name one with --model / TOMES_MODEL",
            )
        return self._model

    @property
    def context_window(self) -> int:  # type: ignore[override]
        if self._window is not None:
            return self._window
        if self._server_info is None and not self._prepared:
            self._fetch_info_sync(quiet=True)
        if self._server_info and self._server_info.get("max_model_len"):
            return int(self._server_info["max_model_len"])
        if self.preset:
            return self.preset.context_window
        return DEFAULT_WINDOW

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    def _unreachable(self, exc: Exception, url: str | None = None) -> BackendError:
        return BackendError(
            f"cannot reach the model server at {url or self.base_url} ({type(exc).__name__}: {exc})",
            START_HINT, retryable=True,
        )

    def _take_info(self, payload: Any) -> None:
        data = payload.get("data") if isinstance(payload, dict) else None
        models = [m for m in data or [] if isinstance(m, dict)]
        chosen = None
        if self._model is not None:
            chosen = next((m for m in models if m.get("id") == self._model), None)
        elif models:
            chosen = models[0]
            self._model = str(chosen.get("id"))
        self._server_info = chosen or {}

    def _info_order(self) -> list[str]:
        """Where to ask for the model listing: live endpoints first, in list order."""
        return sorted(self.base_urls, key=lambda u: not self.endpoints.up(self._endpoint(u)))

    def _endpoint(self, url: str) -> Endpoint:
        return next(e for e in self.endpoints.items if e.url == url)

    def _fetch_info_sync(self, quiet: bool = False) -> None:
        self._prepared = True
        error: Exception | None = None
        for url in self._info_order():  # any server of the model can say what it serves
            try:
                r = httpx.get(f"{url}/models", headers=self._headers(), timeout=10.0)
            except httpx.TransportError as exc:
                error = error or self._unreachable(exc, url)
                continue
            try:
                self._take_info(self._models_payload(r, url))
                return
            except BackendError as exc:
                error = error or exc
        if not quiet and error is not None:
            raise error

    def _models_payload(self, r: httpx.Response, url: str | None = None) -> Any:
        """The /models listing, or an error saying what answered instead (a web page, a
        proxy's error, a server that is not OpenAI-compatible)."""
        url = url or self.base_url
        where = f"{url}/models"
        if r.status_code in (401, 403):
            raise BackendError(f"the server at {url} refused the API key (HTTP {r.status_code})",
                               f"set {self.api_key_env} to a key it accepts")
        if r.status_code != 200:
            raise BackendError(
                f"the server at {where} answered HTTP {r.status_code}: {r.text[:120]!r}",
                "check the server's log; " + START_HINT, retryable=r.status_code >= 500)
        try:
            payload = r.json()
        except ValueError:
            payload = None
        if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
            raise BackendError(
                f"{where} answered with something that is not an OpenAI model list "
                f"(it starts {r.text[:60]!r})",
                "point TOMES_BASE_URL at the OpenAI-compatible API, which usually ends in /v1 "
                "(e.g. http://127.0.0.1:8000/v1)")
        return payload

    def check(self) -> None:
        self._fetch_info_sync(quiet=False)
        self.model  # noqa: B018 - raises when the server lists none and none was named

    async def aprepare(self) -> None:
        """Ask the server (once) which model it serves and its max_model_len."""
        if self._prepared:
            return
        self._prepared = True
        error: BackendError | None = None
        for url in self._info_order():  # any server of the model can say what it serves
            try:
                r = await self._client().get(f"{url}/models", headers=self._headers(), timeout=10.0)
            except httpx.TransportError as exc:
                error = error or self._unreachable(exc, url)
                continue
            try:
                self._take_info(self._models_payload(r, url))
                return
            except BackendError as exc:
                error = error or exc
        if self._model is None and error is not None:  # nothing to call without it
            self._prepared = False
            raise error
        # Otherwise the chat call itself retries and reports.

    def _client(self) -> httpx.AsyncClient:
        # An AsyncClient belongs to the loop it was first used on; the sync wrappers
        # run a fresh loop per call, so keep one client per loop.
        loop = asyncio.get_running_loop()
        entry = self._clients.get(id(loop))
        if entry is None or entry[0] is not loop:
            self._clients = {k: v for k, v in self._clients.items() if not v[0].is_closed()}
            client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout, connect=min(10.0, self.timeout)),
                limits=httpx.Limits(max_connections=max(self.capacity * 2, 10)),
            )
            entry = self._clients[id(loop)] = (loop, client)
        return entry[1]

    # --- calls -------------------------------------------------------------------------

    def payload(self, request: ChatRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": request.messages,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
        }
        if request.stop:
            body["stop"] = list(request.stop)
        if request.json_schema is not None:
            body["response_format"] = response_format(request.json_schema)
            if not self.strict_openai:
                body["structured_outputs"] = {"json": request.json_schema}
        # The small-model default penalty would only hurt large served models; send
        # one when the caller asked for it explicitly.
        if not self.strict_openai and request.repeat_penalty != DEFAULT_REPEAT_PENALTY:
            body["repetition_penalty"] = request.repeat_penalty
        return body

    def _delay(self, attempt: int, response: httpx.Response | None = None) -> float:
        if response is not None:
            retry_after = response.headers.get("retry-after")
            if retry_after:
                try:
                    return min(float(retry_after), self.max_backoff)
                except ValueError:
                    pass
        base = self.backoff * (2 ** attempt)
        return min(base * (1 + random.random() * 0.25), self.max_backoff)

    async def achat(self, request: ChatRequest) -> ChatResponse:
        await self.aprepare()
        body = self.payload(request)
        client = self._client()
        last: BackendError | None = None
        # httpx bounds each read; this bounds the whole reply and the call with its retries.
        deadline = time.monotonic() + self.call_timeout
        attempts = rounds = 0
        response: httpx.Response | None = None  # the last failed one (its Retry-After)
        tried: set[str] = set()  # endpoints this request failed on since the last backoff
        while True:
            endpoint = self.endpoints.pick(avoid=tried)
            if endpoint.url in tried:
                # Every endpoint failed this request once: back off, then go round again.
                if rounds >= self.retries:
                    break
                delay = self._delay(rounds, response)
                if time.monotonic() + delay >= deadline:
                    break
                rounds += 1
                self.retried += 1
                await asyncio.sleep(delay)
                tried.clear()
                endpoint = self.endpoints.pick()
            elif tried:
                self.failovers += 1
            bound = min(self.timeout, deadline - time.monotonic())
            if bound <= 0:
                break
            attempts += 1
            tried.add(endpoint.url)
            with self.endpoints.lease(endpoint):
                outcome, response = await self._attempt(client, endpoint.url, body, request, bound)
            if isinstance(outcome, ChatResponse):
                self.endpoints.succeeded(endpoint)
                outcome.endpoint = endpoint.url
                return outcome
            last, down = outcome
            self.endpoints.failed(endpoint, last.cause, down=down)
            if not last.retryable:
                raise last
        if last is None:  # not even one attempt had time left
            last = BackendError(f"no time was left to call {self.base_url}", "raise TOMES_CALL_TIMEOUT")
        notes = [f"after {attempts - 1} retries"] if attempts > 1 else []
        if len(self.endpoints) > 1:
            notes.append(f"all {len(self.endpoints)} endpoints were tried")
        if rounds < self.retries:  # stopped early: the call's bound ran out
            notes.append(f"the call's {self.call_timeout:g} s bound (TOMES_CALL_TIMEOUT) ran out")
        if notes:
            last.cause += f" ({'; '.join(notes)})"
            last.args = (f"{last.cause}. {last.fix}" if last.fix else last.cause,)
        raise last

    async def _attempt(
        self, client: httpx.AsyncClient, base: str, body: dict[str, Any], request: ChatRequest,
        bound: float,
    ) -> tuple[ChatResponse | tuple[BackendError, bool], httpx.Response | None]:
        """One request to one endpoint: the reply, or (the error, whether the endpoint
        looks down and should cool off), with the HTTP response when there was one."""
        response: httpx.Response | None = None
        started = time.perf_counter()
        try:
            async with asyncio.timeout(bound):
                response = await client.post(f"{base}/chat/completions", json=body,
                                             headers=self._headers())
        except (TimeoutError, httpx.TimeoutException) as exc:
            if isinstance(exc, httpx.ConnectTimeout):
                return (self._unreachable(exc, base), True), None
            return (BackendError(
                f"the model server at {base} did not answer within {bound:g} s",
                "raise TOMES_REQUEST_TIMEOUT (one reply) or TOMES_CALL_TIMEOUT (a call "
                "with its retries), lower max_tokens, or check the server's load",
                retryable=True,
            ), False), None
        except httpx.ConnectError as exc:
            return (self._unreachable(exc, base), True), None
        except httpx.TransportError as exc:  # dropped connection, protocol error: it died?
            return (BackendError(
                f"the connection to {base} failed: {type(exc).__name__}: {exc}",
                "check the server's log", retryable=True,
            ), True), None
        latency = time.perf_counter() - started
        if response.status_code == 200:
            try:
                data = response.json()
            except ValueError:
                raise BackendError(
                    f"the model server at {base} sent a reply that is not JSON",
                    "is TOMES_BASE_URL an OpenAI-compatible endpoint (ending in /v1)?",
                ) from None
            return parse_reply(data, model=self.model, latency_s=latency), response
        return (self._http_error(response, request, base), False), response

    def _http_error(self, response: httpx.Response, request: ChatRequest,
                    base: str | None = None) -> BackendError:
        try:
            data: Any = response.json()
        except ValueError:
            data = response.text[:300]
        message = error_message(data)
        base = base or self.base_url
        status = response.status_code
        if status == 429 or status >= 500:
            return BackendError(
                f"the model server at {base} answered {status}: {message}",
                "it is overloaded or failing; retry later or lower TOMES_CONCURRENCY",
                retryable=True,
            )
        if status == 400 and is_context_error(data):
            return context_error(message, request, self.context_window, self.model)
        if status in (401, 403):
            return BackendError(
                f"the model server at {base} refused the API key ({status}: {message})",
                f"set the key in ${self.api_key_env} (TOMES_API_KEY_ENV names the variable)",
            )
        if status == 404:
            return BackendError(
                f"the model server at {base} answered 404: {message}",
                "check --model against the server's /v1/models and that the URL ends in /v1",
            )
        return BackendError(f"the model server at {base} answered {status}: {message}")

    async def acount_prompt(self, messages: list[dict[str, str]]) -> int | None:
        """vLLM's /tokenize gives the exact prompt size (template included)."""
        if self._tokenize_ok is False:
            return None
        try:
            r = await self._client().post(
                f"{_root(self.endpoints.pick().url)}/tokenize", headers=self._headers(), timeout=30.0,
                json={"model": self.model, "messages": messages, "add_generation_prompt": True},
            )
            data = r.json() if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            data = None
        if not isinstance(data, dict) or not ("count" in data or "tokens" in data):
            self._tokenize_ok = False
            return None
        self._tokenize_ok = True
        return int(data.get("count", len(data.get("tokens") or [])))

    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            from serving.tokenizers import for_backend

            self._tokenizer = for_backend("openai", self.preset.name if self.preset else self._model)
        return self._tokenizer

    def close(self) -> None:
        self._clients = {}

    def describe(self) -> dict[str, Any]:
        info = {
            "backend": self.name, "base_url": self.base_url, "model": self._model,
            "endpoints": self.endpoints.describe(),
            "preset": self.preset.name if self.preset else None,
            "context_window": self._window or (self.preset.context_window if self.preset else None),
            "capacity": self.capacity, "json_schema": True,
        }
        return info


def _root(url: str) -> str:
    return url[:-3] if url.endswith("/v1") else url
