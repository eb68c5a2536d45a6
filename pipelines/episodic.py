"""Episodic memory: answers from a workspace of who did what, where and when (after GSW).

``plan`` finds the target's chunks the workspace has not read; ``extract`` runs the
operator on each (one ``Send`` per chunk, or per packed group on long windows) under a
JSON schema, tolerant of what small models reply; ``reconcile`` merges the records into
the corpus's workspace in document order; ``answer`` finds the entities and events the
question is about and answers from a small context of notes, citing chunks and spans.

A target whose workspace is complete goes straight to ``answer``; one that has none is
built first (said in an event and in the result's details). Checkpointed in SQLite under
the run id like map-reduce: a run killed mid-extraction resumes without calling the
model again for chunks already read.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict

from app.errors import TomesError
from app.events import Event, OnEvent, ignore
from memory import _prompts as MP
from memory import operator as op
from memory import query as Q
from memory import reconcile as RC
from memory import workspace as W
from pipelines import _budget as B
from pipelines import _runs
from pipelines import _waves as Waves
from pipelines._structured import ParseError, parse_object, text_field
from pipelines.environment import Environment
from pipelines.result import Provenance, Result
from serving.base import ChatResponse
from serving.lm import (LM, get_lm, parent_scope, replay_scope, run_scope, run_sync,
                        with_schema_instruction)

PIPELINE = "memory"
_SAFETY = 48
_RETRY_RESERVE = 64
# Chunks per operator call: one each on short windows (what a small model reads well);
# on long windows consecutive chunks are packed up to this many tokens.
PACK_FROM_WINDOW = 32_768
AUTO_PACK_TOKENS = 6_000
NO_ANSWER = "The memory workspace has nothing about this question."


class Piece(TypedDict):
    chunk_ids: list[int]
    index: int


class Usage(TypedDict, total=False):
    calls: int
    cache_hits: int
    prompt_tokens: int
    completion_tokens: int


def _add_usage(a: Usage | None, b: Usage | None) -> Usage:
    out: Usage = dict(a or {})  # type: ignore[assignment]
    for key, value in (b or {}).items():
        out[key] = out.get(key, 0) + value  # type: ignore[literal-required]
    return out


class State(TypedDict, total=False):
    question: str | None
    pieces: list[Piece]
    had: int  # chunks of the target the workspace had read before this run
    step: int | None
    records: Annotated[list[dict[str, Any]], operator.add]
    built: dict[str, Any]
    answer: str
    sources: list[dict[str, Any]]
    context: dict[str, Any]
    usage: Annotated[Usage, _add_usage]
    fallbacks: Annotated[list[str], operator.add]


class Task(TypedDict):
    piece: Piece
    total: int
    step: int | None


class Episodic:
    def __init__(self, env: Environment, lm: LM, *, question: str | None = None,
                 pack_tokens: int | None = None, context_tokens: int = Q.DEFAULT_BUDGET,
                 on_event: OnEvent = ignore) -> None:
        if question is not None and not question.strip():
            raise TomesError("the question is empty", "ask a question in words")
        if pack_tokens is not None and pack_tokens < 0:
            raise TomesError(f"pack_tokens is {pack_tokens}", "use 0 (one chunk per call) or more")
        if context_tokens < 100:
            raise TomesError(f"context_tokens is {context_tokens}", "give the notes at least 100 tokens")
        self.env = env
        self.lm = lm
        self.question = question.strip() if question else None
        if pack_tokens is None:
            pack_tokens = AUTO_PACK_TOKENS if lm.context_window >= PACK_FROM_WINDOW else 0
        self.pack_tokens = pack_tokens
        self.context_tokens = context_tokens
        self.on_event = on_event
        self.extracted = 0
        self._json = bool(getattr(lm.backend, "supports_json_schema", False))

    # budgets and calls ---------------------------------------------------------------

    def room(self) -> int:
        """Tokens of passage an operator call can hold."""
        messages = op.prompt([op.Source(0, 0, "")])
        if not self._json:
            messages = with_schema_instruction(messages, MP.OPERATOR_SCHEMA)
        room = (self.lm.context_window - self.lm.count_messages(messages)
                - MP.OPERATOR_MAX_TOKENS - _SAFETY - _RETRY_RESERVE)
        if room < 64:
            raise TomesError(
                f"the model's window ({self.lm.context_window} tokens) leaves no room for "
                "a passage after the operator's prompt and reply",
                "choose a model with a larger context window (`--backend` / TOMES_MODEL)")
        return room

    async def _call(self, messages: list[dict[str, str]], *, node: str, max_tokens: int,
                    schema: dict[str, Any] | None, usage: Usage) -> ChatResponse:
        response = await self.lm.achat(
            messages, max_tokens=max_tokens, temperature=0.0, json_schema=schema, node=node,
            stop=None if (schema and self._json) else ["\n\n\n"])
        if response.cache_hit:
            usage["cache_hits"] = usage.get("cache_hits", 0) + 1
        else:
            usage["calls"] = usage.get("calls", 0) + 1
            usage["prompt_tokens"] = usage.get("prompt_tokens", 0) + response.usage.prompt_tokens
            usage["completion_tokens"] = usage.get("completion_tokens", 0) + response.usage.completion_tokens
        return response

    async def _structured(self, messages: list[dict[str, str]], *, node: str,
                          schema: dict[str, Any], max_tokens: int,
                          usage: Usage) -> tuple[dict[str, Any] | None, str, str]:
        """(object or None, raw reply, json | retry | fallback): one retry with the parse
        error, then the caller falls back to the text. Never raises on a bad reply."""
        first = await self._call(messages, node=node, max_tokens=max_tokens, schema=schema, usage=usage)
        try:
            return parse_object(first.text), first.text, "json"
        except ParseError as exc:
            error = str(exc)
        retry = messages + [{"role": "assistant", "content": first.text},
                            {"role": "user", "content": MP.retry_prompt(error)}]
        base = retry[:2] + retry[3:]
        if not self._json:
            base = with_schema_instruction(base, schema)
        spare = self.lm.context_window - max_tokens - _SAFETY - self.lm.count_messages(base)
        retry[2]["content"] = B.truncate(first.text, max(0, min(spare, 200)), self.lm.count_tokens) or "{"
        with parent_scope(first.call_id):  # the retry sits under the call it repairs
            second = await self._call(retry, node=node, max_tokens=max_tokens, schema=schema, usage=usage)
        try:
            return parse_object(second.text), second.text, "retry"
        except ParseError:
            raw = first.text if len(first.text.strip()) >= len(second.text.strip()) else second.text
            return None, raw, "fallback"

    # nodes ---------------------------------------------------------------------------

    def plan(self, state: State) -> dict[str, Any]:
        todo = set(RC.pending([c.id for c in self.env.chunks]))
        chunks = [c for c in self.env.chunks if c.id in todo]
        room = self.room()
        limit = min(room, self.pack_tokens) if self.pack_tokens else 0
        if limit:
            # As few call waves as the backend's slots allow, the calls evened out.
            sizes = [c.n_tokens or self.lm.count_tokens(c.text) for c in chunks]
            ranges = Waves.plan(sizes, limit=limit, capacity=self.lm.capacity,
                                breaks=Waves.breaks_of(chunks))
            groups = [chunks[a:b] for a, b in ranges]
        else:
            groups = [[c] for c in chunks]
        pieces = [Piece(chunk_ids=[c.id for c in g], index=i) for i, g in enumerate(groups)]
        had = len(self.env.chunks) - len(chunks)
        if not pieces:
            return {"pieces": [], "step": None, "had": had}
        message = ("building the memory workspace first" if self.question
                   else "reading chunks into the memory workspace")
        self.on_event(Event("extract", 0, len(pieces), message=message,
                            data={"chunks": len(chunks), "building": True}))
        step = self.lm.begin_step("extract", f"operator over {len(chunks)} chunks")
        return {"pieces": pieces, "step": step, "had": had}

    def fan_out(self, state: State) -> list[Any]:
        from langgraph.types import Send

        pieces = state.get("pieces") or []
        if not pieces:
            return ["reconcile"]
        return [Send("extract", Task(piece=p, total=len(pieces), step=state.get("step")))
                for p in pieces]

    async def extract(self, task: Task) -> dict[str, Any]:
        ids = task["piece"]["chunk_ids"]
        chunks = [self.env.chunk(c) for c in ids]
        sources = [op.Source(c.id, c.start, c.text) for c in chunks]
        fallbacks: list[str] = []
        room = self.room()
        if self.lm.count_tokens("\n\n".join(s.text for s in sources)) > room:
            sources = [op.Source(s.chunk_id, s.start, B.truncate(s.text, room // len(sources),
                                                                 self.lm.count_tokens))
                       for s in sources]
            fallbacks.append(f"extract: chunk {ids[0]} was cut to fit the model's window")
        usage: Usage = {}
        with parent_scope(task.get("step")):
            obj, raw, how = await self._structured(
                op.prompt(sources), node="operator", schema=MP.OPERATOR_SCHEMA,
                max_tokens=MP.OPERATOR_MAX_TOKENS, usage=usage)
        records = op.read_reply(obj, raw, how, sources)
        self.extracted += 1
        self.on_event(Event("extract", self.extracted, task["total"], message=f"chunk {ids[0]}",
                            data={"chunk_ids": list(ids), "parsed": how}))
        return {"records": records, "usage": usage, "fallbacks": fallbacks}

    async def reconcile(self, state: State) -> dict[str, Any]:
        self.lm.end_step(state.get("step"))
        records = state.get("records") or []
        if not records:
            return {"built": {}}
        usage: Usage = {}
        fallbacks: list[str] = []
        embed = _embedder(fallbacks)

        async def verify(name: str, about: str, other: str, about_other: str) -> bool:
            messages = [{"role": "system", "content": MP.SYSTEM_VERIFY},
                        {"role": "user", "content": MP.verify_prompt(name, about, other, about_other)}]
            obj, _raw, _how = await self._structured(messages, node="verify",
                                                     schema=MP.VERIFY_SCHEMA, max_tokens=16, usage=usage)
            same = (obj or {}).get("same")
            return same is True or (isinstance(same, str) and same.strip().lower() in ("true", "yes"))

        total = len(records)
        self.on_event(Event("reconcile", 0, total, message="merging into the workspace"))
        with self.lm.step("reconcile", f"reconcile {total} chunks"):
            stats = await RC.reconcile(
                records, embed=embed, verify=verify, model=self.lm.model,
                on_progress=lambda done, n: self.on_event(Event("reconcile", done, n)))
        self.on_event(Event("reconcile", total, total, message="done"))
        built = stats.to_dict()
        built["parsed"] = _parsed(records)
        if built["parsed"].get("fallback"):
            fallbacks.append(f"extract: {built['parsed']['fallback']} of {total} operator replies "
                             "were not the JSON asked for, even after a retry; only names found "
                             "in both the reply and the passage were kept from them")
        return {"built": built, "usage": usage, "fallbacks": fallbacks}

    def route(self, state: State) -> str:
        return "answer" if self.question else "__end__"

    async def answer(self, state: State) -> dict[str, Any]:
        from app.store import session_scope

        assert self.question is not None
        self.on_event(Event("answer", 0, 1, message="answering from the workspace"))
        fallbacks: list[str] = []
        embed = _embedder(fallbacks)
        with session_scope() as s:
            ws = W.load(s, [d.id for d in self.env.documents])
        ctx = Q.context(ws, self.question, count_tokens=self.lm.count_tokens, embed=embed,
                        budget=self.context_tokens)
        usage: Usage = {}
        context = {"text": ctx.text, "tokens": ctx.tokens, "notes": len(ctx.notes),
                   "dropped": ctx.dropped,
                   "entities": [ws.name(i) for i in ctx.entities], "events": ctx.events}
        if not ctx.notes:
            fallbacks.append("answer: the workspace has no entity or event this question "
                             "names, so no model call was made")
            self.on_event(Event("answer", 1, 1, message="nothing found"))
            return {"answer": NO_ANSWER, "sources": [], "context": context, "fallbacks": fallbacks}
        messages = [{"role": "system", "content": MP.SYSTEM_ANSWER},
                    {"role": "user", "content": MP.answer_prompt(ctx.text, self.question)}]
        with self.lm.step("answer", "answer from the workspace"):
            obj, raw, how = await self._structured(messages, node="answer", schema=MP.ANSWER_SCHEMA,
                                                   max_tokens=MP.ANSWER_MAX_TOKENS, usage=usage)
        answer = text_field((obj or {}).get("answer")) if obj is not None else text_field(raw, 1500)
        if obj is None:
            fallbacks.append("answer: the reply was not the JSON asked for, even after a retry; "
                             "its text is the answer")
        numbers = [n for n in (obj or {}).get("notes") or [] if isinstance(n, int)]
        sources = ctx.sources(numbers)
        if not sources:
            # Nothing (usable) cited: the notes that ranked highest stand behind it.
            best = sorted(ctx.notes, key=lambda n: -n.priority)
            sources = ctx.sources([ctx.notes.index(n) + 1 for n in best[:3]])
            if numbers or obj is not None:
                fallbacks.append("answer: the reply cited no note it was given; the highest "
                                 "ranked notes are its provenance")
        if not answer:
            answer = NO_ANSWER
        self.on_event(Event("answer", 1, 1, message="done"))
        return {"answer": answer, "usage": usage, "fallbacks": fallbacks, "context": context,
                "sources": [src.__dict__ | {"note": _note_of(ctx, src)} for src in sources]}

    def graph(self) -> Any:
        from langgraph.graph import END, START, StateGraph

        builder = StateGraph(State)
        builder.add_node("plan", self.plan)
        builder.add_node("extract", self.extract)
        builder.add_node("reconcile", self.reconcile)
        builder.add_node("answer", self.answer)
        builder.add_edge(START, "plan")
        builder.add_conditional_edges("plan", self.fan_out, ["extract", "reconcile"])
        builder.add_edge("extract", "reconcile")
        builder.add_conditional_edges("reconcile", self.route, {"answer": "answer", "__end__": END})
        builder.add_edge("answer", END)
        return builder


def _note_of(ctx: Q.Context, src: W.Source) -> str:
    for note in ctx.notes:
        if note.source == src:
            return note.text
    return ""


def _parsed(records: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in records:
        out[r.get("parsed", "json")] = out.get(r.get("parsed", "json"), 0) + 1
    return out


def _embedder(fallbacks: list[str]) -> Any:
    """The retrieval embedder's ``encode``; without one, names and words alone decide."""
    try:
        from retrieval.embedders import get_embedder

        return get_embedder().encode
    except TomesError as exc:
        fallbacks.append(f"embedder unavailable ({exc.cause}); names and words alone were used")
        return None


