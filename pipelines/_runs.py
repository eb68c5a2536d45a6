"""Run bookkeeping: the Run row every pipeline keeps, and the LangGraph checkpointer.

The Run row is what users list and resume (``tomes runs``, ``tomes resume RUN``); the
checkpoints (thread id = run id) are what makes a resumed run skip finished work.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from app.errors import NotFound, TomesError
from app.settings import get_settings
from app.store import Run, session_scope
from app.store.models import utcnow


def new_run_id() -> str:
    return str(uuid.uuid4())


def create_run(
    run_id: str | None, pipeline: str, target: str, question: str | None, params: dict[str, Any]
) -> str:
    run_id = run_id or new_run_id()
    with session_scope() as s:
        if s.get(Run, run_id) is not None:
            raise TomesError(f"run {run_id} already exists", f"continue it with `tomes resume {run_id}`")
        s.add(Run(id=run_id, pipeline=pipeline, target=target, question=question,
                  params=params, status="running"))
    return run_id


def load_run(run_id: str) -> dict[str, Any]:
    with session_scope() as s:
        run = s.get(Run, run_id)
        if run is None:
            raise NotFound(f"no run with id {run_id}", "list runs with `tomes runs`")
        return {c.name: getattr(run, c.name) for c in Run.__table__.columns}


def mark_running(run_id: str) -> None:
    _update(run_id, status="running", error=None, finished_at=None)


def finish_run(run_id: str, answer: str, result: dict[str, Any]) -> None:
    _update(run_id, status="done", answer=answer, result=result, error=None, finished_at=utcnow())


def fail_run(run_id: str, error: str) -> None:
    _update(run_id, status="failed", error=error, finished_at=utcnow())


def _update(run_id: str, **values: Any) -> None:
    with session_scope() as s:
        run = s.get(Run, run_id)
        if run is not None:
            for key, value in values.items():
                setattr(run, key, value)


@asynccontextmanager
async def checkpointer() -> AsyncIterator[Any]:
    """The SQLite checkpointer at ``checkpoint_path``. Async: the graphs run async so
    map calls overlap (the sync ``SqliteSaver`` refuses async use)."""
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    path = get_settings().checkpoint_path
    path.parent.mkdir(parents=True, exist_ok=True)
    async with AsyncSqliteSaver.from_conn_string(str(path)) as saver:
        yield saver
