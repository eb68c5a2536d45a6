"""Wave-aware map planning, prompts ordered shared-first, and cached prompt tokens."""

from __future__ import annotations

import json
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from app import settings
from app.api import Tomes
from pipelines import _extractive as X
from pipelines import _mapreduce_prompts as P
from pipelines import _waves as W
from pipelines import mapreduce
from serving.backends.scripted import ScriptedBackend
from serving.base import ChatRequest
from serving.calllog import call_tree, summarize_tree
from serving.lm import LM

# --- the planner's properties ----------------------------------------------------------


def sizes_of(seed: int, n: int, low: int = 20, high: int = 400) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(low, high) for _ in range(n)]


def covers(packs: list[tuple[int, int]], n: int) -> bool:
    return packs[0][0] == 0 and packs[-1][1] == n and all(
        a[1] == b[0] and a[0] < a[1] for a, b in zip(packs, packs[1:]))


def totals(sizes: list[int], packs: list[tuple[int, int]]) -> list[int]:
    return [sum(sizes[a:b]) for a, b in packs]


@pytest.mark.parametrize("seed", range(20))
def test_a_text_that_fits_one_wave_fills_the_slots_in_one_wave(seed: int) -> None:
    sizes = sizes_of(seed, 148)  # ~31k tokens
    limit, capacity = 6000, 8
    fewest = len(W.greedy(sizes, limit))
    assert fewest < capacity  # greedy to the limit leaves slots idle
    packs = W.plan(sizes, limit=limit, capacity=capacity)
    assert covers(packs, len(sizes))
    assert len(packs) == capacity == W.waves(len(packs), capacity) * capacity
    sums = totals(sizes, packs)
    assert max(sums) <= limit
    # even: the longest call is about the text's share of a slot, not a full window
    assert max(sums) - min(sums) <= 2 * max(sizes)
    assert max(sums) < max(totals(sizes, W.greedy(sizes, limit)))


@pytest.mark.parametrize("seed", range(20))
def test_more_than_one_wave_keeps_the_fewest_calls_and_balances_the_last_wave(seed: int) -> None:
    sizes = sizes_of(seed, 148)
    limit, capacity = 3000, 8
    greedy = W.greedy(sizes, limit)
    assert len(greedy) > capacity
    packs = W.plan(sizes, limit=limit, capacity=capacity)
    assert covers(packs, len(sizes))
    assert len(packs) == len(greedy)  # no wave more, no call more
    sums = totals(sizes, packs)
    assert max(sums) <= limit
    # greedy's last pack is a straggler; planned packs are within a chunk or two of
    # each other
    assert max(sums) - min(sums) <= 2 * max(sizes)
    assert min(sums) >= min(totals(sizes, greedy))


def test_packs_never_cross_a_break_nor_go_over_the_limit() -> None:
    sizes = sizes_of(7, 60)
    breaks = [13, 14, 40]
    for limit, capacity in ((500, 4), (2000, 8), (20000, 8), (400, 2)):
        packs = W.plan(sizes, limit=limit, capacity=capacity, breaks=breaks)
        assert covers(packs, len(sizes))
        for a, b in packs:
            assert not any(a < cut < b for cut in breaks), (limit, capacity, a, b)
            assert sum(sizes[a:b]) <= limit or b - a == 1


def test_small_texts_are_not_cut_below_the_minimum_pack() -> None:
    sizes = [100] * 30  # 3,000 tokens
    packs = W.plan(sizes, limit=8000, capacity=8, min_tokens=1000)
    assert len(packs) == 3
    assert W.plan([100] * 4, limit=8000, capacity=8, min_tokens=10) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    # a chunk over the limit stands alone
    assert W.plan([50, 900, 50], limit=500, capacity=1) == [(0, 1), (1, 2), (2, 3)]


# --- map-reduce uses it ----------------------------------------------------------------

PARA = ("The village of Harwick sits between two hills and a slow brown river. Fog lies on "
        "the water most mornings while the farmers bring apples to the market square. ")