# --- running ---------------------------------------------------------------------------


def ask(target: str | int, question: str, *, on_event: OnEvent = ignore, run_id: str | None = None,
        lm: LM | None = None, pack_tokens: int | None = None,
        context_tokens: int = Q.DEFAULT_BUDGET) -> Result:
    if not question or not question.strip():
        raise TomesError("the question is empty", "ask a question in words")
    return run_sync(arun(target, question, on_event=on_event, run_id=run_id, lm=lm,
                         pack_tokens=pack_tokens, context_tokens=context_tokens))


async def aask(target: str | int, question: str, *, on_event: OnEvent = ignore,
               run_id: str | None = None, lm: LM | None = None, pack_tokens: int | None = None,
               context_tokens: int = Q.DEFAULT_BUDGET) -> Result:
    if not question or not question.strip():
        raise TomesError("the question is empty", "ask a question in words")
    return await arun(target, question, on_event=on_event, run_id=run_id, lm=lm,
                      pack_tokens=pack_tokens, context_tokens=context_tokens)


def build(target: str | int, *, on_event: OnEvent = ignore, run_id: str | None = None,
          lm: LM | None = None, pack_tokens: int | None = None) -> Result:
    """Read the target's chunks the workspace lacks into it (all of them the first time)."""
    return run_sync(arun(target, None, on_event=on_event, run_id=run_id, lm=lm,
                         pack_tokens=pack_tokens))


