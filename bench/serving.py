"""Serving benchmark: what the embedded model costs to start, what concurrency buys on
this machine, xllamacpp against transformers on the same GGUF, and what tomes itself
adds to every call.

    .venv/bin/python bench/serving.py --quick     # smoke run (~3 min)
    .venv/bin/python bench/serving.py             # full run (~20-30 min on 2 cores)

Measures
  1. start: a fresh process's first reply (first run ever: tokenizer converted from
     the GGUF; later runs: tokenizer cached), a second load in a warm process, the
     shared instance; transformers' cold start (full run only).
  2. throughput: a workload of N requests, each a ~1,000-token chunk of a real book
     with a summarizing instruction, served with 1, 2, 4 and 8 requests in flight
     (xllamacpp: that many parallel slots; transformers: padded batches of that size).
     Prompt-processing throughput comes from a run with max_tokens=1 on other chunks of
     the same size; decode throughput from the rest of the full run's time.
  3. overhead: time in tomes outside the engine per call (LM: overflow check, cache key,
     cache lookup, call-log row) with the scripted backend, against calling the
     backend directly.

Prints tables and writes bench/results/serving.json. Timings on a shared 2-core
machine move with the other work on it: every figure carries the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get("TOMES_SHARED_DATA", ROOT.parent / "shared" / "data"))
RESULTS = ROOT / "bench" / "results" / "serving.json"

SYSTEM = "You summarize passages of books faithfully and briefly."
INSTRUCTION = "Summarize this passage in a few sentences:\n\n"


def load() -> float:
    return round(os.getloadavg()[0], 2)


# --- the workload ------------------------------------------------------------------------


def chunks(n: int, tokens: int) -> list[str]:
    """``n`` consecutive passages of about ``tokens`` SmolLM2 tokens each, cut at
    paragraph ends, from the body of real novels (front matter skipped)."""
    from serving.tokenizers import smollm2_tokenizer

    tok = smollm2_tokenizer()
    out: list[str] = []
    for name in ("emma.txt", "pride_and_prejudice.txt", "little_women.txt"):
        text = (DATA / "books" / name).read_text(encoding="utf-8-sig", errors="replace")
        paras = [p.strip() for p in text.replace("\r\n", "\n").split("\n\n") if p.strip()]
        paras = paras[len(paras) // 10:]  # past the licence and front matter
        counts = tok.count_many(paras)
        current: list[str] = []
        size = 0
        for para, count in zip(paras, counts, strict=True):
            if count > tokens:
                continue
            current.append(para)
            size += count
            if size >= tokens:
                out.append("\n\n".join(current))
                current, size = [], 0
                if len(out) == n:
                    return out
    raise SystemExit(f"not enough text in {DATA / 'books'} for {n} chunks")


def messages(chunk: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": INSTRUCTION + chunk}]


# --- 1. start ----------------------------------------------------------------------------

_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import serving
from serving import get_lm
t_import = time.perf_counter() - t0
engine = sys.argv[1]
lm = get_lm(engine)
t1 = time.perf_counter()
lm.count_tokens("warm the tokenizer")
t_tok = time.perf_counter() - t1
t2 = time.perf_counter()
lm.backend.load()
t_load = time.perf_counter() - t2
t3 = time.perf_counter()
r = lm.chat("Say hello.", max_tokens=8, cache=False)
t_reply = time.perf_counter() - t3
print(json.dumps({"import_s": t_import, "tokenizer_s": t_tok, "load_s": t_load,
                  "first_reply_s": t_reply, "total_s": time.perf_counter() - t0,
                  "completion_tokens": r.usage.completion_tokens}))
"""


