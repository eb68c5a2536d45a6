"""Direct: the whole target in one call, the baseline every other strategy is measured against.

Before any call it checks that the text, the prompt and room for the answer fit the
model's window; when they do not, it says so and names the strategies that read the
text in pieces. The answer comes with the sentence it rests on, which locates the
chunks of the provenance.
"""

from __future__ import annotations

import asyncio
from typing import Any

from app.errors import TomesError
from app.events import Event, OnEvent, ignore
from pipelines import _grounding as G
from pipelines import _onecall as O
from pipelines import _records as R
from pipelines import _runs
from pipelines._mapreduce_prompts import NO_INFO
from pipelines._structured import text_field
from pipelines.environment import Environment
from pipelines.result import Result
from serving.lm import LM, get_lm, replay_scope, run_sync

PIPELINE = "direct"
OPTIONS = ("answer_tokens",)

SYSTEM = "You answer questions about a document from its text alone. Reply with one JSON object only."


def prompt(text: str, question: str) -> str:
    return (
        f'Document:\n"""\n{text}\n"""\n\nQuestion: {question}\n\n'
        f'Answer from the document only; if it does not say, answer "{NO_INFO}". Reply as JSON:\n'
        '{"answer": "<the answer>", "quote": "<the sentence of the document the answer rests '
        'on, copied exactly>"}'
    )


def messages(text: str, question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt(text, question)}]


def fit(env: Environment, lm: LM, question: str, answer_tokens: int = O.ANSWER_TOKENS) -> dict[str, Any]:
    """Whether the whole target fits one call: the target's tokens, what the call needs
    (prompt and answer) and the window. A target whose chunks alone exceed the window is
    not tokenized whole (a corpus can be millions of tokens)."""
    window = lm.context_window
    tokens = sum(c.n_tokens for c in env.chunks)
    facts = {"tokens": tokens, "window": window, "answer_tokens": answer_tokens}
    if tokens + answer_tokens > window:
        return {**facts, "needed": tokens + answer_tokens, "fits": False}
    needed = O.prompt_tokens(lm, messages(env.text, question), O.QUOTE_SCHEMA) + answer_tokens + O.SAFETY
    return {**facts, "needed": needed, "fits": needed <= window}


def _check(options: dict[str, Any]) -> int:
    O.check_options(PIPELINE, options, OPTIONS)
    value = options.get("answer_tokens")
    return O.ANSWER_TOKENS if value is None else O.positive("answer_tokens", value, 16)


def _refusal(env: Environment, lm: LM, facts: dict[str, Any]) -> TomesError:
    from pipelines import overflow_advice

    advice = overflow_advice(PIPELINE)
    return TomesError(
        f"{env.target.label} ({env.target.title}) does not fit one call: it needs about "
        f"{facts['needed']:,} tokens with the prompt and the answer, and {lm.model} has a "
        f"{facts['window']:,}-token window",
        (f"{advice}; " if advice else "") + "or use a model with a larger window (`tomes models`)",
    )


def ask(target: str | int, question: str, *, on_event: OnEvent = ignore,
        run_id: str | None = None, lm: LM | None = None, **options: Any) -> Result:
    return run_sync(aask(target, question, on_event=on_event, run_id=run_id, lm=lm, **options))


def resume(run_id: str, *, on_event: OnEvent = ignore, lm: LM | None = None) -> Result:
    return run_sync(aresume(run_id, on_event=on_event, lm=lm))


async def aask(target: str | int, question: str, *, on_event: OnEvent = ignore,
               run_id: str | None = None, lm: LM | None = None, **options: Any) -> Result:
    answer_tokens = _check(options)
    question = (question or "").strip()
    if not question:
        raise TomesError("the question is empty", "ask a question in words")
    lm = lm or get_lm()
    env = await asyncio.to_thread(Environment.load, target, lm=lm)
    facts = fit(env, lm, question, answer_tokens)
    if not facts["fits"]:
        raise _refusal(env, lm, facts)  # before the run exists: nothing was spent
    params = {"answer_tokens": answer_tokens, **_runs.serving_of(lm)}
    run_id = await asyncio.to_thread(_runs.create_run, run_id, PIPELINE, env.target.label,
                                     question, params)
    return await O.execute(run_id, on_event, lambda: _answer(env, lm, question, answer_tokens,
                                                             run_id, on_event))