def resume(run_id: str, *, on_event: OnEvent = ignore, lm: LM | None = None) -> Result:
    return run_sync(aresume(run_id, on_event=on_event, lm=lm))


async def arun(target: str | int, question: str | None, *, on_event: OnEvent = ignore,
               run_id: str | None = None, lm: LM | None = None, pack_tokens: int | None = None,
               context_tokens: int = Q.DEFAULT_BUDGET) -> Result:
    lm = lm or get_lm()
    env = Environment.load(target, lm=lm)
    job = Episodic(env, lm, question=question, pack_tokens=pack_tokens,
                   context_tokens=context_tokens, on_event=on_event)
    job.room()  # a window too small for any passage fails here, before the Run exists
    params = {"mode": "ask" if question else "build", "pack_tokens": job.pack_tokens,
              "context_tokens": context_tokens, **_runs.serving_of(lm)}
    run_id = _runs.create_run(run_id, PIPELINE, env.target.label, job.question, params)
    return await _execute(job, run_id)


async def aresume(run_id: str, *, on_event: OnEvent = ignore, lm: LM | None = None) -> Result:
    run, done = _runs.load_for_resume(run_id, PIPELINE)
    if done is not None:
        return done
    params = run["params"] or {}
    lm = lm or _runs.lm_for_run(run)
    env = Environment.load(run["target"], lm=lm)
    job = Episodic(env, lm, question=run["question"], pack_tokens=params.get("pack_tokens"),
                   context_tokens=params.get("context_tokens") or Q.DEFAULT_BUDGET,
                   on_event=on_event)
    with replay_scope(run_id):  # finished calls a lost checkpoint did not keep: from the call log
        return await _execute(job, run_id)


