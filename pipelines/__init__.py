"""Pipelines: the Environment over a target and one LangGraph graph per strategy.

Importing this package stays cheap (no LangGraph): strategies are imported when run.
"""

from __future__ import annotations

import importlib

from app.errors import TomesError
from app.events import OnEvent, ignore
from pipelines.result import Provenance, Result

# Strategies ``ask`` accepts, by name; more arrive with their issues.
STRATEGIES: dict[str, str] = {"mapreduce": "pipelines.mapreduce"}


def resume(run_id: str, *, on_event: OnEvent = ignore) -> Result:
    """Continue a run with the pipeline that started it."""
    from pipelines._runs import load_run

    pipeline = load_run(run_id)["pipeline"]
    if pipeline not in STRATEGIES:
        raise TomesError(f"run {run_id} was made by {pipeline!r}, which cannot resume runs",
                         "start it again")
    return importlib.import_module(STRATEGIES[pipeline]).resume(run_id, on_event=on_event)


__all__ = ["STRATEGIES", "Provenance", "Result", "resume"]
