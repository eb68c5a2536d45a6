"""The alternative in-process backend: transformers loading the same GGUF file.

transformers dequantizes the GGUF into a float32 PyTorch model (~30 s to start, ~10x
slower decode than xllamacpp on CPU), so it is not the default; it needs no native
server and runs anywhere PyTorch does. Concurrent calls are gathered into padded
batches (left padding) of up to ``capacity`` requests: one ``generate`` per batch is
far cheaper than one per request on CPU. There is no constrained decoding here, so
LM asks for JSON in words instead (``supports_json_schema = False``).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, ClassVar

from serving.backends._batching import BatchWorker
from serving.base import Backend, BackendError, ChatRequest, ChatResponse, Tokenizer, Usage
from serving.presets import EMBEDDED

DEFAULT_BATCH = 8
BATCH_WINDOW_S = 0.02  # how long the worker waits for more requests to join a batch


class TransformersBackend(Backend):
    name: ClassVar[str] = "transformers"
    supports_json_schema: ClassVar[bool] = False

    def __init__(
        self, model: str | None = None, *, batch_size: int | None = None,
        threads: int | None = None, context_window: int | None = None,
    ) -> None:
        from app.settings import get_settings
        from serving.local_model import resolve_gguf

        settings = get_settings()
        self.path, self.model, self._smollm2 = resolve_gguf(model or settings.model, "transformers")
        self.context_window = context_window or (EMBEDDED.context_window if self._smollm2 else 4096)
        self.capacity = max(1, batch_size or settings.concurrency or DEFAULT_BATCH)
        self.threads = threads
        self._model: Any = None
        self._tok: Any = None
        self._load_lock = threading.Lock()
        # Requests with the same sampling settings share a padded batch.
        self._worker = BatchWorker(
            self._run_batch, max_batch=self.capacity, window_s=BATCH_WINDOW_S,
            group=lambda r: (r.temperature, r.repeat_penalty, tuple(r.stop or ())),
            name="tomes-transformers",
        )
        self.load_seconds: float | None = None

    def load(self) -> None:
        if self._model is not None:
            return
        with self._load_lock:
            if self._model is not None:
                return
            started = time.perf_counter()
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
            from transformers.utils import logging as hf_logging

            from serving.tokenizers import gguf_tokenizer_dir

            hf_logging.disable_progress_bar()  # serving never prints
            if self.threads:
                torch.set_num_threads(self.threads)
            from app.offline import hub_offline

            with hub_offline():
                tok = AutoTokenizer.from_pretrained(str(gguf_tokenizer_dir(self.path)))
            tok.padding_side = "left"
            if tok.pad_token_id is None:
                tok.pad_token = tok.eos_token
            try:
                with hub_offline():
                    model = AutoModelForCausalLM.from_pretrained(
                        str(self.path.parent), gguf_file=self.path.name, dtype=torch.float32
                    )
            except Exception as exc:
                raise BackendError(
                    f"transformers could not load {self.path.name}: {exc}",
                    "pip install gguf accelerate, or use the default embedded backend",
                ) from exc
            model.eval()
            self._tok, self._model = tok, model
            self.load_seconds = time.perf_counter() - started

    def _run_batch(self, requests: list[ChatRequest]) -> list[ChatResponse]:
        self.load()
        return self._generate(requests)

    def _generate(self, requests: list[ChatRequest]) -> list[ChatResponse]:
        import torch

        tok, model = self._tok, self._model
        started = time.perf_counter()
        texts = [tok.apply_chat_template(r.messages, tokenize=False, add_generation_prompt=True)
                 for r in requests]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        first = requests[0]
        kwargs: dict[str, Any] = {
            "max_new_tokens": max(r.max_tokens for r in requests),
            "repetition_penalty": first.repeat_penalty,
            "pad_token_id": tok.pad_token_id,
        }
        if first.temperature > 0:
            kwargs.update(do_sample=True, temperature=first.temperature)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if first.stop:
            kwargs.update(stop_strings=list(first.stop), tokenizer=tok)
        with torch.inference_mode():
            out = model.generate(**enc, **kwargs)
        latency = time.perf_counter() - started
        prompt_len = enc["input_ids"].shape[1]
        eos = {tok.eos_token_id, tok.pad_token_id} - {None}
        responses = []
        for i, r in enumerate(requests):
            ids = out[i, prompt_len:].tolist()
            cut = next((k for k, t in enumerate(ids) if t in eos), None)
            finish = "stop" if cut is not None else "length"
            ids = ids[: cut if cut is not None else len(ids)][: r.max_tokens]
            if cut is None and len(ids) < r.max_tokens:
                finish = "stop"
            text = tok.decode(ids, skip_special_tokens=True)
            for s in r.stop or ():
                at = text.find(s)
                if at >= 0:
                    text, finish = text[:at], "stop"
            responses.append(ChatResponse(
                text=text,
                usage=Usage(int(enc["attention_mask"][i].sum()), len(ids)),
                latency_s=latency, model=self.model, finish_reason=finish,
            ))
        return responses

    async def achat(self, request: ChatRequest) -> ChatResponse:
        return await self._worker.submit(request)

    def tokenizer(self) -> Tokenizer:
        from serving.tokenizers import gguf_tokenizer, smollm2_tokenizer

        return smollm2_tokenizer() if self._smollm2 else gguf_tokenizer(self.path)

    def close(self) -> None:
        self._worker.stop()
        self._model = self._tok = None

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(path=str(self.path), batch_size=self.capacity, loaded=self._model is not None)
        return info

    @property
    def batches(self) -> list[int]:
        """Sizes of the batches run so far (the bench reads them)."""
        return self._worker.sizes