async def _execute(job: Episodic, run_id: str) -> Result:
    _runs.mark_running(run_id)
    config = {"configurable": {"thread_id": run_id}, "recursion_limit": 50}
    with _runs.failures_kept(run_id):
        with run_scope(run_id):
            async with _runs.checkpointer() as saver:
                graph = job.graph().compile(checkpointer=saver)
                snapshot = await graph.aget_state(config)
                if snapshot.values:  # resuming: finished extractions are in the checkpoint
                    job.extracted = sum(1 for t in snapshot.tasks
                                        if t.name == "extract" and t.result is not None)
                    inputs = None
                else:
                    inputs = {"question": job.question}
                final = await graph.ainvoke(inputs, config, durability="async")
    result = _result(job, run_id, final)
    _runs.finish_run(run_id, result.answer, result.to_dict())
    return result


def _result(job: Episodic, run_id: str, final: dict[str, Any]) -> Result:
    from app.store import session_scope

    usage = final.get("usage", {}) or {}
    built = final.get("built") or {}
    with session_scope() as s:
        ws = W.load(s, [d.id for d in job.env.documents])
    counts = ws.counts()
    read = len(final.get("pieces") or [])
    if job.question is None:
        answer = (f"memory workspace of {job.env.target.title}: {counts['entities']} entities, "
                  f"{counts['places']} places, {counts['events']} events, {counts['states']} "
                  f"roles and states from {counts['chunks_read']} of {counts['chunks']} chunks")
        provenance: list[Provenance] = []
    else:
        answer = final.get("answer", "")
        provenance = [_provenance(job.env, src) for src in final.get("sources") or []]
        provenance = [p for p in provenance if p is not None]
    context = final.get("context") or {}
    workspace = "existing" if not read else ("built first" if not final.get("had") else "updated")
    return Result(
        answer=answer, provenance=provenance, run_id=run_id, pipeline=PIPELINE,
        calls=usage.get("calls", 0), cache_hits=usage.get("cache_hits", 0),
        prompt_tokens=usage.get("prompt_tokens", 0),
        completion_tokens=usage.get("completion_tokens", 0),
        details={
            "mode": "ask" if job.question else "build", "question": job.question,
            "target": job.env.target.label, "workspace": workspace,
            "operator_calls": read, "pack_tokens": job.pack_tokens, "built": built,
            "counts": counts, "context_tokens": context.get("tokens", 0),
            "context": context.get("text", ""), "notes": context.get("notes", 0),
            "entities": context.get("entities", []),
            "spans": [{k: s.get(k) for k in ("chunk_id", "document_id", "start", "end", "note")}
                      for s in final.get("sources") or []],
            "backend": job.lm.backend.name, "model": job.lm.model,
            "fallbacks": list(final.get("fallbacks", [])),
        },
    )


