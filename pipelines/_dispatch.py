"""Running any registered strategy from async code: its options checked the same way,
its async entry point found (or its sync one run off the event loop), and resumes that
continue on the run's own model.

What the auto strategy and the batch runner use to call strategies by name.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

from app.errors import TomesError
from app.events import OnEvent, ignore
from pipelines.result import Result

# Keyword arguments of a strategy's ``ask`` that are not its options.
_PLUMBING = ("on_event", "run_id", "lm")


def options_of(module: Any) -> tuple[str, ...]:
    """A strategy's options: its ``OPTIONS``, else the keyword-only arguments of its ``ask``."""
    declared = getattr(module, "OPTIONS", None)
    if declared is not None:
        return tuple(declared)
    params = inspect.signature(module.ask).parameters.values()
    return tuple(p.name for p in params
                 if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _PLUMBING)


def check_options(name: str, module: Any, options: dict[str, Any]) -> None:
    known = options_of(module)
    unknown = sorted(set(options) - set(known) - set(_PLUMBING))
    if unknown:
        plural = "s" if len(unknown) > 1 else ""
        raise TomesError(f"the {name} strategy has no option{plural} {', '.join(unknown)}",
                         f"use {', '.join(known)}" if known else f"{name} takes no options")


async def aask(name: str, target: str | int, question: str, *, on_event: OnEvent = ignore,
               run_id: str | None = None, lm: Any = None, **options: Any) -> Result:
    from pipelines import strategy_module

    module = strategy_module(name)
    check_options(name, module, options)
    if hasattr(module, "aask"):
        return await module.aask(target, question, on_event=on_event, run_id=run_id, lm=lm,
                                 **options)
    if hasattr(module, "arun"):  # map-reduce: one runner for questions and summaries
        return await module.arun(target, mode="qa", question=question, on_event=on_event,
                                 run_id=run_id, lm=lm, **options)
    return await asyncio.to_thread(module.ask, target, question, on_event=on_event,
                                   run_id=run_id, lm=lm, **options)


async def asummarize(target: str | int, *, length: str = "medium", style: str | None = None,
                     on_event: OnEvent = ignore, run_id: str | None = None, lm: Any = None,
                     **options: Any) -> Result:
    """A summary: map-reduce reads the whole text (the other strategies answer questions)."""
    from pipelines import mapreduce

    unknown = sorted(set(options) - {"map_tokens", "grounding", "strict"})
    if unknown:
        raise TomesError(f"a summary has no option{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(unknown)}", "use map_tokens, grounding, strict")
    return await mapreduce.arun(target, mode="summary", length=length, style=style,
                                on_event=on_event, run_id=run_id, lm=lm, **options)


async def aresume(run_id: str, *, on_event: OnEvent = ignore, lm: Any = None,
                  serving: dict[str, Any] | None = None) -> Result:
    """``pipelines.resume`` for async code. ``lm`` is used when it is the model the run
    started on (a batch's shared model); otherwise the run's own is found."""
    from pipelines import STRATEGIES, strategy_module
    from pipelines._runs import SERVING_KEYS, lm_for_run, load_run, serving_of

    run = load_run(run_id)
    pipeline = run["pipeline"]
    if pipeline not in STRATEGIES:
        raise TomesError(f"run {run_id} was made by {pipeline!r}, which cannot resume runs",
                         "start it again")
    params = run["params"] or {}
    if run["status"] == "done" and run["result"]:
        return annotated(Result.from_dict(run["result"]), params)
    same = lm is not None and not serving and all(
        serving_of(lm).get(k) == params.get(k) for k in SERVING_KEYS if params.get(k))
    if not same:
        lm = await asyncio.to_thread(lm_for_run, run, serving)
    module = strategy_module(pipeline)
    if hasattr(module, "aresume"):
        result = await module.aresume(run_id, on_event=on_event, lm=lm)
    else:
        result = await asyncio.to_thread(module.resume, run_id, on_event=on_event, lm=lm)
    return annotated(result, params)


def annotated(result: Result, params: dict[str, Any]) -> Result:
    """A result with the strategy that made it and why (what ``auto`` saved in the run)."""
    if params.get("why") and "why" not in result.details:
        result.details["strategy"] = params.get("strategy") or result.pipeline
        result.details["why"] = params["why"]
    return result
