"""Auto: picks the strategy for a target and a question, and records which and why.

``rule`` is the whole choice, one line per strategy, first match wins: direct when the
target fits the window with room to answer; memory for a who/where/when question over
a target whose memory workspace is built; rag for a short factual question whose
words the top retrieval hits carry; map-reduce for summaries and for questions that
need the whole text. The facts it decides on (``Facts``) are gathered cheaply - token
counts the store already has, one search only when it matters - and saved with the
choice in the result's details and the run's params.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import asdict, dataclass
from typing import Any

from app.errors import TomesError
from app.events import OnEvent, ignore
from pipelines import _dispatch as D
from pipelines import _grounding as G
from pipelines import _runs
from pipelines.environment import Environment, sharing
from pipelines.result import Result
from serving.lm import LM, get_lm, run_sync

PIPELINE = "auto"
# Strategies auto may choose, in the order of the rule.
CANDIDATES = ("direct", "memory", "rag", "recursive", "mapreduce")
MAX_LOCAL_WORDS = 20  # a longer question is rarely one fact
STRONG_SHARE = 0.5  # of the question's content words, found in one passage rag would read
# Words that ask about the whole text: no few passages can carry the answer.
_WHOLE = re.compile(
    r"\b(summar\w*|overall|throughout|whole|entire\w*|all (?:the|of)|every\w*|list (?:all|the)"
    r"|how (?:many times|often)|chang\w*|develop\w*|evolv\w*|themes?|main (?:ideas?|points?|"
    r"arguments?)|compar\w*|contrast\w*|relationships?|over the course|in general|trace"
    r"|timeline|chronolog\w*|arc)\b", re.I)
# Words that ask who did what, where and when: what the episodic workspace holds.
_EPISODIC = re.compile(
    r"\b(who|whom|whose|where|when|what happened|before|after|first|last|met|meet\w*"
    r"|married|died|moved|went|left|arrived|visit\w*)\b", re.I)


@dataclass
class Facts:
    summary: bool
    tokens: int  # of the target
    window: int
    fits: bool  # the whole target, the prompt and the answer fit one call
    local: bool  # a short factual question
    local_why: str
    strong: bool  # the top hits carry the question's words
    evidence: str  # what the hits showed ("" when there was no search)
    writes_code: bool  # the model's preset says it writes code
    available: tuple[str, ...]  # strategies registered here
    episodic: str = ""  # the word that asks who/where/when ("" when none does)
    memory_built: bool = False  # the target's memory workspace has read every chunk

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["available"] = list(self.available)
        return out


def rule(f: Facts) -> tuple[str, str]:
    """(strategy, why). Each strategy that joins adds its one line."""
    if f.summary:
        return "mapreduce", "a summary reads the whole text"
    if f.fits:
        return "direct", (f"the whole target ({f.tokens:,} tokens) fits the {f.window:,}-token "
                          "window with room to answer")
    if f.episodic and f.memory_built and "memory" in f.available:
        return "memory", (f"the question asks {f.episodic!r} and the target's memory "
                          "workspace is built: its events and states answer in one call")
    if f.local and f.strong and "rag" in f.available:
        return "rag", f"{f.local_why}, and the top hits carry it ({f.evidence})"
    if f.writes_code and "recursive" in f.available:
        return "recursive", (f"too long for one call ({f.tokens:,} tokens) and "
                             f"{_not_rag(f)}; the model writes code, so the recursive "
                             "controller reads what it needs")
    return "mapreduce", (f"too long for one call ({f.tokens:,} tokens) and {_not_rag(f)}: "
                         "map-reduce reads every part")


def _not_rag(f: Facts) -> str:
    if not f.local:
        return f.local_why
    return f"the top hits do not carry the question ({f.evidence or 'no hits'})"


# --- the facts -------------------------------------------------------------------------


def locality(question: str) -> tuple[bool, str]:
    """(whether a few passages can carry the answer, why) from the question's words."""
    whole = _WHOLE.search(question)
    if whole:
        return False, f"the question asks about the whole text ({whole.group(0)!r})"
    words = len(question.split())
    if words > MAX_LOCAL_WORDS:
        return False, f"a long question ({words} words) rarely asks one fact"
    return True, f"a short factual question ({words} words)"


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            return word[: -len(suffix)]
    return word


def strength(question: str, hits: list[Any]) -> tuple[bool, str]:
    """(whether the hits are strong, what they showed): one of the passages rag would
    read holds at least half of the question's content words."""
    wanted = {_stem(w) for w in G.content_words(question)}
    if len(wanted) < 2:
        return False, "the question has too few distinctive words to judge hits by"
    if not hits:
        return False, "no hits"
    best, best_hit = 0.0, hits[0]
    for hit in hits:
        share = len(wanted & {_stem(w) for w in G.content_words(hit.text)}) / len(wanted)
        if share > best:
            best, best_hit = share, hit
    where = (f"chunk {best_hit.chunk_id}, hit {hits.index(best_hit) + 1} of {len(hits)}, "
             f"holds {best:.0%} of the question's words")
    return best >= STRONG_SHARE, where


def memory_built(env: Environment) -> bool:
    """Whether the operator has read every chunk of the target (``tomes memory build``):
    answering from a workspace is cheap, building one is a call per chunk."""
    from sqlalchemy import func, select

    from app.store import Chunk, session_scope
    from memory.schema import MemExtraction

    if not env.chunks:
        return False
    in_target = select(Chunk.id).where(Chunk.document_id.in_([d.id for d in env.documents]))
    with session_scope() as s:
        read = s.scalar(select(func.count()).select_from(MemExtraction)
                        .where(MemExtraction.chunk_id.in_(in_target))) or 0
    return read >= len(env.chunks)


