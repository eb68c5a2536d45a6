"""tomes map-reduce side by side with what users would pick instead.

Same document, same chunks, same backend for every system:
  - tomes          pipelines.mapreduce as it runs by default: structured map records,
                   consecutive chunks packed up to what the window leaves, and a text that
                   fits one call answered by one call
  - tomes-chunks   the same with --map-tokens 0: one map call per chunk
  - tomes-greedy   tomes with the planner before issue #16: chunks packed greedily to
                   the window, whatever the backend's slots (the last wave a straggler)
  - langgraph      the LangChain/LangGraph "summarize text through parallelization"
                   recipe: map with Send, collapse by token_max (1000, as in the recipe)
                   with split_list_of_docs/acollapse_docs, generate_final_summary
  - llamaindex     LlamaIndex TreeSummarize (aget_response: async, repacked to the window)

Each peer reaches the model through its own custom-model interface (a LangChain
BaseChatModel, a LlamaIndex CustomLLM) wrapping the same serving ``LM``, so every system
makes identical kinds of calls; calls and tokens are counted on the backend side.

Backends: the scripted fake with a fixed per-call latency (isolates orchestration: wall
time is then the critical path of calls), the same fake with a latency that grows with
the prompt (``--prefill-latency`` seconds per 4,096 prompt tokens: a GPU server's prefill,
where an evened-out wave of shorter calls ends sooner) and the embedded SmolLM2-135M (bounded to the
first N chunks of one book, since the CPU is shared). A second tomes run of the same job
shows the response cache: zero model calls.

    .venv/bin/python bench/mapreduce_peers.py --quick        # scripted only, small text
    .venv/bin/python bench/mapreduce_peers.py                # scripted + embedded
Writes bench/results/mapreduce_peers.json.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import re
import operator
import os
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypedDict

from langchain_core.documents import Document
from langgraph.types import Send

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from serving.base import Backend, ChatRequest, ChatResponse  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
DEFAULT_DOC = DATA / "books" / "the_great_gatsby.txt"
PEER_MAX_TOKENS = 256  # the same cap as a tomes map record
TOKEN_MAX = 1000  # the LangGraph recipe's collapse threshold


# --- counting on the backend side ------------------------------------------------------


class Counting(Backend):
    """Wraps the real backend and counts what actually reaches it."""

    name = "bench"

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.model = inner.model
        self.context_window = inner.context_window
        self.capacity = inner.capacity
        self.supports_json_schema = inner.supports_json_schema  # type: ignore[misc]
        self.reset()

    def reset(self) -> None:
        self.calls = self.prompt_tokens = self.completion_tokens = 0
        self.in_flight = self.peak_in_flight = 0

    async def achat(self, request: ChatRequest) -> ChatResponse:
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            response = await self.inner.achat(request)
        finally:
            self.in_flight -= 1
        self.calls += 1
        self.prompt_tokens += response.usage.prompt_tokens
        self.completion_tokens += response.usage.completion_tokens
        return response

    def tokenizer(self):  # noqa: ANN201
        return self.inner.tokenizer()

    def prompt_overhead(self, messages: list[dict[str, str]]) -> int:
        return self.inner.prompt_overhead(messages)

    async def acount_prompt(self, messages: list[dict[str, str]]) -> int | None:
        return await self.inner.acount_prompt(messages)


class Prefill(Backend):
    """The scripted fake, slower the longer the prompt: ``per_4k`` seconds per 4,096
    prompt tokens (a server's prefill), calls overlapping up to the capacity."""

    name = "scripted-prefill"

    def __init__(self, inner: Backend, per_4k: float) -> None:
        self.inner = inner
        self.per_4k = per_4k
        self.model = inner.model
        self.context_window = inner.context_window
        self.capacity = inner.capacity
        self.supports_json_schema = inner.supports_json_schema  # type: ignore[misc]

    async def achat(self, request: ChatRequest) -> ChatResponse:
        response = await self.inner.achat(request)
        await asyncio.sleep(self.per_4k * response.usage.prompt_tokens / 4096)
        return response

    def tokenizer(self):  # noqa: ANN201
        return self.inner.tokenizer()

    def prompt_overhead(self, messages: list[dict[str, str]]) -> int:
        return self.inner.prompt_overhead(messages)


_SENTENCE = re.compile(r"[A-Z][^.!?\n\"]{40,200}[.!?]")


def scripted_reply(request: ChatRequest) -> str:
    """Plausible replies of similar length for every system: JSON records where tomes
    asks for one, prose summaries otherwise."""
    from pipelines import _mapreduce_prompts as P

    system = request.messages[0]["content"] if request.messages[0]["role"] == "system" else ""
    if request.json_schema is not None or system.startswith((P.SYSTEM_MAP, P.SYSTEM_MERGE)):
        # A map record quotes its own text, as a faithful model's would: tomes checks the
        # records against the text (grounding) and drops those that are not in it, which
        # would skip the reduce call and time a run that every other system does not make.
        user = request.messages[-1]["content"]
        text = user.split('"""')[1] if user.count('"""') >= 2 else user
        found = _SENTENCE.search(text)
        sentence = found.group() if found else "The narrator recalls his summer next door to Gatsby."
        return json.dumps({
            "extracted": sentence, "rationale": "It is what this part tells.",
            "answer": sentence, "confidence": 4, "quotes": [sentence],
        })
    return ("The author proposes, in a satirical tone, that the children of the poor be sold "
            "as food to the rich, and lists the supposed benefits with mock figures.")


# --- the systems -----------------------------------------------------------------------


class OverallState(TypedDict):  # the LangGraph recipe's state
    contents: list[str]
    summaries: Annotated[list, operator.add]
    collapsed_summaries: list[Document]
    final_summary: str


class SummaryState(TypedDict):
    content: str


async def run_tomes(lm: Any, doc_id: int, chunks: list[str], *, map_tokens: int | None = None) -> str:
    from pipelines import mapreduce

    result = await mapreduce.arun(doc_id, mode="summary", length="short", lm=lm,
                                  map_tokens=map_tokens)
    return result.answer


def langchain_model(lm: Any) -> Any:
    from langchain_core.language_models.chat_models import BaseChatModel
    from langchain_core.messages import AIMessage, BaseMessage
    from langchain_core.outputs import ChatGeneration, ChatResult
    from pydantic import ConfigDict

    roles = {"human": "user", "ai": "assistant", "system": "system"}

    class TomesChatModel(BaseChatModel):
        """A LangChain chat model over the tomes LM (so calls and tokens match)."""

        model_config = ConfigDict(arbitrary_types_allowed=True)
        lm: Any
        max_tokens: int = PEER_MAX_TOKENS

        @property
        def _llm_type(self) -> str:
            return "tomes-lm"

        def _messages(self, messages: list[BaseMessage]) -> list[dict[str, str]]:
            return [{"role": roles.get(m.type, "user"), "content": str(m.content)} for m in messages]

        async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                             run_manager: Any = None, **kwargs: Any) -> ChatResult:
            r = await self.lm.achat(self._messages(messages), max_tokens=self.max_tokens,
                                    stop=stop, node="langgraph", cache=False)
            return ChatResult(generations=[ChatGeneration(message=AIMessage(content=r.text))])

        def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                      run_manager: Any = None, **kwargs: Any) -> ChatResult:
            from serving.lm import run_sync

            return run_sync(self._agenerate(messages, stop))

        def get_num_tokens(self, text: str) -> int:
            return self.lm.count_tokens(text)

    return TomesChatModel(lm=lm)


