"""tomes' recursive controller side by side with the official RLM implementation.

The same scripted trajectories (the same root-model replies, differing only in how each
system is told the final answer: tomes' ``FINAL(x)``, rlms' ``answer["ready"] = True``)
run through tomes (code mode: the REPL in a separate, locked-down process) and through
``rlms`` 0.1.3 (``pip install rlms``; its ``local`` environment, an ``exec`` in the rlms
process itself) against the same latency-scripted model: one script object decides every
reply, sleeps the same latency and admits as many calls at once (the capacity).

Measured:
  - per-iteration overhead without model time: runs of 1 and 21 iterations,
    (T21 - T1) / 20, so start-up cancels out, less the model's time: its latency as
    slept (an event loop's timers overshoot more than time.sleep's) and its own time
    deciding each reply (it counts the prompt's tokens, and tomes' prompts are longer);
    in wall time and in CPU time
    (this process and its waited-for children: tomes' sandbox, rlms' threads), the
    second being steadier on a shared machine;
    rlms also with its own logger on (a JSONL line per iteration; off by default), and
    how much of tomes' time is its call log (a durable SQLite row per model call);
  - sandbox start-up: tomes' ``Sandbox`` with the book as ``context`` until its first
    block has run, against rlms' ``LocalREPL`` with the same context; the round trip of
    an empty block;
  - 64 batched sub-calls of latency L at capacity 8 (goal: under 64·L/4; the floor is
    64·L/8), timed inside the REPL by the model's own code;
  - a planted fact in a whole book, a scripted root that greps then reads: calls and
    tokens of recursive (code and actions mode) against map-reduce, all in tomes, plus
    rlms on the same trajectory.

    .venv/bin/python bench/recursive_peers.py            # ~2-3 minutes
    .venv/bin/python bench/recursive_peers.py --quick    # fewer repeats
Writes bench/results/recursive_peers.json. Needs the bench extra: pip install -e '.[peers]'.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import random
import re
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["TOMES_HOME"] = tempfile.mkdtemp(prefix="tomes-bench-rlm-")
os.environ.setdefault("TOMES_EMBEDDER", "hash")

from bench.needles import NEEDLES, plant  # noqa: E402
from serving.base import ApproxTokenizer  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
BOOK = DATA / "books" / "pride_and_prejudice.txt"
RESULTS = ROOT / "bench" / "results" / "recursive_peers.json"
CAPACITY = 8
TOKENS = ApproxTokenizer()


# --- one scripted model for both systems -------------------------------------------------


class Script:
    """Decides every reply from the prompt: root prompts are message lists whose
    assistant turns count the iterations so far; anything else is a sub-call."""

    def __init__(self, root: list[str], sub: Any = None, latency_root: float = 0.0,
                 latency_sub: float = 0.0, capacity: int = CAPACITY) -> None:
        self.root, self.sub = root, sub or (lambda prompt: "ok")
        self.latency_root, self.latency_sub = latency_root, latency_sub
        self.gate = threading.BoundedSemaphore(capacity)
        self.capacity = capacity
        self.calls = self.prompt_tokens = self.completion_tokens = 0
        # Time spent deciding replies (counting prompt tokens grows with the history):
        # model time, taken out of both systems' overhead.
        self.model_s = self.model_cpu_s = 0.0
        # The latency as slept (an event loop's timers overshoot more than time.sleep):
        # one call at a time in the overhead runs, so the sum is the time spent waiting.
        self.slept_s = 0.0
        self.lock = threading.Lock()
        self._async_gates: dict[int, asyncio.Semaphore] = {}

    def is_root(self, prompt: Any) -> bool:
        return isinstance(prompt, list) and any(m.get("role") == "system" for m in prompt) \
            and "REPL" in str(prompt[0].get("content", ""))

    def reply(self, prompt: Any) -> tuple[str, float, int]:
        """(reply, latency, prompt tokens): both systems' adapters count through here."""
        started, cpu = time.perf_counter(), time.thread_time()
        try:
            return self._reply(prompt)
        finally:
            with self.lock:
                self.model_s += time.perf_counter() - started
                self.model_cpu_s += time.thread_time() - cpu

    def _reply(self, prompt: Any) -> tuple[str, float, int]:
        if self.is_root(prompt):
            step = sum(1 for m in prompt if m.get("role") == "assistant")
            text, latency = self.root[min(step, len(self.root) - 1)], self.latency_root
        else:
            last = prompt[-1]["content"] if isinstance(prompt, list) else str(prompt)
            text, latency = self.sub(last), self.latency_sub
        flat = "\n".join(m["content"] for m in prompt) if isinstance(prompt, list) else str(prompt)
        tokens = TOKENS.count(flat)
        with self.lock:
            self.calls += 1
            self.prompt_tokens += tokens
            self.completion_tokens += TOKENS.count(text)
        return text, latency, tokens

    def sleep(self, latency: float) -> None:
        started = time.perf_counter()
        time.sleep(latency)
        self._slept_since(started)

    async def sleep_async(self, latency: float) -> None:
        started = time.perf_counter()
        await asyncio.sleep(latency)
        self._slept_since(started)

    def _slept_since(self, started: float) -> None:
        with self.lock:
            self.slept_s += time.perf_counter() - started

    def gate_async(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        key = id(loop)
        if key not in self._async_gates:
            self._async_gates[key] = asyncio.Semaphore(self.capacity)
        return self._async_gates[key]


def tomes_backend(script: Script) -> Any:
    from serving.backends.scripted import ScriptedBackend
    from serving.base import ChatRequest, ChatResponse, Usage

    class Scripted(ScriptedBackend):
        async def achat(self, request: ChatRequest) -> ChatResponse:
            started = time.perf_counter()
            text, latency, tokens = script.reply(request.messages)
            if latency:
                async with script.gate_async():
                    await script.sleep_async(latency)
            return ChatResponse(text=text, usage=Usage(tokens, TOKENS.count(text)),
                                latency_s=time.perf_counter() - started,
                model="scripted", finish_reason="stop")

    return Scripted(capacity=script.capacity, context_window=32768)


def rlms_client(script: Script) -> Any:
    from rlm.clients.base_lm import BaseLM
    from rlm.core.types import ModelUsageSummary, UsageSummary

    class Client(BaseLM):
        def __init__(self) -> None:
            super().__init__(model_name="scripted")

        def completion(self, prompt: Any) -> str:
            text, latency, _ = script.reply(prompt)
            if latency:
                with script.gate:
                    script.sleep(latency)
            return text

        async def acompletion(self, prompt: Any) -> str:
            text, latency, _ = script.reply(prompt)
            if latency:
                async with script.gate_async():
                    await script.sleep_async(latency)
            return text

        def _usage(self) -> ModelUsageSummary:
            return ModelUsageSummary(script.calls, script.prompt_tokens, script.completion_tokens)

        def get_usage_summary(self) -> UsageSummary:
            return UsageSummary(model_usage_summaries={"scripted": self._usage()})

        def get_last_usage(self) -> ModelUsageSummary:
            return self._usage()

    return Client()


# --- running one trajectory through each ---------------------------------------------------


def run_tomes(doc: int, script: Script, iterations: int, mode: str = "code") -> tuple[float, Any]:
    from pipelines import recursive
    from serving.lm import LM

    lm = LM(tomes_backend(script), cache=False)
    started = time.perf_counter()
    result = recursive.ask(doc, "What does the text say?", lm=lm, mode=mode,
                           max_iterations=iterations + 1)
    return time.perf_counter() - started, result


_stopped: list[float] = []


_LOGS = tempfile.mkdtemp(prefix="rlms-logs-")  # ~33 MB a 21-iteration run: removed at exit
atexit.register(shutil.rmtree, _LOGS, True)


def run_rlms(context: str, script: Script, iterations: int, logged: bool = False) -> tuple[float, Any]:
    """Timed up to the moment rlms stops its LM server: ``socketserver``'s shutdown then
    waits for a poll of up to 0.5 s, a fixed cost that is not rlms' work. ``logged``:
    with rlms' own logger writing every iteration to a JSONL file (off by default in
    rlms; tomes always keeps its call log)."""
    import rlm.core.lm_handler as handler
    import rlm.core.rlm as core

    core.get_client = lambda backend, kwargs: rlms_client(script)  # the scripted model
    if not getattr(handler.LMHandler.stop, "timed", False):
        original = handler.LMHandler.stop

        def stop(self: Any) -> None:
            _stopped.append(time.perf_counter())
            original(self)

        stop.timed = True  # type: ignore[attr-defined]
        handler.LMHandler.stop = stop
    from rlm.logger import RLMLogger

    rlm = core.RLM(backend="openai", backend_kwargs={"model_name": "scripted"},
                   environment="local", max_iterations=iterations + 1, max_depth=1,
                   logger=RLMLogger(log_dir=_LOGS) if logged else None)
    started = time.perf_counter()
    result = rlm.completion(context, root_prompt="What does the text say?")
    return _stopped[-1] - started, result


def tomes_final(value: str) -> str:
    return f"```repl\nFINAL({value})\n```"


def rlms_final(value: str) -> str:
    return f'```repl\nanswer["content"] = str({value})\nanswer["ready"] = True\n```'


STEPS = {
    "trivial": "```repl\nx = len(context)\nprint(x)\n```",
    "one_sub_call": "```repl\nx = llm_query('part')\nprint(len(context), x)\n```",
}


class _CallLogClock:
    """Time tomes spends writing its call log (a durable row per model call), to show
    how much of its per-iteration overhead that is."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.installed = False

    def install(self) -> None:
        from serving import calllog

        if self.installed:
            return
        original = calllog.record

        def record(**values: Any) -> int:
            started = time.perf_counter()
            try:
                return original(**values)
            finally:
                self.seconds += time.perf_counter() - started

        calllog.record = record
        self.installed = True


CALL_LOG = _CallLogClock()


def _cpu() -> float:
    own, waited = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + waited.ru_utime + waited.ru_stime


def overhead(doc: int, context: str, repeats: int, kind: str, latency: float) -> dict[str, Any]:
    """Per-iteration wall time beyond the model's: runs of 1 and 21 iterations, so the
    one-off costs (imports, start-up) cancel; the fastest of ``repeats`` (the machine is
    shared: the minimum is the least disturbed)."""
    step = STEPS[kind]
    names = ("tomes", "rlms", "rlms_logged")
    samples: dict[str, dict[int, list[float]]] = {name: {} for name in names}
    cpu: dict[str, dict[int, list[float]]] = {name: {} for name in names}

    def run(name: str, script: Script, n: int) -> tuple[float, Any]:
        if name == "tomes":
            return run_tomes(doc, script, n)
        return run_rlms(context, script, n, logged=name == "rlms_logged")

    CALL_LOG.install()
    log_s: dict[int, list[float]] = {}
    for name in names:  # warm-up: imports and first-use caches
        final = (tomes_final if name == "tomes" else rlms_final)("len(context)")
        run(name, Script([step, final]), 2)
    for _ in range(repeats):
        for name in names:  # interleaved: all see the same machine load
            final = (tomes_final if name == "tomes" else rlms_final)("len(context)")
            for n in (1, 21):
                script = Script([step] * (n - 1) + [final], latency_root=latency,
                                latency_sub=latency)
                used, logged = _cpu(), CALL_LOG.seconds
                seconds, result = run(name, script, n)
                if name == "tomes":
                    log_s.setdefault(n, []).append(CALL_LOG.seconds - logged)
                used = _cpu() - used - script.model_cpu_s
                seconds -= script.model_s + script.slept_s
                answer = result.answer if name == "tomes" else result.response
                assert str(answer) == str(len(context)), (name, answer)
                samples[name].setdefault(n, []).append(seconds)
                cpu[name].setdefault(n, []).append(used)
    out: dict[str, Any] = {"latency_s": latency, "step": step}
    for name, runs in samples.items():
        t1, t21 = min(runs[1]), min(runs[21])
        c1, c21 = min(cpu[name][1]), min(cpu[name][21])
        out[name] = {"per_iteration_ms": round(1000 * (t21 - t1) / 20, 2),
                     "per_iteration_cpu_ms": round(1000 * (c21 - c1) / 20, 2),
                     "run_1_iteration_s": round(t1, 3), "run_21_iterations_s": round(t21, 3)}
    out["ratio_tomes_to_rlms"] = round(out["tomes"]["per_iteration_ms"]
                                       / max(out["rlms"]["per_iteration_ms"], 1e-3), 2)
    out["cpu_ratio_tomes_to_rlms"] = round(out["tomes"]["per_iteration_cpu_ms"]
                                           / max(out["rlms"]["per_iteration_cpu_ms"], 1e-3), 2)
    out["tomes"]["call_log_ms_per_iteration"] = round(
        1000 * (statistics.mean(log_s[21]) - statistics.mean(log_s[1])) / 20, 2)
    out["ratio_tomes_to_rlms_logged"] = round(out["tomes"]["per_iteration_ms"]
                                              / max(out["rlms_logged"]["per_iteration_ms"], 1e-3), 2)
    return out


def startup(context: str, repeats: int) -> dict[str, Any]:
    from pipelines._sandbox import Sandbox
    from rlm.environments.local_repl import LocalREPL

    def timed(make: Any) -> float:
        samples = []
        for _ in range(repeats):
            started = time.perf_counter()
            env = make()
            samples.append(time.perf_counter() - started)
            (env.close if hasattr(env, "close") else env.cleanup)()
        return round(1000 * statistics.median(samples), 1)

    def tomes_sandbox(text: str) -> Any:
        box = Sandbox({"llm_query": lambda p: p}, variables={"context": text})
        box.run("pass")
        return box

    box = tomes_sandbox("")
    trips = []
    for _ in range(20 * repeats):
        started = time.perf_counter()
        box.run("pass")
        trips.append(time.perf_counter() - started)
    box.close()
    return {
        "tomes_sandbox_round_trip_ms": round(1000 * statistics.median(trips), 3),
        "tomes_sandbox_book_ms": timed(lambda: tomes_sandbox(context)),
        "tomes_sandbox_empty_ms": timed(lambda: tomes_sandbox("")),
        "rlms_local_repl_book_ms": timed(lambda: LocalREPL(context_payload=context)),
        "rlms_local_repl_empty_ms": timed(lambda: LocalREPL(context_payload="")),
        "context_chars": len(context),
        "note": "tomes: a new locked-down process until its first block ran; rlms: an exec "
                "namespace in its own process (the book written to a temp file and read back). "
                "Round trip: one empty block sent to tomes' sandbox and its result back",
    }


BATCH = ("```repl\nimport time\nt0 = time.time()\n"
         "r = llm_query_batched([f'question {i}' for i in range(64)])\n"
         "elapsed = round(time.time() - t0, 3)\nprint(elapsed, len(r))\n```")


def batched(doc: int, context: str, latency: float) -> dict[str, Any]:
    out: dict[str, Any] = {"latency_s": latency, "capacity": CAPACITY,
                           "goal_s": round(64 * latency / 4, 3), "floor_s": round(64 * latency / 8, 3)}
    script = Script([BATCH, tomes_final("elapsed")], latency_sub=latency)
    _, result = run_tomes(doc, script, 2)
    out["tomes_s"] = float(result.answer)
    script = Script([BATCH, rlms_final("elapsed")], latency_sub=latency)
    _, result = run_rlms(context, script, 2)
    out["rlms_s"] = float(result.response)
    out["tomes_vs_goal"] = round(out["tomes_s"] / out["goal_s"], 2)
    out["rlms_vs_goal"] = round(out["rlms_s"] / out["goal_s"], 2)
    return out


def planted(book: str) -> dict[str, Any]:
    from app.api import Tomes
    from pipelines import mapreduce, recursive
    from serving.backends.scripted import ScriptedBackend
    from serving.lm import LM

    needle, question = NEEDLES[0]
    text = plant(book, [needle], random.Random(7))
    path = Path(tempfile.mkdtemp()) / "planted.txt"
    path.write_text(text, encoding="utf-8")
    doc = Tomes().ingest([path], "planted", embed=False).added[0].document_id
    n_chunks = len(Tomes().spans(doc))

    def sub(prompt: str) -> str:
        found = "brass telescopes" in prompt  # the needle, not the question's words
        return json.dumps({"answer": "forty-two" if found else "NONE"}) if prompt.lstrip().startswith(
            "Passage") else ("forty-two" if found else "NONE")

    code = ["```repl\nhits = grep('telescopes')\nprint(hits[:2])\n```",
            "```repl\nc = [c for c in chunks if c['id'] == hits[0]['chunk_id']][0]\n"
            f"ans = llm_query('Question: {question} Passage: ' + c['text'])\nprint(ans)\n```"]
    out: dict[str, Any] = {"book": BOOK.name, "chars": len(text), "chunks": n_chunks,
                           "needle": needle}

    def record(name: str, result: Any) -> None:
        out[name] = {"answer": result.answer, "calls": result.calls,
                     "tokens": result.prompt_tokens + result.completion_tokens,
                     "found": "forty-two" in result.answer.lower(),
                     "cites_needle": any("telescopes" in p.quote for p in result.provenance)}

    script = Script(code + [tomes_final("ans")], sub=sub)
    record("recursive_code", recursive.ask(doc, question, lm=LM(tomes_backend(script), cache=False),
                                           mode="code"))

    def actions(req: Any) -> str:
        system, user = req.messages[0]["content"], req.messages[-1]["content"]
        if system.startswith("You answer a question about a long text that you cannot see"):
            step = len(re.findall(r"^\d+\. ", user, re.M)) + 1
            return [json.dumps({"action": "grep", "text": "telescopes", "chunks": []}),
                    json.dumps({"action": "map", "text": question, "chunks": []}),
                    json.dumps({"action": "answer", "text": "", "chunks": []})][min(step, 3) - 1]
        if system.startswith("You read one passage"):
            return sub(user)
        return json.dumps({"answer": "Forty-two brass telescopes."})

    record("recursive_actions", recursive.ask(
        doc, question, lm=LM(ScriptedBackend(actions, context_window=32768), cache=False),
        mode="actions"))

    from pipelines import _mapreduce_prompts as MP

    def mapped(req: Any) -> str:
        system, user = req.messages[0]["content"], req.messages[-1]["content"]
        if system.startswith(MP.SYSTEM_MAP):
            found = "brass telescopes" in user
            return json.dumps({"extracted": "42 brass telescopes" if found else "NO INFORMATION",
                               "rationale": "stated" if found else "",
                               "answer": "forty-two" if found else "NO INFORMATION",
                               "confidence": 5 if found else 1,
                               "quotes": [needle] if found else []})
        # collapse and reduce: one reply that parses as either
        return json.dumps({"extracted": "42 brass telescopes", "rationale": "note 1",
                           "answer": "forty-two", "confidence": 5, "notes": [1],
                           "quotes": [needle]})

    record("mapreduce", mapreduce.ask(doc, question, lm=LM(ScriptedBackend(
        mapped, context_window=32768), cache=False)))

    # rlms' REPL has no grep or chunks: the same two steps in plain Python over `context`.
    peer = ["```repl\nimport re\nhits = [m.start() for m in re.finditer('telescopes', context)]\n"
            "print(hits[:2])\n```",
            "```repl\npassage = context[max(0, hits[0] - 1000):hits[0] + 1000]\n"
            f"ans = llm_query('Question: {question} Passage: ' + passage)\nprint(ans)\n```"]
    script = Script(peer + [rlms_final("ans")], sub=sub)
    seconds, result = run_rlms(text, script, 3)
    out["rlms"] = {"answer": str(result.response), "calls": script.calls,
                   "tokens": script.prompt_tokens + script.completion_tokens,
                   "found": "forty-two" in str(result.response).lower()}
    out["tokens_mapreduce_to_recursive_code"] = round(
        out["mapreduce"]["tokens"] / out["recursive_code"]["tokens"], 1)
    out["calls_mapreduce_to_recursive_code"] = round(
        out["mapreduce"]["calls"] / out["recursive_code"]["calls"], 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--latency", type=float, default=0.1, help="sub-call latency L (s)")
    args = parser.parse_args()
    repeats = 2 if args.quick else 12  # the machine is shared: the fastest of many

    from app.api import Tomes

    book = BOOK.read_text(encoding="utf-8")
    doc = Tomes().ingest([BOOK], "book", embed=False).added[0].document_id
    context = Tomes().text(doc)  # what tomes' REPL holds as `context`, given to rlms too

    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count()}, "rlms_version": _rlms_version()}
    results["overhead"] = {}
    for kind, latency in (("trivial", 0.0), ("one_sub_call", 0.0), ("one_sub_call", 0.05)):
        label = f"{kind}_L{latency:g}"
        print(f"per-iteration overhead, {label} ...", flush=True)
        results["overhead"][label] = overhead(doc, context, repeats, kind, latency)
        print(json.dumps(results["overhead"][label], indent=1), flush=True)
    print("sandbox start-up ...", flush=True)
    results["startup"] = startup(context, repeats)
    print(json.dumps(results["startup"], indent=1), flush=True)
    print(f"64 batched sub-calls, L={args.latency}s, capacity {CAPACITY} ...", flush=True)
    results["batched_64"] = batched(doc, context, args.latency)
    print(json.dumps(results["batched_64"], indent=1), flush=True)
    print("planted fact in a whole book: recursive vs map-reduce ...", flush=True)
    results["planted_fact"] = planted(book)
    print(json.dumps(results["planted_fact"], indent=1), flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


def _rlms_version() -> str:
    from importlib.metadata import version

    return version("rlms")


if __name__ == "__main__":
    main()
