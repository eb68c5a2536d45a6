"""RAG: the top-k chunks by hybrid search, packed into one answer prompt that cites them.

The passages go in rank order, numbered, as many as the window holds with room for the
answer; the model answers with the numbers of the passages it used, and those chunks
are the provenance (the passages it was shown, when it cites none it was shown). A
corpus without vectors yet is embedded by the search itself.
"""

from __future__ import annotations

import asyncio
from typing import Any

from app.errors import TomesError
from app.events import Event, OnEvent, ignore
from pipelines import _budget as B
from pipelines import _onecall as O
from pipelines import _records as R
from pipelines import _runs
from pipelines._mapreduce_prompts import NO_INFO
from pipelines.environment import Environment
from pipelines.result import Result
from serving.lm import LM, get_lm, replay_scope, run_sync

PIPELINE = "rag"
OPTIONS = ("k", "search", "answer_tokens")
DEFAULT_K = 8
SEARCH_MODES = ("hybrid", "dense", "keyword")

SYSTEM = ("You answer questions from numbered passages of a document. Reply with one JSON "
          "object only.")


def prompt(passages: str, question: str) -> str:
    return (
        f"Passages:\n{passages}\n\nQuestion: {question}\n\n"
        f'Answer from the passages only; if they do not say, answer "{NO_INFO}". Reply as JSON:\n'
        '{"answer": "<the answer>", "passages": [<the numbers of the passages it rests on>]}'
    )


def render(number: int, title: str, text: str) -> str:
    return f"[{number}] ({title})\n{text.strip()}"


def _check(options: dict[str, Any]) -> dict[str, Any]:
    O.check_options(PIPELINE, options, OPTIONS)
    search = options.get("search") or "hybrid"
    if search not in SEARCH_MODES:
        raise TomesError(f"unknown search mode {search!r}", f"use one of: {', '.join(SEARCH_MODES)}")
    k = options.get("k")
    answer_tokens = options.get("answer_tokens")
    return {"k": DEFAULT_K if k is None else O.positive("k", k, 1), "search": search,
            "answer_tokens": (O.ANSWER_TOKENS if answer_tokens is None
                              else O.positive("answer_tokens", answer_tokens, 16))}


def ask(target: str | int, question: str, *, on_event: OnEvent = ignore,
        run_id: str | None = None, lm: LM | None = None, **options: Any) -> Result:
    return run_sync(aask(target, question, on_event=on_event, run_id=run_id, lm=lm, **options))


def resume(run_id: str, *, on_event: OnEvent = ignore, lm: LM | None = None) -> Result:
    return run_sync(aresume(run_id, on_event=on_event, lm=lm))


async def aask(target: str | int, question: str, *, on_event: OnEvent = ignore,
               run_id: str | None = None, lm: LM | None = None, **options: Any) -> Result:
    opts = _check(options)
    question = (question or "").strip()
    if not question:
        raise TomesError("the question is empty", "ask a question in words")
    lm = lm or get_lm()
    # Off the event loop, like the run's bookkeeping: other runs go on meanwhile.
    env = await asyncio.to_thread(Environment.load, target, lm=lm)
    _room(lm, question, opts["answer_tokens"])  # a window too small fails before the run
    run_id = await asyncio.to_thread(_runs.create_run, run_id, PIPELINE, env.target.label,
                                     question, {**opts, **_runs.serving_of(lm)})
    return await O.execute(run_id, on_event, lambda: _answer(env, lm, question, opts, run_id,
                                                             on_event))


async def aresume(run_id: str, *, on_event: OnEvent = ignore, lm: LM | None = None) -> Result:
    """Run it again: the same hits make the same prompt, served from the run's call log
    when its call finished before the stop."""
    run, done = _runs.load_for_resume(run_id, PIPELINE)
    if done is not None:
        return done
    params = run["params"] or {}
    opts = _check({k: params[k] for k in OPTIONS if k in params})
    lm = lm or _runs.lm_for_run(run)
    env = Environment.load(run["target"], lm=lm)
    with replay_scope(run_id):  # a call that finished before the stop, even with the cache off
        return await O.execute(run_id, on_event, lambda: _answer(env, lm, run["question"], opts,
                                                                 run_id, on_event))


