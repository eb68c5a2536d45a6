"""Pipelines: the Environment over a target and one LangGraph graph per strategy.

Importing this package stays cheap (no LangGraph): strategies are imported when run.
"""

from __future__ import annotations

import importlib

from app.errors import TomesError
from app.events import OnEvent, ignore
from pipelines.result import Provenance, Result

# Strategies ``ask`` accepts, by name -> the module that runs them. Each module has
# ``ask(target, question, *, on_event, run_id, **options) -> Result`` and
# ``resume(run_id, *, on_event, lm=None) -> Result`` (``lm``: the run's own model, found by
# ``pipelines._runs.lm_for_run``; runs save ``_runs.serving_of(lm)`` in their params); options a strategy does not know are refused
# by it with a TomesError.
STRATEGIES: dict[str, str] = {
    "mapreduce": "pipelines.mapreduce",
    "memory": "pipelines.episodic",
    "recursive": "pipelines.recursive",
    "direct": "pipelines.direct",
    "rag": "pipelines.rag",
    "auto": "pipelines.auto",
}


def strategy_module(name: str):
    """The module that runs a strategy, imported only when chosen."""
    if name not in STRATEGIES:
        raise TomesError(f"unknown strategy {name!r}", f"use one of: {', '.join(STRATEGIES)}")
    return importlib.import_module(STRATEGIES[name])


def overflow_advice(running: str | None = None) -> str:
    """What to do about a context overflow: the strategies that exist and read the text
    in pieces, never the one that just overflowed."""
    others = [name for name in STRATEGIES if name not in (running, "direct")]
    ways = [f"`tomes ask TARGET QUESTION --strategy {name}`" for name in others]
    if running != "mapreduce" and "mapreduce" in STRATEGIES:
        ways.append("`tomes summarize TARGET`")
    return ("read the text in pieces: " + " or ".join(ways)) if ways else ""


def resume(run_id: str, *, on_event: OnEvent = ignore,
           serving: dict[str, str | None] | None = None) -> Result:
    """Continue a run with the pipeline that started it, on the model it started with
    (``serving``: backend/model/base_url named explicitly instead)."""
    from pipelines._runs import lm_for_run, load_run

    run = load_run(run_id)
    pipeline = run["pipeline"]
    if pipeline not in STRATEGIES:
        raise TomesError(f"run {run_id} was made by {pipeline!r}, which cannot resume runs",
                         "start it again")
    from pipelines._dispatch import annotated  # what auto chose, and why

    if run["status"] == "done" and run["result"]:
        # needs no model, reachable or not
        return annotated(Result.from_dict(run["result"]), run["params"] or {})
    lm = lm_for_run(run, serving)
    return annotated(strategy_module(pipeline).resume(run_id, on_event=on_event, lm=lm),
                     run["params"] or {})


__all__ = ["STRATEGIES", "Provenance", "Result", "overflow_advice", "resume", "strategy_module"]