async def run_langgraph_recipe(lm: Any, doc_id: int, chunks: list[str]) -> str:
    """The recipe, adapted only where it needs a model and a tokenizer."""
    from langchain_core.prompts import ChatPromptTemplate
    from langgraph.graph import END, START, StateGraph

    llm = langchain_model(lm)
    map_prompt = ChatPromptTemplate.from_messages(
        [("human", "Write a concise summary of the following:\n\n{context}")])
    reduce_prompt = ChatPromptTemplate([("human", (
        "The following is a set of summaries:\n{docs}\n"
        "Take these and distill it into a final, consolidated summary\nof the main themes."))])

    def length_function(documents: list[Document]) -> int:
        return sum(llm.get_num_tokens(doc.page_content) for doc in documents)

    # langchain's combine_documents.reduce helpers (split_list_of_docs, acollapse_docs),
    # restated here so the bench needs only langchain-core.
    def split_list_of_docs(docs: list[Document], length_func: Callable[[list[Document]], int],
                           token_max: int) -> list[list[Document]]:
        groups: list[list[Document]] = []
        current: list[Document] = []
        for doc in docs:
            current.append(doc)
            if length_func(current) > token_max:
                if len(current) == 1:
                    raise ValueError("a single document is longer than token_max")
                groups.append(current[:-1])
                current = current[-1:]
        groups.append(current)
        return groups

    async def acollapse_docs(docs: list[Document], combine: Callable[[list[Document]], Awaitable[str]]) -> Document:
        return Document(page_content=await combine(docs))

    async def _reduce(docs: list[Document]) -> str:
        # The recipe passes the Document list straight into the prompt (its repr); the
        # page contents joined is the fairer reading and costs fewer tokens.
        prompt = reduce_prompt.invoke({"docs": "\n\n".join(d.page_content for d in docs)})
        return (await llm.ainvoke(prompt)).content

    async def generate_summary(state: SummaryState) -> dict[str, Any]:
        response = await llm.ainvoke(map_prompt.invoke({"context": state["content"]}))
        return {"summaries": [response.content]}

    def map_summaries(state: OverallState) -> list[Send]:
        return [Send("generate_summary", {"content": c}) for c in state["contents"]]

    def collect_summaries(state: OverallState) -> dict[str, Any]:
        return {"collapsed_summaries": [Document(s) for s in state["summaries"]]}

    async def collapse_summaries(state: OverallState) -> dict[str, Any]:
        doc_lists = split_list_of_docs(state["collapsed_summaries"], length_function, TOKEN_MAX)
        results = []
        for doc_list in doc_lists:  # one group after another, as in the recipe
            results.append(await acollapse_docs(doc_list, _reduce))
        return {"collapsed_summaries": results}

    def should_collapse(state: OverallState) -> Literal["collapse_summaries", "generate_final_summary"]:
        if length_function(state["collapsed_summaries"]) > TOKEN_MAX:
            return "collapse_summaries"
        return "generate_final_summary"

    async def generate_final_summary(state: OverallState) -> dict[str, Any]:
        return {"final_summary": await _reduce(state["collapsed_summaries"])}

    graph = StateGraph(OverallState)
    graph.add_node("generate_summary", generate_summary)
    graph.add_node("collect_summaries", collect_summaries)
    graph.add_node("collapse_summaries", collapse_summaries)
    graph.add_node("generate_final_summary", generate_final_summary)
    graph.add_conditional_edges(START, map_summaries, ["generate_summary"])
    graph.add_edge("generate_summary", "collect_summaries")
    graph.add_conditional_edges("collect_summaries", should_collapse)
    graph.add_conditional_edges("collapse_summaries", should_collapse)
    graph.add_edge("generate_final_summary", END)
    app = graph.compile()
    final = await app.ainvoke({"contents": chunks}, {"recursion_limit": 50})
    return final["final_summary"]


