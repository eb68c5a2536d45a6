"""The serving layer with the scripted backend: call log, call tree, cache, context
overflow, JSON-schema fallback, concurrency cap, registry, presets and the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from app import settings
from app.api import Tomes
from app.cli import app
from app.store import Call, session_scope
from serving import (
    LM,
    ApproxTokenizer,
    BackendError,
    ChatRequest,
    ContextOverflowError,
    get_lm,
    parent_scope,
    run_scope,
)
from serving import presets, registry
from serving.backends.scripted import ScriptedBackend
from serving.backends.vllm_inprocess import engine_kwargs
from serving.launcher import plan
from serving.tokenizers import active_tokenizer, for_backend

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def calls() -> list[Call]:
    with session_scope() as s:
        return list(s.scalars(select(Call).order_by(Call.id)))


def lm_with(replies=None, **kw) -> tuple[LM, ScriptedBackend]:
    backend = ScriptedBackend(replies, **kw)
    return get_lm(backend), backend


# --- the call log --------------------------------------------------------------------


def test_every_call_is_logged_with_run_node_tokens_and_call_id():
    lm, backend = lm_with(["Paris is the capital."])
    with run_scope("run-1"):
        r = lm.chat("Capital of France?", system="Be brief.", node="answer", max_tokens=20)
    assert r.text == "Paris is the capital." and r.call_id is not None and not r.cache_hit
    (row,) = calls()
    assert row.id == r.call_id and row.run_id == "run-1" and row.node == "answer"
    assert row.backend == "scripted" and row.model == "scripted"
    assert row.messages == [{"role": "system", "content": "Be brief."},
                            {"role": "user", "content": "Capital of France?"}]
    assert row.params["max_tokens"] == 20 and row.response == r.text
    assert row.prompt_tokens == r.usage.prompt_tokens > 0
    assert row.completion_tokens == r.usage.completion_tokens > 0
    assert row.latency_ms >= 0 and row.error is None and row.cache_key and len(row.cache_key) == 64


def test_calls_of_a_run_form_a_tree_through_parent_scope():
    lm, _ = lm_with(lambda req: "re: " + req.messages[-1]["content"])

    async def main():
        with run_scope("run-tree"):
            root = await lm.achat("plan", node="root")
            with parent_scope(root.call_id):
                kids = await lm.abatch(["part 1", "part 2"], node="map")
                with parent_scope(kids[0].call_id):
                    await lm.achat("deeper", node="sub")
            await lm.achat("final", node="reduce")
        await lm.achat("outside any run")
        return root

    root = asyncio.run(main())
    tree = Tomes().call_tree("run-tree")
    assert [n["node"] for n in tree["calls"]] == ["root", "reduce"]
    top = tree["calls"][0]
    assert top["id"] == root.call_id
    assert [c["node"] for c in top["children"]] == ["map", "map"]
    assert [c["node"] for c in top["children"][0]["children"]] == ["sub"]
    assert top["children"][1]["children"] == []
    assert tree["totals"]["calls"] == 5 and tree["totals"]["cache_hits"] == 0
    assert "re: plan" in top["preview"]
    assert len(calls()) == 6  # the call outside the run is logged too, with no run id


def test_failed_calls_are_logged_with_their_error_and_never_served_from_cache():
    lm, backend = lm_with([RuntimeError("engine fell over"), "fine now"])
    with pytest.raises(RuntimeError, match="fell over"):
        lm.chat("q")
    r = lm.chat("q")  # same key: the failed row must not be a cache hit
    assert r.text == "fine now" and not r.cache_hit and len(backend.requests) == 2
    failed, ok = calls()
    assert failed.error and "engine fell over" in failed.error and failed.response is None
    assert ok.error is None and ok.cache_key == failed.cache_key


# --- the cache -----------------------------------------------------------------------


def test_identical_call_is_served_from_cache_without_a_backend_request():
    lm, backend = lm_with(["first", "second"])
    a = lm.chat("same prompt", max_tokens=30)
    b = lm.chat("same prompt", max_tokens=30)
    assert len(backend.requests) == 1
    assert b.cache_hit and b.text == "first" and b.usage == a.usage and b.call_id != a.call_id
    rows = calls()
    assert [r.cache_hit for r in rows] == [False, True]
    assert rows[0].cache_key == rows[1].cache_key
    # Any change in the parameters is another key.
    c = lm.chat("same prompt", max_tokens=31)
    assert not c.cache_hit and len(backend.requests) == 2


def test_cache_off_per_call_and_per_run():
    lm, backend = lm_with(lambda req: f"answer {len(backend.requests)}")
    lm.chat("p")
    assert lm.chat("p", cache=False).text == "answer 2"
    with settings.override(cache=False):
        assert lm.chat("p").text == "answer 3"
        assert get_lm("scripted").cache is False
    assert lm.chat("p").cache_hit  # back on: the newest answer is reused
    assert lm.chat("p").text == "answer 3"
    assert len(backend.requests) == 3


def test_cache_survives_a_new_process_worth_of_objects():
    """A repeated run costs no model calls: a fresh LM over the same store hits."""
    lm1, b1 = lm_with(["from run one"])
    with run_scope("r1"):
        lm1.chat("summarize chunk 1", node="map")
    lm2, b2 = lm_with(["never used"])
    with run_scope("r2"):
        r = lm2.chat("summarize chunk 1", node="map")
    assert r.cache_hit and r.text == "from run one" and b2.requests == []
    assert Tomes().call_tree("r2")["totals"]["cache_hits"] == 1


# --- context overflow ----------------------------------------------------------------


def test_overflow_is_caught_before_the_call_and_says_by_how_much_and_what_to_use():
    lm, backend = lm_with(["never"], context_window=300)
    with run_scope("big"), pytest.raises(ContextOverflowError) as info:
        lm.chat("word " * 400, max_tokens=100)
    err = info.value
    assert backend.requests == []
    assert err.context_window == 300 and err.max_tokens == 100 and err.prompt_tokens >= 400
    assert err.excess == err.prompt_tokens + 100 - 300 > 0
    assert f"{err.excess:,} tokens over the 300-token window" in err.cause
    # Serving knows no strategies; it advises only what it can know.
    assert "longer-context model" in err.fix and "--strategy" not in err.fix
    (row,) = calls()
    assert row.run_id == "big" and row.error.startswith("ContextOverflowError")
    # max_tokens counts too: the same prompt fits with a smaller reply budget...
    lm.chat("word " * 100, max_tokens=100)
    # ...and not with a larger one.
    with pytest.raises(ContextOverflowError):
        lm.chat("word " * 100, max_tokens=250)


def test_overflow_advice_names_only_strategies_that_exist_and_not_the_running_one(monkeypatch):
    import pipelines
    from pipelines import overflow_advice

    monkeypatch.setattr(pipelines, "STRATEGIES", {"mapreduce": "m", "direct": "d", "rag": "r"})
    advice = overflow_advice("rag")
    assert "--strategy mapreduce" in advice and "--strategy rag" not in advice
    assert "--strategy direct" not in advice  # direct reads it whole: no help
    monkeypatch.setattr(pipelines, "STRATEGIES", {"mapreduce": "m"})
    assert "--strategy rag" not in overflow_advice() and "--strategy mapreduce" in overflow_advice()
    assert "--strategy" not in overflow_advice("mapreduce")


def test_chat_overflow_advises_the_strategies_that_exist(monkeypatch):
    from pipelines import STRATEGIES

    lm, _backend = lm_with(["never"], context_window=300)
    import serving

    monkeypatch.setattr(serving, "get_lm", lambda *a, **k: lm)
    with pytest.raises(ContextOverflowError) as info:
        Tomes().chat("word " * 400, max_tokens=100)
    for name in STRATEGIES:  # all that read in pieces; "direct" is one call, it would overflow too
        assert (f"--strategy {name}" in info.value.fix) is (name != "direct"), name
    assert "--strategy rag" not in info.value.fix or "rag" in STRATEGIES


def test_context_overflow_is_a_tomes_error_for_the_cli():
    from app.errors import TomesError

    assert issubclass(ContextOverflowError, TomesError) and issubclass(BackendError, TomesError)


# --- structured output ---------------------------------------------------------------

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}


def test_json_schema_goes_to_backends_that_constrain_decoding():
    lm, backend = lm_with([{"name": "Ada"}])
    r = lm.chat("who?", json_schema=SCHEMA)
    assert backend.requests[0].json_schema == SCHEMA
    assert r.parse_json() == {"name": "Ada"}


def test_json_schema_becomes_an_instruction_for_backends_without_grammar():
    lm, backend = lm_with(['Sure! {"name": "Ada"} hope that helps'], supports_json_schema=False)
    r = lm.chat("who?", system="You are terse.", json_schema=SCHEMA)
    sent = backend.requests[0]
    assert sent.json_schema is None
    assert sent.messages[0]["role"] == "system" and sent.messages[0]["content"].startswith("You are terse.")
    assert '"required": ["name"]' in sent.messages[0]["content"]
    assert r.parse_json() == {"name": "Ada"}  # tolerant of prose around the object


# --- concurrency and the sync wrappers -----------------------------------------------


def test_batch_runs_at_most_capacity_calls_at_once():
    lm, backend = lm_with(lambda req: req.messages[-1]["content"].upper(), capacity=3, latency=0.02)
    out = lm.batch([f"p{i}" for i in range(10)])
    assert [r.text for r in out] == [f"P{i}" for i in range(10)]
    assert backend.max_in_flight == 3


def test_settings_concurrency_caps_below_the_backend():
    with settings.override(concurrency=2):
        lm, backend = lm_with(lambda req: "x", capacity=8, latency=0.02)
        lm.batch([f"p{i}" for i in range(6)])
    assert lm.capacity == 2 and backend.max_in_flight == 2


def test_batch_can_return_exceptions_in_place():
    lm, _ = lm_with(lambda req: ValueError("bad") if "2" in req.messages[-1]["content"] else "ok")
    out = lm.batch(["p1", "p2", "p3"], return_exceptions=True)
    assert out[0].text == "ok" and isinstance(out[1], ValueError) and out[2].text == "ok"


def test_sync_chat_works_inside_a_running_event_loop_and_keeps_the_run():
    lm, _ = lm_with(["inner"])

    async def main():
        with run_scope("nested"):
            return lm.chat("from a notebook")  # sync call while a loop runs

    r = asyncio.run(main())
    assert r.text == "inner" and calls()[0].run_id == "nested"


def test_lm_works_across_separate_event_loops():
    lm, _ = lm_with(["a"], capacity=1)
    assert asyncio.run(lm.achat("1")).text == "a"
    assert asyncio.run(lm.achat("2")).text == "a"  # a fresh loop gets its own semaphore


# --- registry, tokenizers, presets ---------------------------------------------------


def test_registry_imports_nothing_heavy_until_a_backend_is_chosen():
    code = (
        "import sys, serving, serving.lm, serving.registry, serving.tokenizers, serving.presets\n"
        "from serving import get_lm\n"
        "lm = get_lm('scripted')\n"
        "serving.tokenizers.active_tokenizer()\n"
        "heavy = [m for m in ('xllamacpp', 'vllm', 'torch', 'transformers', 'httpx') if m in sys.modules]\n"
        "print('heavy=' + ','.join(heavy))\n"
        "serving.registry.backend_class('openai')\n"
        "print('httpx' in sys.modules, 'xllamacpp' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "TOMES_BACKEND": "scripted"})
    first, second = out.stdout.strip().splitlines()
    assert first == "heavy="
    assert second == "True False"


def test_unknown_backend_names_the_choices():
    with pytest.raises(BackendError, match="choose one of: .*embedded.*openai.*scripted"):
        get_lm("nope")


def test_named_model_backends_are_shared_and_fakes_are_not():
    assert registry.get("scripted") is not registry.get("scripted")
    with settings.override(base_url="http://127.0.0.1:1/v1", model="m"):
        a, b = registry.get("openai"), registry.get("openai")
    with settings.override(base_url="http://127.0.0.1:2/v1", model="m"):
        c = registry.get("openai")
    assert a is b and a is not c


def test_active_tokenizer_follows_the_settings_without_starting_a_model():
    assert isinstance(active_tokenizer(), ApproxTokenizer)  # the tests' scripted backend
    with settings.override(backend="openai", model="some/unknown-model"):
        assert isinstance(active_tokenizer(), ApproxTokenizer)  # nothing local: approximate
    assert isinstance(for_backend("openai", "gpt-oss-20b"), ApproxTokenizer)  # not downloaded here


def test_approx_tokenizer_counts_many_like_count():
    tok = ApproxTokenizer()
    texts = ["Hello, world!", "", "antidisestablishmentarianism rules"]
    assert tok.count_many(texts) == [tok.count(t) for t in texts]
    assert tok.count("antidisestablishmentarianism") > 1


def test_presets_cover_the_required_models():
    by_name = {p.name: p for p in presets.presets()}
    emb = by_name["smollm2-135m"]
    assert emb.backend == "embedded" and emb.context_window == 8192 and not emb.writes_code
    single_gpu_long = [p for p in by_name.values()
                       if p.backend == "openai" and p.gpus == 1 and p.context_window >= 128 * 1024]
    assert {"openai/gpt-oss-20b", "google/gemma-3-27b-it"} <= {p.model for p in single_gpu_long}
    assert {p.model for p in by_name.values() if p.gpus > 1} >= {
        "meta-llama/Llama-4-Scout-17B-16E-Instruct", "deepseek-ai/DeepSeek-V3.2"}
    qwen = [p for p in by_name.values() if p.model == "Qwen/Qwen2.5-7B-Instruct-1M"]
    assert any(p.vllm_max == "0.10" and p.env.get("VLLM_ATTENTION_BACKEND") for p in qwen)
    for p in by_name.values():
        if p.backend == "openai":
            args = engine_kwargs(p.vllm_args)
            assert args["max_model_len"] == p.context_window, p.name
            assert p.tokenizer and p.max_num_seqs >= 1
    assert presets.find("openai/gpt-oss-20b") is by_name["gpt-oss-20b"]
    assert presets.find("nothing/like-this") is None


def test_engine_kwargs_turn_serve_flags_into_llm_arguments():
    kw = engine_kwargs(["--max-model-len", "8192", "--enable-prefix-caching", "--kv-cache-dtype",
                        "fp8", "--limit-mm-per-prompt", '{"image": 0}', "--no-enable-chunked-prefill",
                        "--reasoning-parser", "x"])
    assert kw == {"max_model_len": 8192, "enable_prefix_caching": True, "kv_cache_dtype": "fp8",
                  "limit_mm_per_prompt": {"image": 0}, "enable_chunked_prefill": False}


def test_vllm_local_without_vllm_says_how_to_install():
    with pytest.raises(BackendError) as info:
        registry.create("vllm-local", model="gpt-oss-20b")
    assert "tomes[gpu]" in info.value.fix


# --- the launcher and the CLI --------------------------------------------------------


def test_dry_run_prints_the_exact_vllm_command_without_vllm_installed():
    result = runner.invoke(app, ["serve", "vllm", "--preset", "gpt-oss-20b", "--dry-run", "--port", "8100"])
    assert result.exit_code == 0, result.output
    line = result.stdout.strip()
    assert line.startswith("vllm serve openai/gpt-oss-20b --host 127.0.0.1 --port 8100")
    assert "--max-model-len 131072" in line and "--enable-prefix-caching" in line
    assert "\n" not in line  # one line to paste
    out = runner.invoke(app, ["serve", "vllm", "--preset", "qwen2.5-7b-1m-dca", "--dry-run", "--json",
                              "--", "--served-model-name", "q"])
    info = json.loads(out.stdout)
    assert info["shell"].startswith("VLLM_ATTENTION_BACKEND=DUAL_CHUNK_FLASH_ATTN VLLM_USE_V1=0 vllm serve")
    assert info["command"][-2:] == ["--served-model-name", "q"]
    assert info["base_url"] == "http://127.0.0.1:8000/v1"
    assert info["settings"] == {"TOMES_BACKEND": "openai", "TOMES_BASE_URL": "http://127.0.0.1:8000/v1",
                                "TOMES_MODEL": "Qwen/Qwen2.5-7B-Instruct-1M"}


def test_launcher_refuses_the_embedded_preset_and_unknown_names():
    with pytest.raises(BackendError, match="embedded CPU model"):
        plan("smollm2-135m")
    with pytest.raises(BackendError, match="unknown model preset"):
        plan("gpt-5")


def test_serve_without_vllm_explains_the_gpu_extra(monkeypatch):
    import serving.launcher as launcher

    monkeypatch.setattr(launcher, "vllm_version", lambda: None)
    with pytest.raises(BackendError) as info:
        Tomes().serve("gpt-oss-20b")
    assert "pip install 'tomes[gpu]'" in info.value.fix


def test_cli_chat_json_carries_text_usage_latency_and_call_id():
    result = runner.invoke(app, ["chat", "Hello there", "--json", "--max-tokens", "16"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["text"] == "ok" and out["backend"] == "scripted"
    assert out["usage"]["prompt_tokens"] > 0 and out["usage"]["completion_tokens"] > 0
    assert out["latency_s"] >= 0 and isinstance(out["call_id"], int) and out["cache_hit"] is False
    again = json.loads(runner.invoke(app, ["chat", "Hello there", "--json", "--max-tokens", "16"]).stdout)
    assert again["cache_hit"] is True
    fresh = json.loads(runner.invoke(app, ["chat", "Hello there", "--json", "--max-tokens", "16",
                                           "--no-cache"]).stdout)
    assert fresh["cache_hit"] is False


def test_cli_calls_prints_the_tree_and_json():
    lm, _ = lm_with(["root answer", "child answer"])
    with run_scope("cli-run"):
        root = lm.chat("root question", node="root")
        with parent_scope(root.call_id):
            lm.chat("child question", node="child")
    out = json.loads(runner.invoke(app, ["calls", "cli-run", "--json"]).stdout)
    assert out["calls"][0]["children"][0]["node"] == "child"
    text = runner.invoke(app, ["calls", "cli-run"]).stdout
    assert "root" in text and "child" in text and "root answer" in text
    missing = runner.invoke(app, ["calls", "no-such-run"])
    assert missing.exit_code != 0


def test_cli_models_lists_presets_and_the_active_backend():
    out = json.loads(runner.invoke(app, ["models", "--json"]).stdout)
    assert out["active"]["backend"] == "scripted"
    assert {p["name"] for p in out["presets"]} >= {"smollm2-135m", "gpt-oss-20b", "deepseek-v3.2"}
    assert "embedded" in out["backends"] and "vllm-local" in out["backends"]
    text = runner.invoke(app, ["models"]).stdout
    assert "gpt-oss-20b" in text and "active" in text


def test_request_params_are_what_the_cache_key_sees():
    r = ChatRequest([{"role": "user", "content": "x"}], stop=["\n"])
    assert set(r.params()) == {"max_tokens", "temperature", "stop", "json_schema", "repeat_penalty"}


def test_store_pragmas_make_calls_cheap():
    from app.store import open_store

    with open_store().connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
    with session_scope() as s:
        assert s.scalar(select(func.count(Call.id))) == 0


# --- batching engines (transformers, vllm-local) -------------------------------------


def test_transformers_backend_gathers_concurrent_calls_into_batches(monkeypatch):
    from serving.base import ChatResponse, Usage

    backend = registry.create("transformers", batch_size=3)
    seen: list[list[str]] = []

    def generate(requests):
        seen.append([r.messages[-1]["content"] for r in requests])
        return [ChatResponse(text=r.messages[-1]["content"].upper(), usage=Usage(1, 1)) for r in requests]

    monkeypatch.setattr(backend, "load", lambda: None)
    monkeypatch.setattr(backend, "_generate", generate)
    monkeypatch.setattr(backend, "tokenizer", ApproxTokenizer)  # no GGUF conversion here
    lm = LM(backend, cache=False)
    assert backend.supports_json_schema is False and lm.capacity == 3

    async def main():
        same = [lm.achat(f"p{i}", stop=["\n"]) for i in range(7)]
        other = [lm.achat(f"q{i}", stop=["END"]) for i in range(2)]
        return await asyncio.gather(*same, *other)

    out = asyncio.run(main())
    assert [r.text for r in out] == [f"P{i}" for i in range(7)] + ["Q0", "Q1"]
    assert all(len(b) <= 3 for b in seen)
    # Requests with different stop sequences never share a batch.
    assert all(len({x[0] for x in batch}) == 1 for batch in seen)
    assert sum(len(b) for b in seen) == 9 and len(seen) < 9
    backend.close()


def test_batch_worker_hands_an_engine_failure_to_every_caller_in_the_batch():
    from serving.backends._batching import BatchWorker

    def boom(requests):
        raise RuntimeError("CUDA out of memory")

    worker = BatchWorker(boom, max_batch=4)

    async def main():
        reqs = [ChatRequest([{"role": "user", "content": str(i)}]) for i in range(3)]
        return await asyncio.gather(*(worker.submit(r) for r in reqs), return_exceptions=True)

    out = asyncio.run(main())
    worker.stop()
    assert all(isinstance(e, RuntimeError) for e in out)


def test_sampled_and_empty_replies_are_not_replayed_from_the_cache():
    lm, backend = lm_with(["first", "second", "", "third"])
    lm.chat("tell a story", temperature=0.8)
    again = lm.chat("tell a story", temperature=0.8)
    assert not again.cache_hit and again.text == "second"  # sampled: asked anew
    third = lm.chat("say nothing")                         # empty, asked again
    assert not third.cache_hit and third.text == "third"   # an empty reply is never reused
    assert lm.chat("say nothing").cache_hit                # the real reply is


def test_the_cache_key_includes_the_endpoint():
    lm1, b1 = lm_with(["from server one"])
    b1.base_url = "http://127.0.0.1:8001/v1"
    lm1.chat("hello")
    lm2, b2 = lm_with(["from server two"])
    b2.base_url = "http://127.0.0.1:8002/v1"
    r = lm2.chat("hello")
    assert not r.cache_hit and r.text == "from server two"


def test_cache_keys_are_those_earlier_versions_wrote():
    """The key is pieced around the messages' one encoding (shared with the log row); it
    must stay the hash of the whole list as before, or every cached reply is missed."""
    import hashlib
    import random

    from serving import calllog

    rng = random.Random(3)
    words = ["plain", "naïve café", "\u201cquoted\u201d", "tab\tnew\nline", "日本語", "\\", '"']
    for _ in range(200):
        messages = [{"role": rng.choice(["system", "user", "assistant"]),
                     "content": " ".join(rng.choices(words, k=rng.randint(0, 6)))}
                    for _ in range(rng.randint(1, 4))]
        params = {"max_tokens": rng.randint(1, 999), "temperature": rng.random(),
                  "stop": rng.choice([None, ["\n\n"]]), "json_schema": rng.choice(
                      [None, {"type": "object", "properties": {"b": {}, "a": {}}}])}
        backend, model = rng.choice(["scripted", "openai"]), rng.choice(["m", "Qwen/ü"])
        before = hashlib.sha256(json.dumps([backend, model, messages, params], sort_keys=True,
                                           ensure_ascii=False, separators=(",", ":"))
                                .encode("utf-8")).hexdigest()
        encoded = calllog.encode_messages(messages)
        assert calllog.cache_key(backend, model, messages, params, encoded=encoded) == before
        assert calllog.cache_key(backend, model, messages, params) == before
        assert json.loads(encoded) == messages


def test_call_log_writes_from_many_threads_and_after_the_store_moves(tmp_path):
    """The call log keeps one SQLite connection open per store, shared under a lock: every
    thread's rows land with their own ids, and a new store (dispose_all, another home)
    gets a connection of its own."""
    from concurrent.futures import ThreadPoolExecutor

    from app.store.db import dispose_all
    from serving import calllog

    def write(i: int) -> int:
        return _log_row(i, "threads")

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(write, range(200)))
    assert len(set(ids)) == 200
    assert calllog.lookup("k123").response == "a123"
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(Call).where(Call.run_id == "threads")) == 200
    dispose_all()
    with settings.override(home=tmp_path / "elsewhere"):
        write(1000)
        assert calllog.lookup("k1000").response == "a1000"
        assert calllog.lookup("k123") is None  # a store of its own
    dispose_all()
    assert calllog.lookup("k1000") is None and calllog.lookup("k123").response == "a123"


def _log_row(i: int, run_id: str = "commits") -> int:
    from serving import calllog

    return calllog.record(run_id=run_id, parent_id=None, node="map", backend="scripted",
                          model="m", messages=[{"role": "user", "content": f"q{i}"}],
                          params={}, response=f"a{i}", key=f"k{i}")


def _other_sees(connection, run_id: str, rows: int, within: float = 2.0) -> float:
    """Seconds until another connection counts ``rows`` of ``run_id`` (fails after
    ``within``)."""
    import time

    started = time.monotonic()
    while connection.execute("select count(*) from calls where run_id = ?",
                             (run_id,)).fetchone()[0] < rows:
        assert time.monotonic() - started < within, "the rows were never committed"
        time.sleep(0.001)
    return time.monotonic() - started


def test_call_log_rows_are_seen_at_once_here_and_within_milliseconds_elsewhere():
    """On a loop, rows are committed in groups by a timer: this process's own sessions
    commit them first, other connections see them within milliseconds, and a writer
    elsewhere waits for that commit, not for the next model call."""
    import sqlite3

    async def main() -> sqlite3.Connection:
        _log_row(0)
        other = sqlite3.connect(settings.get_settings().db_path, timeout=5,
                                check_same_thread=False)  # another connection
        with session_scope() as s:  # this process: at once
            assert s.scalar(select(func.count()).select_from(Call)
                            .where(Call.run_id == "commits")) == 1
        _log_row(1)
        assert await asyncio.to_thread(_other_sees, other, "commits", 2) < 0.25
        _log_row(2)

        def update() -> None:
            with other:
                other.execute("update calls set node = 'seen' where run_id = 'commits'")

        await asyncio.wait_for(asyncio.to_thread(update), 2.0)
        return other

    other = asyncio.run(main())
    assert other.execute("select count(*) from calls where node = 'seen'").fetchone()[0] == 3
    other.close()


def test_rows_whose_loop_ended_before_their_commit_are_committed_soon_after():
    """A caller's own asyncio.run may end within the commit delay: the watchdog commits."""
    import sqlite3

    async def one() -> None:
        _log_row(7, "loop-gone")

    asyncio.run(one())
    other = sqlite3.connect(settings.get_settings().db_path, timeout=5)
    assert _other_sees(other, "loop-gone", 1, within=3.0) < 3.0
    other.close()