def _provenance(env: Environment, src: dict[str, Any]) -> Provenance | None:
    if not env.has_chunk(src["chunk_id"]):
        return None  # never cite what the target does not hold
    chunk = env.chunk(src["chunk_id"])
    start, end = src.get("start"), src.get("end")
    if start is not None and end is not None and chunk.start <= start < end <= chunk.end + 1:
        quote = chunk.text[start - chunk.start:end - chunk.start]
    else:
        quote = src.get("note", "") or chunk.text[:200]
    return Provenance(chunk_id=chunk.id, document_id=chunk.document_id,
                      title=env.document(chunk.document_id).title, start=chunk.start,
                      end=chunk.end, page=chunk.page, quote=" ".join(quote.split())[:300])


# --- reading it --------------------------------------------------------------------------


def show(target: str | int, *, entity: str | None = None, build: bool = False,
         on_event: OnEvent = ignore, top: int = 10, lm: LM | None = None) -> dict[str, Any]:
    """The workspace of a document (or the merged view of a corpus): counts and the top
    entities and places, or with ``entity`` that entity's timeline. ``build`` first
    reads whatever chunks of the target the workspace lacks."""
    from app.store import session_scope
    from pipelines.targets import resolve_target, target_documents

    built = build_result = None
    if build:
        build_result = _build(target, on_event=on_event, lm=lm)
        built = build_result.to_dict()
    with session_scope() as s:
        tgt = resolve_target(s, target)
        ids = [d.id for d in target_documents(s, tgt)]
        ws = W.load(s, ids)
    out: dict[str, Any] = {"target": tgt.label, "title": tgt.title, **ws.to_dict(top=top)}
    if built is not None:
        out["build"] = {"run_id": build_result.run_id, "calls": build_result.calls,
                        "cache_hits": build_result.cache_hits,
                        "workspace": build_result.details.get("workspace"),
                        "stats": build_result.details.get("built")}
    if entity is None:
        return out
    if not entity.strip():
        raise TomesError("the entity name is empty", "name an entity, e.g. --entity \"Elizabeth\"")
    matches = ws.find(entity)
    if not matches:
        hint = ", ".join(e.name for e in ws.top_entities(5))
        raise TomesError(
            f"the memory workspace of {tgt.title} has no entity called {entity!r}",
            (f"try one of: {hint}" if hint else
             f"build it first with `tomes memory build {target}`"))
    chosen = matches[0]
    out["entity"] = {"id": chosen.id, "name": chosen.name, "kind": chosen.kind,
                     "aliases": chosen.aliases, "mentions": chosen.mentions,
                     "chunks": chosen.chunks}
    out["timeline"] = ws.timeline(chosen.id)
    out["also_matching"] = [e.name for e in matches[1:6]]
    return out


_build = build