async def aresume(run_id: str, *, on_event: OnEvent = ignore, lm: LM | None = None) -> Result:
    """Run it again: a call that finished before the stop comes from the run's call log."""
    run, done = _runs.load_for_resume(run_id, PIPELINE)
    if done is not None:
        return done
    params = run["params"] or {}
    lm = lm or _runs.lm_for_run(run)
    env = Environment.load(run["target"], lm=lm)
    answer_tokens = params.get("answer_tokens", O.ANSWER_TOKENS)
    facts = fit(env, lm, run["question"], answer_tokens)
    if not facts["fits"]:
        raise _refusal(env, lm, facts)
    with replay_scope(run_id):  # a call that finished before the stop, even with the cache off
        return await O.execute(run_id, on_event, lambda: _answer(env, lm, run["question"],
                                                                 answer_tokens, run_id, on_event))


async def _answer(env: Environment, lm: LM, question: str, answer_tokens: int, run_id: str,
                  on_event: OnEvent) -> Result:
    from pipelines import overflow_advice

    on_event(Event("answer", 0, 1, message="reading the whole text in one call"))
    fallbacks: list[str] = []
    with lm.step("direct", "read the whole text in one call"):
        response = await O.call(lm, messages(env.text, question), schema=O.QUOTE_SCHEMA,
                                max_tokens=answer_tokens, node="direct",
                                advice=overflow_advice(PIPELINE))
    obj, answer = O.parse(response.text, fallbacks, "direct")
    quote = text_field(obj.get("quote"), 600)
    ids = [c.id for c in env.chunks]
    cited: list[int] = []
    if O.usable(answer):
        cited = _quoted(env, quote)
        if not cited:
            cited = R.supporting_chunks(env, ids, f"{answer} {quote}")
            fallbacks.append("direct: " + ("the quote given is not in the text" if quote else
                                           "no quote was given")
                             + "; the chunks sharing most words with the answer are the provenance")
    else:
        answer = O.NO_ANSWER
    support = _support(env, answer, cited)
    on_event(Event("answer", 1, 1, message="done"))
    usage = O.usage_of(response)
    return Result(
        answer=answer, provenance=R.provenance(env, cited, [], hint=f"{quote} {answer}"),
        run_id=run_id, pipeline=PIPELINE, **usage,
        details={"question": question, "target": env.target.label, "chunks": len(ids),
                 "quote": quote, "backend": lm.backend.name, "model": lm.model,
                 "fallbacks": fallbacks, "support": support},
    )


def _quoted(env: Environment, quote: str) -> list[int]:
    """The chunks holding the quoted sentence (more than one where it crosses a boundary)."""
    if len(quote) < 12:
        return []
    for doc in env.documents:
        span = G.find_quote(quote, env.text[doc.offset:doc.offset + doc.length])
        if span:
            start, end = span
            return [c.id for c in env.chunks
                    if c.document_id == doc.id and c.start < end and c.end > start][:3]
    return []


def _support(env: Environment, answer: str, cited: list[int]) -> dict[str, Any]:
    """The answer's sentences judged against the chunks it rests on."""
    if not cited or answer == O.NO_ANSWER:
        return {"sentences": 0, "supported": 0, "unsupported": []}
    judged = G.support(answer, "\n".join(env.chunk(c).text for c in cited))
    bad = [j for j in judged if not j.supported]
    return {"sentences": len(judged), "supported": len(judged) - len(bad),
            "unsupported": [j.to_dict() for j in bad]}