def _room(lm: LM, question: str, answer_tokens: int) -> int:
    skeleton = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt("", question)}]
    room = lm.context_window - O.prompt_tokens(lm, skeleton, O.ANSWER_SCHEMA) - answer_tokens - O.SAFETY
    if room < 64:
        raise TomesError(
            f"the model's window ({lm.context_window} tokens) leaves no room for passages "
            "after the prompt and the answer",
            "ask a shorter question, lower answer_tokens, or choose a model with a larger window",
        )
    return room


def pack(hits: list[Any], room: int, count: Any) -> tuple[list[Any], list[str], int]:
    """(the hits that fit, their rendered passages, hits left out). Best first; a hit
    too big for what is left is skipped so smaller ones after it still get in; when not
    even the best fits, it is cut to the room."""
    used: list[Any] = []
    rendered: list[str] = []
    spent = 0
    for hit in hits:
        text = render(len(used) + 1, hit.title, hit.text)
        size = count(text) + 2  # the blank line between passages
        if spent + size <= room:
            used.append(hit)
            rendered.append(text)
            spent += size
    if not used and hits:
        head = render(1, hits[0].title, "")
        cut = B.truncate(hits[0].text, max(0, room - count(head) - 4), count)
        used, rendered = [hits[0]], [render(1, hits[0].title, cut)]
    return used, rendered, len(hits) - len(used)


async def _answer(env: Environment, lm: LM, question: str, opts: dict[str, Any], run_id: str,
                  on_event: OnEvent) -> Result:
    from pipelines import overflow_advice

    on_event(Event("retrieve", 0, 1, message=f"top {opts['k']} by {opts['search']} search"))
    # Off the event loop: a search may embed the corpus first, and other runs go on.
    hits = await asyncio.to_thread(env.search, question, opts["k"], mode=opts["search"])
    on_event(Event("retrieve", 1, 1, message=f"{len(hits)} passages"))
    fallbacks: list[str] = []
    details: dict[str, Any] = {"question": question, "target": env.target.label, **opts,
                               "hits": [h.chunk_id for h in hits], "backend": lm.backend.name,
                               "model": lm.model, "fallbacks": fallbacks}
    if not hits:
        fallbacks.append("retrieval found no passages; no model call was made")
        return Result(answer=O.NO_ANSWER, run_id=run_id, pipeline=PIPELINE,
                      details={**details, "used": [], "cited": []})
    used, passages, left = pack(hits, _room(lm, question, opts["answer_tokens"]), lm.count_tokens)
    if left:
        fallbacks.append(f"rag: {left} of {len(hits)} passages did not fit the window and "
                         "were left out")
    on_event(Event("answer", 0, 1, message=f"answering from {len(used)} passages"))
    messages = [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": prompt("\n\n".join(passages), question)}]
    with lm.step("rag", f"answer from {len(used)} passages"):
        response = await O.call(lm, messages, schema=O.ANSWER_SCHEMA,
                                max_tokens=opts["answer_tokens"], node="rag",
                                advice=overflow_advice(PIPELINE))
    obj, answer = O.parse(response.text, fallbacks, "rag")
    cited: list[int] = []
    if O.usable(answer):
        for n in R.ints(obj.get("passages")):
            if 1 <= n <= len(used) and used[n - 1].chunk_id not in cited:
                cited.append(used[n - 1].chunk_id)
        if not cited:
            cited = [h.chunk_id for h in used]
            fallbacks.append("rag: the answer cited none of the passages shown; all "
                             f"{len(used)} are its provenance")
    else:
        answer = O.NO_ANSWER
    on_event(Event("answer", 1, 1, message="done"))
    return Result(
        answer=answer, provenance=R.provenance(env, cited, [], hint=answer),
        run_id=run_id, pipeline=PIPELINE, **O.usage_of(response),
        details={**details, "used": [h.chunk_id for h in used], "cited": cited},
    )