def test_a_killed_process_keeps_the_call_log_rows_written_before_the_last_milliseconds(tmp_path):
    code = textwrap.dedent("""
        import asyncio, os, signal, sys
        sys.path.insert(0, sys.argv[1])
        from tests.test_serving import _log_row

        async def main():
            for i in range(100):
                _log_row(i, "killed")
                await asyncio.sleep(0)
            await asyncio.sleep(0.2)  # a model call, say
            os.kill(os.getpid(), signal.SIGKILL)  # no atexit, no flush

        asyncio.run(main())
    """)
    proc = subprocess.run([sys.executable, "-c", code, str(ROOT)], env={**os.environ},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(Call).where(Call.run_id == "killed")) == 100


def test_ctrl_c_while_the_server_loads_stops_it_and_its_workers(tmp_path, monkeypatch):
    import os
    import socket
    import time

    import serving.launcher as launcher
    from app.events import Event

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "vllm"  # loads forever, with a worker of its own, like vLLM's engine
    fake.write_text(f"#!/bin/sh\nsleep 600 &\necho $! > {tmp_path}/worker\necho $$ > {tmp_path}/server\nwait\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr(launcher, "vllm_version", lambda: "0.11.0")
    with socket.socket() as s:  # a port nobody answers on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def ctrl_c(event: Event) -> None:
        if (event.message or "").startswith("loading") and (tmp_path / "worker").exists():
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        launcher.start(plan("gpt-oss-20b", port=port), on_event=ctrl_c, poll_s=0.05,
                       log_path=tmp_path / "vllm.log")

    def alive(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    pids = [int((tmp_path / name).read_text()) for name in ("server", "worker")]
    deadline = time.monotonic() + 10
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in pids), "the server or its worker outlived Ctrl-C"


def test_a_call_that_keeps_us_waiting_says_so_where_progress_is_shown(monkeypatch, tmp_path):
    import serving.lm as lm_module
    from app.events import Event
    from serving.lm import events_scope
    from tests.test_mapreduce import FILLER, ingest_story, kind, record

    monkeypatch.setattr(lm_module, "WAIT_NOTICE_S", 0.1)
    lm = LM(ScriptedBackend(["slow answer"], latency=0.45), cache=False)
    events: list[Event] = []
    with events_scope(events.append):
        assert lm.chat("take your time").text == "slow answer"
    waits = [e for e in events if e.stage == "wait"]
    assert len(waits) >= 3 and "waiting for scripted" in waits[0].message
    assert [e.data["seconds"] for e in waits] == sorted(e.data["seconds"] for e in waits)
    lm.backend.replies = ["quiet"]
    assert lm.chat("no one listens").text == "quiet"  # no scope, no events, no error

    # A pipeline's progress callback hears it.
    from pipelines import mapreduce

    doc = ingest_story(tmp_path, FILLER[:2])
    heard: list[Event] = []
    mapreduce.summarize(doc, map_tokens=0, on_event=heard.append, lm=LM(ScriptedBackend(
        lambda r: "A long enough summary of the village." if kind(r) == "reduce" else record("n", 3),
        latency=0.25), cache=False))
    assert any(e.stage == "wait" for e in heard)
