"""The call log and the response cache, both in the ``calls`` table.

Every model call is one row: run id and parent call (so a run's calls form a tree),
node, backend, model, messages, parameters, response or error, tokens, latency, cache
hit. The cache is the log itself: a call's ``cache_key`` is a hash of (backend, model,
messages, parameters), and a later identical call reuses the newest successful row
with that key. Writes go through the store's engine (and its pragmas); on SQLite through
one connection kept open, each row inserted at once and committed within milliseconds
with the rows written meanwhile (``app.store._kept``), in WAL mode with
synchronous=NORMAL.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from app.store import Call, _kept, open_store
from app.store.models import utcnow

_calls = Call.__table__

# A pipeline step (a graph node: the map phase, one collapse level, the reduce) is a row
# too, with this as its backend and no messages, so the calls it caused sit under it in
# the tree. It asks no model: counts of calls and tokens leave steps out.
STEP = "step"


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def encode_messages(messages: list[dict[str, str]]) -> str:
    """The messages as the key hashes them, and as the log stores them: one encoding of
    a root prompt (the whole history) serves both."""
    return _canonical(messages)


def cache_key(backend: str, model: str, messages: list[dict[str, str]], params: dict[str, Any],
              *, encoded: str | None = None) -> str:
    """The hash of ``[backend, model, messages, params]`` as compact sorted JSON (pieced
    together around ``encoded``, when given: byte for byte the same, so keys written by
    earlier versions still hit)."""
    body = _canonical(messages) if encoded is None else encoded
    payload = f"[{_canonical(backend)},{_canonical(model)},{body},{_canonical(params)}]"
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Cached:
    call_id: int
    response: str
    prompt_tokens: int
    completion_tokens: int
    model: str


# Plain SQL on the pool's DBAPI connection: building SQLAlchemy statements costs more
# than the write itself (~0.5 ms a call), and this runs on every model call.
_LOOKUP = (
    "SELECT id, response, prompt_tokens, completion_tokens, model FROM calls "
    "WHERE cache_key = ? AND error IS NULL AND response IS NOT NULL AND trim(response) != '' "
    "ORDER BY id DESC LIMIT 1"
)
_INSERT = (
    "INSERT INTO calls (run_id, parent_id, node, backend, model, messages, params, response, "
    "prompt_tokens, completion_tokens, latency_ms, error, cache_hit, cache_key, created_at, "
    "cached_tokens) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


# The same on PostgreSQL (psycopg's placeholders, a real boolean and timestamp, the id
# from RETURNING: psycopg has no lastrowid).
_PG = {
    _LOOKUP: _LOOKUP.replace("?", "%s"),
    _INSERT: _INSERT.replace("?", "%s").replace("(%s, %s, %s, %s, %s, %s, %s,",
                                               "(%s, %s, %s, %s, %s, %s::json, %s::json,")
    + " RETURNING id",
}
_FINISH_STEP = ("UPDATE calls SET latency_ms = (julianday(?) - julianday(created_at)) * 86400000.0 "
                "WHERE id = ? AND backend = ?")
_PG[_FINISH_STEP] = ("UPDATE calls SET latency_ms = "
                     "EXTRACT(EPOCH FROM (%s::timestamp - created_at)) * 1000.0 "
                     "WHERE id = %s AND backend = %s")


def _sql(engine: Any, statement: str) -> str:
    return _PG[statement] if engine.dialect.name == "postgresql" else statement


# A resumed run's finished calls, by key, whether or not the cache is on: a resume must
# not redo what the run already paid for (a kill mid-collapse lost the level's finished
# merges with its checkpoint; a damaged checkpoints.db loses them all).
_LOOKUP_RUN = (
    "SELECT id, response, prompt_tokens, completion_tokens, model FROM calls "
    "WHERE cache_key = ? AND run_id = ? AND error IS NULL AND response IS NOT NULL "
    "AND trim(response) != '' ORDER BY id DESC LIMIT 1"
)
_PG[_LOOKUP_RUN] = _LOOKUP_RUN.replace("?", "%s")


def lookup_in_run(key: str, run_id: str, db_path: Path | str | None = None) -> Cached | None:
    """The newest successful call with this key made under ``run_id``, if any."""
    return _cached(_LOOKUP_RUN, (key, run_id), db_path)


def lookup(key: str, db_path: Path | str | None = None) -> Cached | None:
    """The newest successful call with this key, if any."""
    return _cached(_LOOKUP, (key,), db_path)


def _cached(statement: str, params: tuple, db_path: Path | str | None) -> Cached | None:
    engine = open_store(db_path)
    with _connection(engine) as conn:
        cursor = conn.cursor()
        row = cursor.execute(_sql(engine, statement), params).fetchone()
        cursor.close()  # the statement's read lock ends with it
        if engine.dialect.name != "sqlite":
            conn.rollback()  # end the read transaction
    return Cached(*row) if row else None


@contextmanager
def _connection(engine: Any, *, write: bool = False) -> Iterator[Any]:
    """SQLite: the engine's kept connection, a ``write`` committed within milliseconds
    with whatever else was written (``app.store._kept``); PostgreSQL: one from the pool
    (which pings it first), a ``write`` committed at once."""
    if engine.dialect.name == "sqlite":
        with _kept.connection(engine, write=write) as conn:
            yield conn
        return
    conn = engine.raw_connection()
    try:
        yield conn
        if write:
            conn.commit()
    except BaseException:
        conn.rollback()
        raise
    finally:
        conn.close()  # back to the pool


def record(
    *, run_id: str | None, parent_id: int | None, node: str | None, backend: str, model: str,
    messages: list[dict[str, str]] | str, params: dict[str, Any], response: str | None,
    prompt_tokens: int = 0, completion_tokens: int = 0, latency_ms: float = 0.0,
    error: str | None = None, cache_hit: bool = False, key: str | None = None,
    db_path: Path | str | None = None, cached_tokens: int = 0,
) -> int:
    """Write one call; returns its id. Values are stored the way the ``Call`` model
    reads them (JSON text, SQLAlchemy's datetime format); ``messages`` may come encoded
    already (``encode_messages``)."""
    values = (
        run_id, parent_id, node, backend, model,
        messages if isinstance(messages, str) else encode_messages(messages), json.dumps(params),
        response, int(prompt_tokens), int(completion_tokens), float(latency_ms), error,
        int(bool(cache_hit)), key, utcnow().strftime("%Y-%m-%d %H:%M:%S.%f"), int(cached_tokens),
    )
    engine = open_store(db_path)
    with _connection(engine, write=True) as conn:
        cursor = conn.cursor()
        if engine.dialect.name == "postgresql":
            values = (*values[:12], bool(cache_hit), key, utcnow(), int(cached_tokens))
            call_id = cursor.execute(_sql(engine, _INSERT), values).fetchone()[0]
        else:
            cursor.execute(_INSERT, values)
            call_id = cursor.lastrowid
    return int(call_id)


def record_step(*, run_id: str | None, parent_id: int | None, node: str, label: str,
                db_path: Path | str | None = None) -> int:
    return record(run_id=run_id, parent_id=parent_id, node=node, backend=STEP, model=label,
                  messages=[], params={}, response=None, db_path=db_path)


def finish_step(step_id: int, db_path: Path | str | None = None) -> None:
    """The step's wall time, from its start (a step may end in another process, after a
    resume)."""
    engine = open_store(db_path)
    with _connection(engine, write=True) as conn:
        conn.cursor().execute(
            _sql(engine, _FINISH_STEP),
            (utcnow().strftime("%Y-%m-%d %H:%M:%S.%f"), step_id, STEP))


def _preview(text: str | None, width: int = 80) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def call_tree(run_id: str, db_path: Path | str | None = None) -> list[dict[str, Any]]:
    """The run's calls as a forest: each node has its ``children`` (in call order).
    A call whose parent belongs to another run (or none) is a root."""
    query = select(_calls).where(_calls.c.run_id == run_id).order_by(_calls.c.id)
    with open_store(db_path).connect() as conn:
        rows = conn.execute(query).mappings().all()
    nodes: dict[int, dict[str, Any]] = {}
    roots: list[dict[str, Any]] = []
    for row in rows:
        node = {
            "id": row["id"], "parent_id": row["parent_id"], "node": row["node"],
            "backend": row["backend"], "model": row["model"],
            "prompt_tokens": row["prompt_tokens"], "completion_tokens": row["completion_tokens"],
            "cached_tokens": row["cached_tokens"] or 0,
            "latency_ms": round(row["latency_ms"], 2), "cache_hit": row["cache_hit"],
            "error": row["error"], "step": row["backend"] == STEP,
            "preview": _preview(row["error"] if row["error"] else row["response"]),
            "prompt_preview": _preview(_last_user(row["messages"])),
            "created_at": row["created_at"].isoformat(timespec="seconds") if row["created_at"] else None,
            "children": [],
        }
        nodes[row["id"]] = node
        parent = nodes.get(row["parent_id"]) if row["parent_id"] is not None else None
        (parent["children"] if parent else roots).append(node)
    return roots


def _last_user(messages: list[dict[str, str]] | None) -> str:
    for m in reversed(messages or []):
        if m.get("role") == "user":
            return str(m.get("content", ""))
    return ""


def summarize_tree(roots: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals over a call tree: calls, cache hits, errors, tokens, model time (steps are
    counted apart), and how deep it goes."""
    totals = {"calls": 0, "cache_hits": 0, "errors": 0, "prompt_tokens": 0,
              "completion_tokens": 0, "cached_tokens": 0, "latency_ms": 0.0, "steps": 0,
              "depth": 0}
    stack = [(n, 1) for n in roots]
    while stack:
        n, depth = stack.pop()
        stack.extend((c, depth + 1) for c in n["children"])
        totals["depth"] = max(totals["depth"], depth)
        if n.get("step"):
            totals["steps"] += 1
            continue
        totals["calls"] += 1
        totals["cache_hits"] += int(bool(n["cache_hit"]))
        totals["errors"] += int(bool(n["error"]))
        if not n["cache_hit"]:
            totals["prompt_tokens"] += n["prompt_tokens"]
            totals["completion_tokens"] += n["completion_tokens"]
            totals["cached_tokens"] += n.get("cached_tokens", 0)
            totals["latency_ms"] += n["latency_ms"]
    totals["latency_ms"] = round(totals["latency_ms"], 1)
    return totals