def writes_code(lm: LM) -> bool:
    from serving import presets

    backend = lm.backend.name
    preset = presets.EMBEDDED if backend in ("embedded", "transformers") else presets.find(lm.model)
    return bool(preset and preset.writes_code)


async def gather(env: Environment, lm: LM, question: str | None, *, k: int | None = None) -> Facts:
    """What the rule decides on; the search runs only when the choice turns on it."""
    from pipelines import STRATEGIES, direct, rag

    available = tuple(n for n in CANDIDATES if n in STRATEGIES)
    tokens = sum(c.n_tokens for c in env.chunks)
    facts = Facts(summary=question is None, tokens=tokens, window=lm.context_window,
                  fits=False, local=False, local_why="", strong=False, evidence="",
                  writes_code=writes_code(lm), available=available)
    if question is None:
        return facts
    facts.fits = "direct" in available and direct.fit(env, lm, question)["fits"]
    facts.local, facts.local_why = locality(question)
    episodic = _EPISODIC.search(question)
    facts.episodic = episodic.group(0).lower() if episodic else ""
    if facts.episodic and not facts.fits and "memory" in available:
        facts.memory_built = await asyncio.to_thread(memory_built, env)
    if not facts.fits and facts.local and "rag" in available:
        hits = await asyncio.to_thread(env.search, question, k or rag.DEFAULT_K)
        facts.strong, facts.evidence = strength(question, hits)
    return facts


# --- running ---------------------------------------------------------------------------


def _options() -> tuple[str, ...]:
    from pipelines import STRATEGIES, strategy_module

    names: list[str] = []
    for name in CANDIDATES:
        if name in STRATEGIES:
            names += [o for o in D.options_of(strategy_module(name)) if o not in names]
    return tuple(names)


def _split(chosen: str, options: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(the options the chosen strategy takes, those it does not: dropped, and said so)."""
    from pipelines import strategy_module

    known = set(_options())
    unknown = sorted(set(options) - known)
    if unknown:
        raise TomesError(
            f"no strategy auto can choose has the option{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(unknown)}", f"use {', '.join(sorted(known))}")
    takes = set(D.options_of(strategy_module(chosen)))
    return ({k: v for k, v in options.items() if k in takes},
            sorted(k for k in options if k not in takes))


def ask(target: str | int, question: str, *, on_event: OnEvent = ignore,
        run_id: str | None = None, lm: LM | None = None, **options: Any) -> Result:
    return run_sync(aask(target, question, on_event=on_event, run_id=run_id, lm=lm, **options))


def summarize(target: str | int, *, length: str = "medium", style: str | None = None,
              on_event: OnEvent = ignore, run_id: str | None = None, lm: LM | None = None,
              **options: Any) -> Result:
    return run_sync(asummarize(target, length=length, style=style, on_event=on_event,
                               run_id=run_id, lm=lm, **options))


def resume(run_id: str, *, on_event: OnEvent = ignore, lm: LM | None = None) -> Result:
    """An auto run is a run of the strategy it chose: that strategy resumes it."""
    return run_sync(D.aresume(run_id, on_event=on_event, lm=lm))


async def aresume(run_id: str, *, on_event: OnEvent = ignore, lm: LM | None = None) -> Result:
    return await D.aresume(run_id, on_event=on_event, lm=lm)


async def aask(target: str | int, question: str, *, on_event: OnEvent = ignore,
               run_id: str | None = None, lm: LM | None = None, **options: Any) -> Result:
    question = (question or "").strip()
    if not question:
        raise TomesError("the question is empty", "ask a question in words")
    _split("mapreduce", options)  # unknown options fail before any work
    lm = lm or get_lm()
    with sharing():  # the chosen strategy reads the target auto has loaded
        env = Environment.load(target, lm=lm)
        facts = await gather(env, lm, question, k=options.get("k"))
        chosen, why = rule(facts)
        passed, dropped = _split(chosen, options)
        return await _run(chosen, why, facts, dropped, D.aask(
            chosen, env.target.label, question, on_event=on_event, run_id=run_id, lm=lm,
            **passed))


async def asummarize(target: str | int, *, length: str = "medium", style: str | None = None,
                     on_event: OnEvent = ignore, run_id: str | None = None, lm: LM | None = None,
                     **options: Any) -> Result:
    lm = lm or get_lm()
    with sharing():
        env = Environment.load(target, lm=lm)
        facts = await gather(env, lm, None)
        chosen, why = rule(facts)
        return await _run(chosen, why, facts, [], D.asummarize(
            env.target.label, length=length, style=style, on_event=on_event, run_id=run_id,
            lm=lm, **options))


async def _run(chosen: str, why: str, facts: Facts, dropped: list[str], work: Any) -> Result:
    notes = {"strategy": chosen, "why": why, "chosen_by": "auto", "auto": facts.to_dict()}
    if dropped:
        notes["dropped_options"] = dropped
    token = _runs.run_notes.set({**(_runs.run_notes.get() or {}), **notes})
    try:
        result = await work
    finally:
        _runs.run_notes.reset(token)
    result.details.update(notes)
    # The run's stored result says it too (``tomes runs``, the UI, a resume of a done run).
    _runs.finish_run(result.run_id, result.answer, result.to_dict())
    return result


def __getattr__(name: str) -> Any:
    # Computed: the options of whichever strategies are registered when asked.
    if name == "OPTIONS":
        return _options()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
