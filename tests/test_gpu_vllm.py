"""vLLM on a GPU: the in-process backend and a map-reduce run through it. Runs only on a
machine with a CUDA GPU and `pip install -e '.[gpu]'` (never in CI, which is CPU only);
the model comes from the hub or the local HF cache: TOMES_GPU_TEST_MODEL, default a
small instruct model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.api import Tomes

MODEL = os.environ.get("TOMES_GPU_TEST_MODEL", "Qwen/Qwen2.5-0.5B-Instruct")


@pytest.mark.gpu
def test_vllm_in_process_answers_and_summarizes(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from serving import registry

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # the test model may need a download
    tomes = Tomes(backend="vllm-local", model=MODEL)
    reply = tomes.chat("What is the capital of France? One word.", max_tokens=8)
    assert "paris" in reply["text"].lower() and reply["usage"]["completion_tokens"] > 0

    tomes.ingest([shared_data / "books" / "a_modest_proposal.txt"], "gpu", embed=False)
    result = tomes.ask("a_modest_proposal.txt", "At what age are the children to be sold?")
    assert result.answer and result.calls >= 1
    registry.close_all()
