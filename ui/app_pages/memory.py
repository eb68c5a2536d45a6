"""The episodic memory workspace of a document or corpus (``Tomes.memory``): how much of
it is read (and building the rest), its entities with their timelines, its places with
the events there by time, every entry linked to the reader.

Guarded: the app works whether or not this install has the workspace."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from app.api import Tomes
from app.errors import TomesError
from ui import _views
from ui._state import code, get_job, plain, start_run, tomes

st.header("Memory")

if not callable(getattr(Tomes, "memory", None)):
    st.info(
        "The episodic memory workspace is not built in this install: this version of tomes "
        "has no memory builder yet (`Tomes().memory`, the `memory/` package). Once it has one, "
        "build a corpus's workspace with `tomes memory build corpus:NAME`, and this page lists "
        "its entities with their timelines, and its events by time and place, each linked to "
        "the reader."
    )
    st.stop()

t = tomes()
docs = t.documents()
if not docs:
    st.info("Add documents in the Library first.")
    st.stop()

targets = [f"corpus:{c}" for c in sorted({d["corpus"] for d in docs})] + [str(d["id"]) for d in docs]
titles = {str(d["id"]): f"{d['title']} (document {d['id']})" for d in docs}
titles |= {x: f"corpus {x[7:]} (all its documents)" for x in targets if x.startswith("corpus:")}
target = st.selectbox("Workspace of", targets, format_func=lambda x: titles.get(x, x))
TOP = 50


def reader_url(item: dict[str, Any]) -> str | None:
    if item.get("document_id") is None:
        return None
    url = f"reader?doc={item['document_id']}&chunk={item['chunk_id']}"
    return url + (f"&start={item['start']}" if item.get("start") is not None else "")


def timeline_table(items: list[dict[str, Any]], *, who: bool = True) -> None:
    """A timeline as a table, in the order the text tells it; each row opens the reader."""
    rows = [{
        "when": (item.get("time") or item.get("date") or "")
        + (" (carried)" if item.get("time_carried") and (item.get("time") or item.get("date")) else ""),
        "date": item.get("date") or "",
        "where": item.get("place") or "",
        "what": item.get("type", ""),
        "role, state or event": item.get("text", ""),
        **({"with": ", ".join(item.get("with") or [])} if who else {}),
        "source": reader_url(item),
    } for item in items]
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", column_config={
        "source": st.column_config.LinkColumn("source", display_text="read"),
        "role, state or event": st.column_config.TextColumn(width="large"),
    })


# --- how much is read, and building the rest -----------------------------------------------

job_key = f"memory_job:{target}"


def build_panel() -> None:
    job = get_job(st.session_state.get(job_key))
    if job is None:
        return
    if job.running:
        _views.progress(job)
        return
    if st.session_state.get(f"{job_key}:shown") != job.id:
        st.session_state[f"{job_key}:shown"] = job.id
        st.rerun()  # the whole page shows what the build added
    if job.error is not None:
        _views.error("Building the workspace failed", job.error)
    else:
        st.success(f"Built · {job.result.calls} model calls · run `{job.result.run_id}` "
                   "(its calls are in Runs & calls)")


building = (job := get_job(st.session_state.get(job_key))) is not None and job.running
st.fragment(run_every=1.0 if building else None)(build_panel)()

try:
    ws = t.memory(target, top=TOP)
except TomesError as exc:
    _views.error("Cannot open the memory workspace", exc)
    st.stop()

counts = ws.get("counts") or {}
m = st.columns(5)
m[0].metric("chunks read", f"{counts.get('chunks_read', 0):,} of {counts.get('chunks', 0):,}")
m[1].metric("entities", counts.get("entities", 0))
m[2].metric("places", counts.get("places", 0))
m[3].metric("events", counts.get("events", 0))
m[4].metric("roles and states", counts.get("states", 0))

if not ws.get("complete") and not building:
    left, right = st.columns([3, 1], vertical_alignment="center")
    left.info(f"{counts.get('chunks', 0) - counts.get('chunks_read', 0):,} chunks of "
              f"{plain(titles.get(target, target))} are not read into the workspace yet. Build it "
              f"here or with {code(f'tomes memory build {target}')}: a model call per chunk, "
              "resumable, only the chunks it lacks.")
    if right.button("Build the workspace", type="primary", icon=":material/hub:"):
        label = f"memory build {titles.get(target, target)}"
        job = start_run("memory", label, meta={"task": "memory", "target": target},
                        work=lambda run_id, on_event: t.memory_build(target, on_event=on_event,
                                                                     run_id=run_id))
        st.session_state[job_key] = job.id
        st.rerun()

entities = ws.get("top_entities") or []
places = ws.get("top_places") or []
if not entities and not places:
    st.stop()

# --- entities and their timelines -------------------------------------------------------------

st.subheader("Entities")
if entities:
    st.dataframe(pd.DataFrame([{
        "name": e["name"], "kind": e.get("kind", ""),
        "also called": ", ".join(a for a in e.get("aliases", []) if a != e["name"]),
        "mentions": e.get("mentions", 0), "chunks": e.get("chunks", 0),
    } for e in entities]), hide_index=True, width="stretch")
    if counts.get("entities", 0) > len(entities):
        st.caption(f"The {len(entities)} mentioned most, of {counts['entities']:,}.")


def timeline_of(name: str) -> dict[str, Any] | None:
    try:
        return t.memory(target, entity=name)
    except TomesError as exc:
        _views.error(f"No timeline for {name}", exc)
        return None


if entities:
    names = [e["name"] for e in entities]
    chosen = st.selectbox("Timeline of", names, key=f"memory_entity:{target}")
    view = timeline_of(chosen)
    if view is not None:
        e = view.get("entity") or {}
        others = [a for a in e.get("aliases", []) if a != e.get("name")]
        st.caption(f"{plain(e.get('name', chosen))} ({plain(e.get('kind', '?'))}"
                   + (f"; also called {plain(', '.join(others))}" if others else "") + ") · "
                   f"{e.get('mentions', 0)} mentions · roles, states and events in the order the text tells them")
        if view.get("timeline"):
            timeline_table(view["timeline"])
        else:
            st.caption("Nothing recorded about this entity beyond its name.")

# --- places and the events there ---------------------------------------------------------------

st.subheader("Events by place and time")
if places:
    st.dataframe(pd.DataFrame([{
        "place": p["name"], "also called": ", ".join(a for a in p.get("aliases", []) if a != p["name"]),
        "mentions": p.get("mentions", 0),
    } for p in places]), hide_index=True, width="stretch")
    where = st.selectbox("Events at", [p["name"] for p in places], key=f"memory_place:{target}")
    view = timeline_of(where)
    if view is not None:
        events = view.get("timeline") or []  # a place's timeline: the events there
        if events:
            timeline_table(events)
        else:
            st.caption("No event recorded at this place.")
else:
    st.caption("No places recorded.")