def ingest(tmp_path: Path, paras: list[str], name: str = "book.txt", chunk_tokens: int = 200) -> int:
    path = tmp_path / name
    path.write_text("\n\n".join(paras) + "\n", encoding="utf-8")
    with settings.override(chunk_tokens=chunk_tokens):
        report = Tomes().ingest([path], "shelf", embed=False)
    assert not report.failed, report.failed
    return (report.added or report.skipped)[0].document_id


def record(answer: str) -> str:
    return json.dumps({"extracted": answer, "rationale": "r", "answer": answer, "confidence": 4})


def is_map(req: ChatRequest) -> bool:
    return req.messages[0]["content"].startswith((P.SYSTEM_MAP, X.SYSTEM_SELECT)) and \
        "Sentences from the document" not in req.messages[-1]["content"]


def test_map_phase_takes_one_wave_on_the_scripted_backend(tmp_path: Path) -> None:
    # ~12k tokens of text: greedy packing to the 8k window makes 2 map calls, leaving 6 of
    # the 8 slots idle; planned, the text is read by 8 calls at once.
    doc = ingest(tmp_path, [f"Part {i}. " + PARA * 6 for i in range(60)])
    backend = ScriptedBackend(lambda r: record("a part about Harwick") if is_map(r)
                              else "Harwick is a quiet village by a slow river.",
                              capacity=8, latency=0.05)
    with settings.override(grounding="off"):
        result = mapreduce.summarize(doc, lm=LM(backend, cache=False), length="short")
    maps = [r for r in backend.requests if is_map(r)]
    assert len(maps) == 8 == result.details["pieces"]
    assert backend.max_in_flight == 8  # all maps in flight together: one wave
    sizes = [backend.tokenizer().count(r.messages[-1]["content"]) for r in maps]
    assert max(sizes) - min(sizes) < 0.25 * max(sizes)  # evened out, no straggler


def test_per_chunk_option_and_one_call_path_are_unchanged(tmp_path: Path) -> None:
    doc = ingest(tmp_path, [f"Part {i}. " + PARA * 6 for i in range(60)])
    backend = ScriptedBackend(lambda r: record("part") if is_map(r) else "A quiet village by a river.")
    with settings.override(grounding="off"):
        result = mapreduce.summarize(doc, lm=LM(backend, cache=False), map_tokens=0)
    from app.store import Chunk, session_scope

    with session_scope() as s:
        n = s.query(Chunk).filter_by(document_id=doc).count()
    assert sum(is_map(r) for r in backend.requests) == n == result.details["pieces"]
    small = ingest(tmp_path, [PARA * 3], name="short.txt")
    backend.requests.clear()
    with settings.override(grounding="off"):
        result = mapreduce.summarize(small, lm=LM(backend, cache=False))
    assert result.details["direct"] and len(backend.requests) == 1


# --- prompts: shared first -------------------------------------------------------------


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@pytest.mark.parametrize("grounding", ["off", "verify", "select"])
def test_two_questions_over_one_document_share_the_prompt_up_to_the_question(
        tmp_path: Path, grounding: str) -> None:
    doc = ingest(tmp_path, [f"Part {i}. " + PARA * 6 for i in range(60)])

    def reply(r: ChatRequest) -> str:
        if r.messages[0]["content"].startswith(X.SYSTEM_SELECT):
            return json.dumps({"sentences": [1], "label": "Harwick", "answer": "Harwick"})
        return json.dumps({"extracted": "Harwick", "rationale": "r", "answer": "Harwick",
                           "confidence": 4, "quotes": [], "notes": [1]})

    maps: dict[str, list[str]] = {}
    for question in ("Where is the fog?", "Who brings apples to the market square?"):
        backend = ScriptedBackend(reply)
        with settings.override(grounding=grounding):
            mapreduce.ask(doc, question, lm=LM(backend, cache=False))
        maps[question] = [r.messages[0]["content"] + "\n" + r.messages[-1]["content"]
                          for r in backend.requests if is_map(r)]
    first, second = maps.values()
    assert len(first) == len(second) > 1  # the same packs for both questions
    for a, b in zip(first, second):
        shared = _common_prefix(a, b)
        # everything before the question is the same: the piece's whole text
        assert "Question:" in a[shared - 40:shared + 20]
        assert a[:shared].count("Part ") >= 3