def llamaindex_llm(lm: Any) -> Any:
    from llama_index.core.llms import CompletionResponse, CustomLLM, LLMMetadata
    from llama_index.core.llms.callbacks import llm_completion_callback
    from pydantic import PrivateAttr

    class TomesLLM(CustomLLM):
        """A LlamaIndex LLM over the tomes LM (so calls and tokens match)."""

        num_output: int = PEER_MAX_TOKENS
        _lm: Any = PrivateAttr()

        def __init__(self, lm: Any, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._lm = lm

        @property
        def metadata(self) -> LLMMetadata:
            # LlamaIndex packs prompts to the window counting text only; the chat
            # template's own tokens are taken off, or its packed prompts overflow.
            window = self._lm.context_window - self._lm.backend.prompt_overhead([{}])
            return LLMMetadata(context_window=window, num_output=self.num_output,
                               model_name=self._lm.model)

        @llm_completion_callback()
        async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
            r = await self._lm.achat(prompt, max_tokens=self.num_output, node="llamaindex", cache=False)
            return CompletionResponse(text=r.text)

        @llm_completion_callback()
        def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
            from serving.lm import run_sync

            r = run_sync(self._lm.achat(prompt, max_tokens=self.num_output, node="llamaindex",
                                        cache=False))
            return CompletionResponse(text=r.text)

        @llm_completion_callback()
        def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any):  # noqa: ANN201
            yield self.complete(prompt, formatted=formatted, **kwargs)

    return TomesLLM(lm)


