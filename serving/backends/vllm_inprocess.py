"""vLLM in the tomes process (``vllm.LLM``), for batch jobs on a GPU box.

No server to start or reach: concurrent calls are gathered into one ``LLM.chat`` call
per batch (vLLM schedules the batch itself, with its own continuous batching and
prefix caching). Optional: needs ``pip install 'tomes[gpu]'`` and a GPU.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any, ClassVar

from serving.backends._batching import BatchWorker
from serving.base import Backend, BackendError, ChatRequest, ChatResponse, Tokenizer, Usage

DEFAULT_CAPACITY = 64
# Flags of the HTTP server that the in-process engine does not take.
_SERVER_ONLY = {"host", "port", "api_key", "served_model_name", "reasoning_parser",
                "tool_call_parser", "enable_auto_tool_choice", "uvicorn_log_level",
                "enable_prompt_tokens_details"}
GPU_FIX = "pip install 'tomes[gpu]' on a machine with an NVIDIA GPU, or use --backend openai"


def engine_kwargs(cli_args: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``vllm serve`` flags as ``vllm.LLM`` keyword arguments
    (``--max-model-len 8192`` -> ``max_model_len=8192``, a bare flag -> True)."""
    out: dict[str, Any] = {}
    args = list(cli_args)
    i = 0
    while i < len(args):
        flag = args[i]
        if not flag.startswith("--"):
            i += 1
            continue
        key = flag[2:].replace("-", "_")
        if key.startswith("no_") and (i + 1 >= len(args) or args[i + 1].startswith("--")):
            out[key[3:]] = False
            i += 1
            continue
        if i + 1 < len(args) and not args[i + 1].startswith("--"):
            raw = args[i + 1]
            try:
                value: Any = json.loads(raw)
            except ValueError:
                value = raw
            out[key] = value
            i += 2
        else:
            out[key] = True
            i += 1
    return {k: v for k, v in out.items() if k not in _SERVER_ONLY}


class VLLMBackend(Backend):
    name: ClassVar[str] = "vllm-local"
    supports_json_schema: ClassVar[bool] = True

    def __init__(
        self, model: str | None = None, *, capacity: int | None = None,
        context_window: int | None = None, **engine: Any,
    ) -> None:
        import importlib.util

        from app.settings import get_settings
        from serving import presets

        if importlib.util.find_spec("vllm") is None:
            raise BackendError("vLLM is not installed (the vllm-local backend needs it)", GPU_FIX)
        settings = get_settings()
        requested = model or settings.model
        if not requested:
            raise BackendError(
                "the vllm-local backend needs a model",
                f"name a preset or a Hugging Face id with --model; presets: {', '.join(presets.names())}",
            )
        self.preset = presets.find(requested)
        if self.preset is not None and self.preset.backend == "embedded":
            raise BackendError(
                f"{requested} runs on the embedded backend, not vLLM", "use --backend embedded"
            )
        self.model = self.preset.model if self.preset else requested
        kwargs = engine_kwargs(self.preset.vllm_args) if self.preset else {}
        kwargs.update(engine)
        self._engine_kwargs = kwargs
        self.context_window = int(
            context_window or kwargs.get("max_model_len")
            or (self.preset.context_window if self.preset else 32768)
        )
        kwargs.setdefault("max_model_len", self.context_window)
        self.capacity = max(1, capacity or settings.concurrency or int(kwargs.get("max_num_seqs", DEFAULT_CAPACITY)))
        self._llm: Any = None
        self._lock = threading.Lock()
        self._worker = BatchWorker(self._run_batch, max_batch=self.capacity, window_s=0.05,
                                   name="tomes-vllm")
        self._tokenizer: Tokenizer | None = None

    def load(self) -> None:
        if self._llm is not None:
            return
        with self._lock:
            if self._llm is not None:
                return
            for key, value in (self.preset.env if self.preset else {}).items():
                os.environ.setdefault(key, value)
            from vllm import LLM

            self._llm = LLM(model=self.model, **self._engine_kwargs)

    def _sampling(self, request: ChatRequest) -> Any:
        from vllm import SamplingParams

        kwargs: dict[str, Any] = dict(
            max_tokens=request.max_tokens, temperature=request.temperature, stop=request.stop,
        )
        if request.json_schema is not None:
            try:  # vLLM >= 0.11
                from vllm.sampling_params import StructuredOutputsParams

                kwargs["structured_outputs"] = StructuredOutputsParams(json=request.json_schema)
            except ImportError:  # older vLLM
                from vllm.sampling_params import GuidedDecodingParams

                kwargs["guided_decoding"] = GuidedDecodingParams(json=request.json_schema)
        return SamplingParams(**kwargs)

    def _run_batch(self, requests: list[ChatRequest]) -> list[ChatResponse]:
        self.load()
        started = time.perf_counter()
        outputs = self._llm.chat(
            [r.messages for r in requests], sampling_params=[self._sampling(r) for r in requests],
            use_tqdm=False,
        )
        latency = time.perf_counter() - started
        responses = []
        for out in outputs:
            completion = out.outputs[0]
            responses.append(ChatResponse(
                text=completion.text,
                usage=Usage(len(out.prompt_token_ids or []), len(completion.token_ids or []),
                            # prefix-cache hits (vLLM's RequestOutput.num_cached_tokens)
                            int(getattr(out, "num_cached_tokens", 0) or 0)),
                latency_s=latency, model=self.model, finish_reason=completion.finish_reason,
            ))
        return responses

    async def achat(self, request: ChatRequest) -> ChatResponse:
        return await self._worker.submit(request)

    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            from serving.tokenizers import for_backend

            self._tokenizer = for_backend("vllm-local", self.preset.name if self.preset else self.model)
        return self._tokenizer

    def close(self) -> None:
        self._worker.stop()
        self._llm = None