# --- cached prompt tokens --------------------------------------------------------------


class _Fake(BaseHTTPRequestHandler):
    """An OpenAI-style server whose usage says how much of the prompt was cached."""

    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802
        body = json.dumps({"data": [{"id": "fake-model", "max_model_len": 8192}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802
        data = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = "\n".join(m["content"] for m in data["messages"])
        # cached: as long as the longest prefix this server has seen (in 100-char blocks)
        cached = max((_common_prefix(prompt, p) for p in self.seen), default=0) // 100 * 25
        self.seen.append(prompt)
        reply = {"id": "x", "object": "chat.completion", "model": "fake-model",
                 "choices": [{"index": 0, "finish_reason": "stop",
                              "message": {"role": "assistant", "content": record("Harwick")}}],
                 "usage": {"prompt_tokens": len(prompt) // 4, "completion_tokens": 20,
                           "prompt_tokens_details": {"cached_tokens": cached}}}
        body = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fake_server():
    _Fake.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Fake)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_cached_tokens_are_logged_and_summed_in_the_run_totals(tmp_path: Path, fake_server: str) -> None:
    from serving import registry

    doc = ingest(tmp_path, [f"Part {i}. " + PARA * 6 for i in range(60)])
    backend = registry.create("openai", base_url=fake_server, model="fake-model")
    lm = LM(backend, cache=False)
    with settings.override(grounding="off"):
        first = mapreduce.ask(doc, "Where is the fog?", lm=lm)
        second = mapreduce.ask(doc, "Who brings apples?", lm=lm)
    # the second question's maps read their pieces from the server's cache
    assert second.cached_tokens > first.cached_tokens
    assert second.cached_tokens > 0.5 * second.prompt_tokens
    totals = summarize_tree(call_tree(second.run_id))
    assert totals["cached_tokens"] == second.cached_tokens > 0
    calls = [c for c in _flat(call_tree(second.run_id)) if not c["step"]]
    assert any(c["cached_tokens"] > 0 for c in calls)
    assert sum(c["cached_tokens"] for c in calls) == second.cached_tokens
    assert Tomes().call_tree(second.run_id)["totals"]["cached_tokens"] == second.cached_tokens
    from typer.testing import CliRunner

    from app.cli import app as cli

    out = CliRunner().invoke(cli, ["calls", second.run_id])
    assert out.exit_code == 0, out.output
    assert f"{second.cached_tokens:,} prompt tokens prefix-cached" in " ".join(out.output.split())


def _flat(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    stack = list(nodes)
    while stack:
        n = stack.pop()
        out.append(n)
        stack.extend(n["children"])
    return out


def test_usage_without_details_reports_no_cached_tokens() -> None:
    from serving.backends._oai import cached_tokens, parse_reply

    reply = {"choices": [{"message": {"content": "hi"}}],
             "usage": {"prompt_tokens": 10, "completion_tokens": 1,
                       "prompt_tokens_details": {"cached_tokens": 8}}}
    assert parse_reply(reply, model="m", latency_s=0).usage.cached_tokens == 8
    assert cached_tokens({"prompt_tokens": 10}) == 0
    assert cached_tokens({"prompt_tokens_details": None}) == 0


def test_the_episodic_operator_packs_by_waves_too(tmp_path: Path) -> None:
    from pipelines import episodic

    doc = ingest(tmp_path, [f"Part {i}. " + PARA * 6 for i in range(60)])
    backend = ScriptedBackend(lambda r: json.dumps({"entities": [], "events": []}), capacity=8,
                              context_window=65536)
    episodic.build(doc, lm=LM(backend, cache=False), pack_tokens=6000)
    reads = [r for r in backend.requests if r.messages[-1]["content"].startswith("Passage")]
    # ~12k tokens: 2 greedy packs of 6,000 would leave 6 slots idle
    assert len(reads) == 8