async def run_llamaindex(lm: Any, doc_id: int, chunks: list[str]) -> str:
    from llama_index.core import Settings
    from llama_index.core.response_synthesizers import TreeSummarize

    # LlamaIndex counts with tiktoken by default (downloaded at run time); it gets the
    # model's own tokenizer instead, as the other systems do.
    Settings.tokenizer = lambda text: [0] * lm.count_tokens(text)
    summarizer = TreeSummarize(llm=llamaindex_llm(lm), use_async=True)
    response = await summarizer.aget_response("Summarize the text.", chunks)
    return str(response)


async def run_tomes_greedy(lm: Any, doc_id: int, chunks: list[str]) -> str:
    """tomes with greedy packing to the window (the planner before wave-aware planning)."""
    from pipelines import _waves as W

    planned = W.plan
    W.plan = lambda sizes, *, limit, capacity, breaks=(), **_: [  # type: ignore[assignment]
        (a + s, a + e) for a, b in W._segments(len(sizes), breaks)
        for s, e in W.greedy(sizes[a:b], limit)]
    try:
        return await run_tomes(lm, doc_id, chunks)
    finally:
        W.plan = planned


SYSTEMS: dict[str, Callable[..., Awaitable[str]]] = {
    "tomes": run_tomes,
    "tomes-chunks": lambda lm, d, c: run_tomes(lm, d, c, map_tokens=0),
    "tomes-greedy": run_tomes_greedy,
    "langgraph": run_langgraph_recipe,
    "llamaindex": run_llamaindex,
}


# --- measuring -------------------------------------------------------------------------


async def measure(name: str, counting: Counting, doc_id: int, chunks: list[str], *,
                  cache: bool = False, memory: bool = True) -> dict[str, Any]:
    from serving.lm import LM

    counting.reset()
    lm = LM(counting, cache=cache)
    gc.collect()
    started = time.perf_counter()
    answer = await SYSTEMS[name](lm, doc_id, chunks)
    wall = time.perf_counter() - started
    row = {
        "system": name, "calls": counting.calls, "prompt_tokens": counting.prompt_tokens,
        "completion_tokens": counting.completion_tokens,
        "tokens": counting.prompt_tokens + counting.completion_tokens,
        "wall_s": round(wall, 3), "peak_in_flight": counting.peak_in_flight,
        "answer": " ".join(str(answer).split())[:300],
    }
    if memory:
        # Python-heap peak of the orchestration, measured in a second, traced run (the
        # tracer slows Python down, so it is kept out of the timed one).
        counting.reset()
        gc.collect()
        tracemalloc.start()
        await SYSTEMS[name](LM(counting, cache=False), doc_id, chunks)
        row["peak_mem_mb"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 2)
        tracemalloc.stop()
    return row


def ratios(rows: list[dict[str, Any]]) -> None:
    base = next(r for r in rows if r["system"] == "tomes")
    for r in rows:
        r["vs_tomes"] = {
            k: (round(r[k] / base[k], 2) if base.get(k) else None)
            for k in ("calls", "tokens", "prompt_tokens", "completion_tokens", "wall_s", "peak_mem_mb")
            if k in r
        }


def verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's goals, for each tomes configuration against the best peer."""
    return {r["system"]: _verdict(r, rows) for r in rows if r["system"].startswith("tomes")}


def _verdict(tomes: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    peers = [r for r in rows if not r["system"].startswith("tomes")]
    best_tokens = min(peers, key=lambda r: r["tokens"])
    best_wall = min(peers, key=lambda r: r["wall_s"])
    llamaindex = next((r for r in peers if r["system"] == "llamaindex"), None)
    return {
        # the issue's own goal: against LlamaIndex TreeSummarize
        **({"tokens_vs_llamaindex": round(tomes["tokens"] / llamaindex["tokens"], 2),
            "wall_vs_llamaindex": round(tomes["wall_s"] / llamaindex["wall_s"], 2),
            "goal_vs_llamaindex_met": (tomes["tokens"] <= llamaindex["tokens"]
                                       and tomes["wall_s"] <= 0.5 * llamaindex["wall_s"])}
           if llamaindex else {}),
        "tokens_vs_best_peer": round(tomes["tokens"] / best_tokens["tokens"], 2),
        "best_peer_tokens": best_tokens["system"],
        "wall_vs_best_peer": round(tomes["wall_s"] / best_wall["wall_s"], 2),
        "best_peer_wall": best_wall["system"],
        "goal_tokens_met": tomes["tokens"] <= best_tokens["tokens"],
        "goal_wall_met": tomes["wall_s"] <= 0.5 * best_wall["wall_s"],
    }


def table(title: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n== {title}")
    print(f"{'system':<13}{'calls':>6}{'prompt':>9}{'compl':>8}{'wall s':>9}{'mem MB':>8}"
          f"{'inflight':>9}   ratio calls/tokens/wall vs tomes")
    for r in rows:
        v = r.get("vs_tomes", {})
        print(f"{r['system']:<13}{r['calls']:>6}{r['prompt_tokens']:>9}{r['completion_tokens']:>8}"
              f"{r['wall_s']:>9.2f}{r.get('peak_mem_mb', float('nan')):>8.2f}{r['peak_in_flight']:>9}"
              f"   {v.get('calls')}/{v.get('tokens')}/{v.get('wall_s')}")


def prepare(text: str, name: str, backend: str) -> tuple[int, list[str]]:
    """Ingest ``text`` as one document; its chunks are what every system reads."""
    from app import settings
    from app.api import Tomes
    from app.store import Chunk, session_scope

    path = Path(tempfile.mkdtemp()) / f"{name}.txt"
    path.write_text(text, encoding="utf-8")
    with settings.override(backend=backend):
        report = Tomes().ingest([path], f"bench-{backend}", embed=False)
    if report.failed:
        raise SystemExit(report.failed[0].error)
    doc = (report.added or report.skipped)[0].document_id
    with session_scope() as s:
        chunks = [c.text for c in s.query(Chunk).filter_by(document_id=doc).order_by(Chunk.ordinal)]
    return doc, chunks


async def warm_up(doc: int, chunks: list[str]) -> None:
    """Run every system once on a zero-latency fake, untimed: imports and lazy set-up
    (LlamaIndex alone takes seconds to import) stay out of the figures."""
    from serving.backends.scripted import ScriptedBackend
    from serving.lm import LM

    fake = Counting(ScriptedBackend(scripted_reply))
    for name in SYSTEMS:
        await SYSTEMS[name](LM(fake, cache=False), doc, chunks)


async def suite(title: str, inner: Backend, doc: int, chunks: list[str], memory: bool) -> dict[str, Any]:
    counting = Counting(inner)
    rows = []
    for name in SYSTEMS:
        rows.append(await measure(name, counting, doc, chunks, memory=memory))
        print(f"  {name}: {rows[-1]['calls']} calls, {rows[-1]['wall_s']:.2f}s", flush=True)
    ratios(rows)
    table(title, rows)
    # The same tomes job again, now through the response cache (the timed run above
    # logged its calls): it makes no model call at all.
    again = await measure("tomes", counting, doc, chunks, cache=True, memory=False)
    cache = {"first_calls": rows[0]["calls"], "second_calls": again["calls"],
             "second_wall_s": again["wall_s"], "same_answer": again["answer"] == rows[0]["answer"]}
    print(f"cache: first run {rows[0]['calls']} calls, same job again {again['calls']} calls "
          f"({again['wall_s']:.2f}s)")
    v = verdict(rows)
    for system, g in v.items():
        print(f"goal, {system}: tokens {g['tokens_vs_best_peer']}x best peer ({g['best_peer_tokens']}), "
              f"wall {g['wall_vs_best_peer']}x best peer ({g['best_peer_wall']})")
    return {"title": title, "chunks": len(chunks), "rows": rows, "cache": cache, "verdict": v}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="scripted backend only, small text")
    ap.add_argument("--doc", type=Path, default=DEFAULT_DOC)
    ap.add_argument("--latency", type=float, default=0.25, help="scripted per-call latency (s)")
    ap.add_argument("--capacity", type=int, default=8, help="scripted backend capacity")
    ap.add_argument("--prefill-latency", type=float, default=0.25,
                    help="second scripted suite: seconds per 4,096 prompt tokens (0: skip)")
    ap.add_argument("--embedded-chunks", type=int, default=4,
                    help="first N chunks of the document for the embedded model (0: skip)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "mapreduce_peers.json")
    args = ap.parse_args()

    home = Path(tempfile.mkdtemp(prefix="tomes-bench-"))
    os.environ["TOMES_HOME"] = str(home)
    from app import settings

    settings.reset()
    text = args.doc.read_text(encoding="utf-8-sig")
    if args.quick:
        text = text[: len(text) // 3]
    results: dict[str, Any] = {
        "document": args.doc.name, "chars": len(text), "latency_s": args.latency,
        "capacity": args.capacity, "token_max_langgraph": TOKEN_MAX,
        "note": "2 shared CPU cores; other jobs may run at the same time",
        "load_avg_start": [round(x, 2) for x in os.getloadavg()],
        "suites": [],
    }
    from serving.backends.scripted import ScriptedBackend

    doc, chunks = prepare(text, args.doc.stem, "scripted")
    warm_doc, warm_chunks = prepare(chunks[0], "warm-up", "scripted")
    asyncio.run(warm_up(warm_doc, warm_chunks))
    scripted = ScriptedBackend(scripted_reply, latency=args.latency, capacity=args.capacity)
    results["suites"].append(asyncio.run(suite(
        f"scripted, {args.latency}s per call, capacity {args.capacity}, {len(chunks)} chunks",
        scripted, doc, chunks, memory=True)))
    if args.prefill_latency:
        prefill = Prefill(ScriptedBackend(scripted_reply, capacity=args.capacity), args.prefill_latency)
        results["suites"].append(asyncio.run(suite(
            f"scripted, {args.prefill_latency}s per 4,096 prompt tokens, capacity "
            f"{args.capacity}, {len(chunks)} chunks", prefill, doc, chunks, memory=False)))

    if not args.quick and args.embedded_chunks:
        from serving import registry

        with settings.override(backend="embedded"):
            doc_e, all_chunks = prepare(text, args.doc.stem, "embedded")
            excerpt = "\n\n".join(all_chunks[: args.embedded_chunks])
            doc_e, chunks_e = prepare(excerpt, f"{args.doc.stem}-first-{args.embedded_chunks}", "embedded")
            embedded = registry.get("embedded")
            results["suites"].append(asyncio.run(suite(
                f"embedded {embedded.model}, first {len(chunks_e)} chunks, capacity {embedded.capacity}",
                embedded, doc_e, chunks_e, memory=False)))
            registry.close_all()

    results["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
