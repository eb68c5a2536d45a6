"""Past and running runs: a table, one run's answer or error (resume, delete), the tree
of model calls it made, and what each call cost."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from app.errors import NotFound, TomesError
from ui import _calltree, _views
from ui._state import get_job, plain, start_run, tomes

st.header("Runs & calls")
rows = tomes().run_list(limit=200)
if not rows:
    st.info("No runs yet: ask a question or summarize on the Ask & summarize page.")
    st.stop()

by_id = {r["id"]: r for r in rows}


def what(r: dict) -> str:
    return r["question"] or ("summary" if r["pipeline"] == "mapreduce" else r["pipeline"])


def label(run_id: str) -> str:
    r = by_id[run_id]
    text = what(r)
    text = text if len(text) <= 70 else text[:69] + "…"
    return f"{text} · {r['target_title']} · {r['status']} · {r['created_at'].replace('T', ' ')}"


table = pd.DataFrame([{
    "created": r["created_at"].replace("T", " "), "question / task": what(r), "target": r["target_title"],
    "strategy": r["pipeline"], "status": r["status"], "calls": r["calls"], "cached": r["cache_hits"],
    "tokens": r["tokens"], "duration (s)": r["duration_s"],
} for r in rows])
picked = st.dataframe(table, hide_index=True, width="stretch", on_select="rerun",
                      selection_mode="single-row", key="runs_table", height=min(420, 38 + 35 * len(rows)))

ids = list(by_id)
# Three ways to pick a run, most recent intent first: a link (?run=ID), a click in the
# table, the selectbox.
wanted = st.query_params.get("run")
if wanted in by_id and ("run_pick" not in st.session_state
                        or st.session_state.get("runs_applied_link") != wanted):
    st.session_state.run_pick = wanted
    st.session_state.runs_applied_link = wanted
selected = list(getattr(getattr(picked, "selection", None), "rows", []) or [])
if selected and selected != st.session_state.get("runs_applied_rows"):
    st.session_state.run_pick = ids[selected[0]]
st.session_state.runs_applied_rows = selected
if st.session_state.get("run_pick") not in by_id:
    st.session_state.pop("run_pick", None)
run_id = st.selectbox("Run", ids, format_func=label, key="run_pick")
st.query_params["run"] = run_id
st.session_state.runs_applied_link = run_id

t = tomes()
try:
    run = t.run(run_id)
except NotFound:
    st.rerun()  # deleted meanwhile
job = get_job(run_id)
about = {"task": "ask" if run["question"] else "summarize", "question": run["question"],
         "target": run["target"], "target_title": run["target_title"], "strategy": run["pipeline"]}

meta = st.columns(4)
meta[0].metric("status", run["status"])
meta[1].metric("strategy", run["pipeline"])
meta[2].metric("calls", by_id[run_id]["calls"])
meta[3].metric("duration", f"{by_id[run_id]['duration_s']:.1f} s")
st.caption(f"{plain(run['target_title'])} · started {run['created_at'].replace('T', ' ')}"
           + (f" · finished {run['finished_at'].replace('T', ' ')}" if run["finished_at"] else "")
           + f" · id `{run_id}`")


def live() -> None:
    current = get_job(run_id)
    if current is None or not current.running:
        st.rerun()
    _views.progress(current)


if job is not None and job.running:
    st.fragment(run_every=1.0)(live)()
elif run["status"] == "done" and run["result"]:
    with st.expander("Answer and what it rests on", expanded=True):
        _views.result(run["result"], about, key=f"run_{run_id}")
elif run["status"] in ("failed", "interrupted"):
    failure = job.error if job is not None and job.error is not None else None
    if failure is not None:
        _views.error(f"This run {run['status']}", failure)
    else:
        _views.error(f"This run {run['status']}", cause=run["error"] or run["status"],
                     fix="resume it: finished calls are kept and not made again")
    if st.button("Resume", type="primary", icon=":material/play_arrow:", key=f"resume_{run_id}"):
        try:
            start_run("resume", f"resume {what(by_id[run_id])} · {run['target_title']}", meta=about,
                      work=lambda rid, on_event: t.resume(rid, on_event=on_event), run_id=run_id)
        except TomesError as exc:
            _views.error("Could not resume", exc)
        else:
            st.rerun()
elif run["status"] == "running":
    st.info("This run is being worked on by another process "
            "(the CLI, or another tomes UI); it shows here as it goes.")

with st.popover("Delete this run", icon=":material/delete:", disabled=run["status"] == "running"):
    st.write("Its answer, its model calls (and their cached replies) and its checkpoints go.")
    if st.button("Delete", type="primary", key=f"delete_{run_id}"):
        try:
            t.delete_run(run_id)
        except TomesError as exc:
            _views.error("Could not delete", exc)
        else:
            st.session_state.pop("run_pick", None)
            st.query_params.pop("run", None)
            st.rerun()

# --- the call tree ---------------------------------------------------------------------

st.subheader("Model calls")
try:
    tree = t.call_tree(run_id)
except NotFound:
    st.info("This run made no model calls (yet).")
    st.stop()
roots, totals = tree["calls"], tree["totals"]
m = st.columns(5)
m[0].metric("calls", totals["calls"])
m[1].metric("cache hits", totals["cache_hits"])
m[2].metric("failed calls", totals["errors"])
m[3].metric("tokens", f"{totals['prompt_tokens'] + totals['completion_tokens']:,}")
m[4].metric("model time", f"{totals['latency_ms'] / 1000:.1f} s")

foldable = _calltree.foldable(roots)
expanded: set[str] = set()
if foldable:
    keys = [g.key for g in foldable]
    names = {g.key: g.label for g in foldable}
    expanded = set(st.multiselect(
        "Unfolded groups", keys, default=sorted(_calltree.default_expanded(roots)), format_func=names.get,
        key=f"unfold_{run_id}",
        help="Sibling calls of one kind are drawn as one box with their totals; unfold a group "
             "to draw its calls one by one.",
    ))
depth = _calltree.depth_of(roots)
levels = st.slider("Levels drawn", 1, depth, min(depth, 3), key=f"levels_{run_id}") if depth > 1 else None

flat = _calltree.model_calls(roots)
if not flat:
    st.info("This run has started its steps but made no model call yet.")
    st.stop()
logged = {c["id"]: c for c in t.calls(run_id)}  # full rows: prompts and replies
pick = st.session_state.get(f"call_{run_id}")
st.graphviz_chart(_calltree.dot(roots, expanded=expanded, max_depth=levels,
                                title=f"run: {what(by_id[run_id])[:40]}", selected=pick),
                  width="content")  # its own size, shrunk to the page when larger

frame = pd.DataFrame([{
    "n": i + 1, "call": c["id"], "node": c["node"] or "call", "prompt tokens": c["prompt_tokens"],
    "completion tokens": c["completion_tokens"], "latency (ms)": c["latency_ms"],
    "cached": bool(c["cache_hit"]),
} for i, c in enumerate(flat)])
left, right = st.columns(2)
tokens = frame.melt(id_vars=["n", "call", "node"], value_vars=["prompt tokens", "completion tokens"],
                    var_name="kind", value_name="tokens")
left.altair_chart(
    alt.Chart(tokens, title="Tokens per call").mark_bar().encode(
        x=alt.X("n:O", title="call, in order", axis=alt.Axis(labels=len(frame) <= 40)),
        y=alt.Y("tokens:Q", stack=True), color=alt.Color("kind:N", legend=alt.Legend(orient="bottom")),
        tooltip=["call", "node", "kind", "tokens"]),
    width="stretch")
right.altair_chart(
    alt.Chart(frame, title="Latency per call").mark_bar().encode(
        x=alt.X("n:O", title="call, in order", axis=alt.Axis(labels=len(frame) <= 40)),
        y=alt.Y("latency (ms):Q"), color=alt.Color("node:N", legend=alt.Legend(orient="bottom")),
        tooltip=["call", "node", "latency (ms)", "cached"]),
    width="stretch")

# --- the recursive controller's iterations ---------------------------------------------

steps = ((run.get("result") or {}).get("details") or {}).get("steps") or []
if steps:
    st.subheader(f"Iterations ({len(steps)})")
    for s in steps:
        what_ran = s.get("what") or {}
        title = f"iteration {s.get('n')}" + (" · failed" if s.get("error") else "") + (
            f" · {s['seconds']:.1f} s" if s.get("seconds") is not None else "")
        with st.expander(title, expanded=len(steps) <= 3):
            call = logged.get(s.get("call_id"))
            if "code" in what_ran:
                st.caption("Code it wrote" + (f" (call #{s['call_id']})" if s.get("call_id") else ""))
                # The whole reply when the call is at hand: the details keep only 200 characters.
                st.code((call or {}).get("response") or "\n\n".join(what_ran["code"]) or "(no code)",
                        language="python", wrap_lines=True)
            else:
                st.caption("Action it chose")
                st.json(what_ran, expanded=True)
            st.caption("Output it saw")
            st.code(s.get("observation") or "(no output)", language=None, wrap_lines=True)

# --- one call --------------------------------------------------------------------------

call_ids = [c["id"] for c in flat]
brief = {c["id"]: f"#{c['id']} {c['node'] or 'call'} · {c['prompt_tokens']}+{c['completion_tokens']} tok · "
                  f"{c['latency_ms']:.0f} ms" + (" · cached" if c["cache_hit"] else "")
                  + (" · FAILED" if c["error"] else "") for c in flat}
chosen = st.selectbox("Look at a call", call_ids, format_func=brief.get, key=f"call_{run_id}")
full = logged.get(chosen)
if full is not None:
    if full["error"]:
        st.error(full["error"])
    code_like = (full["node"] or "") in ("root", "iteration", "code") or "```" in (full["response"] or "")
    st.caption("Reply")
    st.code(full["response"] or "", language="python" if code_like else None, wrap_lines=True)
    st.caption("Prompt")
    for msg in full["messages"]:
        st.code(f"[{msg.get('role', '?')}]\n{msg.get('content', '')}", language=None, wrap_lines=True)
    st.json({"params": full["params"], "backend": full["backend"], "model": full["model"],
             "parent": full["parent_id"]}, expanded=False)