def child_start(engine: str, home: Path, cache: Path, threads: int | None) -> dict[str, Any]:
    env = {**os.environ, "TOMES_HOME": str(home), "TOMES_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(ROOT)}
    if threads:
        env["TOMES_EMBEDDED_THREADS"] = str(threads)
    before = load()
    out = subprocess.run([sys.executable, "-c", _CHILD, engine], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=900)
    if out.returncode:
        raise SystemExit(f"start benchmark child failed:\n{out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result.update(load_before=before, load_after=load())
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}


def bench_start(tmp: Path, *, transformers: bool, threads: int | None) -> dict[str, Any]:
    from serving import get_lm, registry

    home, cache = tmp / "start-home", tmp / "start-cache"
    out: dict[str, Any] = {}
    print("\n== start ==")
    out["embedded_first_run_ever"] = child_start("embedded", home, cache, threads)
    out["embedded_cold_process"] = child_start("embedded", home, cache, threads)
    t = time.perf_counter()
    backend = registry.create("embedded", threads=threads)
    backend.load()
    first_in_process = time.perf_counter() - t
    t = time.perf_counter()
    again = registry.create("embedded", threads=threads)
    again.load()
    out["embedded_warm_process_load_s"] = round(time.perf_counter() - t, 3)
    out["embedded_first_load_in_this_process_s"] = round(first_in_process, 3)
    backend.close()
    again.close()
    t = time.perf_counter()
    get_lm("embedded")
    get_lm("embedded")  # the shared instance: nothing to load
    out["embedded_shared_instance_s"] = round(time.perf_counter() - t, 4)
    if transformers:
        out["transformers_cold_process"] = child_start("transformers", home, cache, threads)
    for name, r in out.items():
        if isinstance(r, dict):
            print(f"{name:32} total {r['total_s']:7.2f} s = import {r['import_s']:.2f} + tokenizer "
                  f"{r['tokenizer_s']:.2f} + load {r['load_s']:.2f} + first reply {r['first_reply_s']:.2f}"
                  f"   (load avg {r['load_before']})")
        else:
            print(f"{name:32} {r:7.3f} s")
    return out


# --- 2. throughput -----------------------------------------------------------------------


def make_backend(engine: str, concurrency: int, threads: int | None) -> Any:
    from serving import registry

    if engine == "embedded":
        return registry.create("embedded", slots=concurrency, threads=threads)
    return registry.create("transformers", batch_size=concurrency, threads=threads)


async def _run(lm: Any, prompts: list[list[dict[str, str]]], max_tokens: int) -> tuple[float, int, int]:
    t = time.perf_counter()
    out = await lm.abatch(prompts, max_tokens=max_tokens, cache=False, node="bench")
    wall = time.perf_counter() - t
    return wall, sum(r.usage.prompt_tokens for r in out), sum(r.usage.completion_tokens for r in out)


def bench_throughput(engine: str, concurrencies: list[int], texts: list[str], n: int,
                     new_tokens: int, threads: int | None) -> list[dict[str, Any]]:
    from serving import LM

    prefill_set = [messages(c) for c in texts[:n]]
    full_set = [messages(c) for c in texts[n:2 * n]]
    rows = []
    for c in concurrencies:
        backend = make_backend(engine, c, threads)
        t = time.perf_counter()
        backend.load()
        load_s = time.perf_counter() - t
        lm = LM(backend, cache=False)
        asyncio.run(lm.achat("Say hi.", max_tokens=2, cache=False))  # warm-up
        before = load()
        p_wall, p_tokens, _ = asyncio.run(_run(lm, prefill_set, 1))
        f_wall, f_prompt, f_completion = asyncio.run(_run(lm, full_set, new_tokens))
        prompt_tps = p_tokens / p_wall
        decode_s = max(f_wall - f_prompt / prompt_tps, 1e-6)
        row = {
            "engine": engine, "concurrency": c, "requests": n, "new_tokens": new_tokens,
            "load_s": round(load_s, 2), "prefill_wall_s": round(p_wall, 2),
            "prompt_tokens": f_prompt, "completion_tokens": f_completion,
            "wall_s": round(f_wall, 2), "prompt_tps": round(prompt_tps, 1),
            "decode_tps": round(f_completion / decode_s, 1),
            "aggregate_tps": round((f_prompt + f_completion) / f_wall, 1),
            "mean_latency_s": round(f_wall / n * c, 2),
            "threads": getattr(backend, "threads", None),
            "load_before": before, "load_after": load(),
        }
        rows.append(row)
        print(f"{engine:12} c={c:<2} wall {row['wall_s']:7.2f} s  prompt {row['prompt_tps']:7.1f} tok/s  "
              f"decode {row['decode_tps']:6.1f} tok/s  all {row['aggregate_tps']:7.1f} tok/s  "
              f"({f_prompt} prompt + {f_completion} new tokens; load avg {before}->{row['load_after']})",
              flush=True)
        close = getattr(backend, "close", None)
        if close:
            close()
        del lm, backend
    return rows


# --- 3. orchestration overhead -----------------------------------------------------------


def bench_overhead(n: int, chunk: str) -> list[dict[str, Any]]:
    from serving import LM, ChatRequest
    from serving.backends.scripted import ScriptedBackend
    from serving.tokenizers import smollm2_tokenizer

    rows = []
    cases = [
        ("short prompt, approx tokenizer", "Question {i}: what happens next?", None),
        ("1k-token chunk, approx tokenizer", chunk + "\n\n[{i}]", None),
        ("1k-token chunk, SmolLM2 tokenizer", chunk + "\n\n[{i}]", smollm2_tokenizer()),
    ]

    async def bare(backend: ScriptedBackend, prompts: list[str]) -> float:
        t = time.perf_counter()
        for p in prompts:
            await backend.achat(ChatRequest([{"role": "user", "content": p}], max_tokens=64))
        return time.perf_counter() - t

    async def through_lm(lm: LM, prompts: list[str], cache: bool) -> float:
        t = time.perf_counter()
        for p in prompts:
            await lm.achat(p, max_tokens=64, cache=cache, node="bench")
        return time.perf_counter() - t

    for label, template, tokenizer in cases:
        backend = ScriptedBackend(["a short reply from the model"], tokenizer=tokenizer)
        lm = LM(backend)
        warm = [template.format(i=f"warm{i}") for i in range(20)]
        asyncio.run(through_lm(lm, warm, True))
        asyncio.run(bare(backend, warm))
        fresh = [template.format(i=i) for i in range(n)]
        t_bare = statistics.median(asyncio.run(bare(backend, fresh)) for _ in range(3))
        t_nocache = asyncio.run(through_lm(lm, [p + " nc" for p in fresh], False))
        t_miss = asyncio.run(through_lm(lm, fresh, True))
        t_hit = asyncio.run(through_lm(lm, fresh, True))
        row = {
            "case": label, "calls": n,
            "bare_backend_ms": round(t_bare / n * 1000, 4),
            "overhead_cache_off_ms": round((t_nocache - t_bare) / n * 1000, 3),
            "overhead_cache_miss_ms": round((t_miss - t_bare) / n * 1000, 3),
            "cache_hit_total_ms": round(t_hit / n * 1000, 3),
            "load": load(),
        }
        rows.append(row)
        print(f"{label:36} cache off {row['overhead_cache_off_ms']:.3f} ms  miss {row['overhead_cache_miss_ms']:.3f} ms"
              f"  hit {row['cache_hit_total_ms']:.3f} ms per call  (load avg {row['load']})", flush=True)
    return rows


# --- main --------------------------------------------------------------------------------


def recommend(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The smallest concurrency within 10% of the best aggregate throughput."""
    best = max(r["aggregate_tps"] for r in rows)
    pick = min((r for r in rows if r["aggregate_tps"] >= 0.9 * best), key=lambda r: r["concurrency"])
    return {"concurrency": pick["concurrency"], "aggregate_tps": pick["aggregate_tps"], "best_tps": best,
            "rule": "smallest concurrency within 10% of the best aggregate throughput"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer requests and tokens")
    parser.add_argument("--threads", type=int, default=None, help="engine threads (default: physical cores)")
    parser.add_argument("--no-transformers", action="store_true", help="skip the transformers backend")
    parser.add_argument("--skip-start", action="store_true", help="skip the start-up measurements")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="tomes-bench-serving-"))
    os.environ["TOMES_HOME"] = str(tmp / "home")
    os.environ.setdefault("TOMES_CACHE_DIR", str(tmp / "cache"))
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TOMES_BACKEND"] = "embedded"

    if args.quick:
        conc, n, chunk_tokens, new_tokens = [1, 2, 4], 4, 1000, 32
        t_conc, t_n, t_new = [1, 4], 4, 16
        overhead_calls = 300
    else:
        conc, n, chunk_tokens, new_tokens = [1, 2, 4, 8], 8, 1000, 128
        t_conc, t_n, t_new = [1, 4], 4, 32
        overhead_calls = 2000

    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "load_at_start": load(), "python": sys.version.split()[0]},
        "mode": "quick" if args.quick else "full",
    }
    texts = chunks(2 * n, chunk_tokens)

    if not args.skip_start:
        results["start"] = bench_start(tmp, transformers=not args.quick and not args.no_transformers,
                                       threads=args.threads)

    print(f"\n== throughput: {n} requests of ~{chunk_tokens} prompt tokens, {new_tokens} new tokens each ==")
    emb = bench_throughput("embedded", conc, texts, n, new_tokens, args.threads)
    results["throughput"] = {"embedded": emb, "embedded_recommended": recommend(emb)}
    if not args.no_transformers:
        print(f"transformers, bounded (it is ~10x slower): {t_n} requests, {t_new} new tokens, "
              f"concurrency {t_conc} -- not the same workload size as above; compare tokens/s")
        tr = bench_throughput("transformers", t_conc, texts, t_n, t_new, args.threads)
        results["throughput"]["transformers"] = tr
        results["throughput"]["transformers_note"] = (
            f"bounded: {t_n} requests x {t_new} new tokens at concurrency {t_conc}")

    print(f"\n== orchestration overhead (scripted backend, {overhead_calls} sequential calls) ==")
    results["overhead"] = bench_overhead(overhead_calls, texts[0])

    rec = results["throughput"]["embedded_recommended"]
    print(f"\nembedded: smallest concurrency within 10% of the best aggregate throughput: "
          f"{rec['concurrency']} ({rec['aggregate_tps']} vs best {rec['best_tps']} tok/s)")
    results["machine"]["load_at_end"] = load()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
