"""Ask a question or summarize, with progress and provenance.

A run belongs to the app, not the page: it runs in a worker thread held by the process
(ui._state), and this page polls it, so it keeps going while you look elsewhere; several
can run at once."""

from __future__ import annotations

import inspect

import streamlit as st

from app.api import Tomes
from app.errors import TomesError
from ui import _views
from ui._state import Job, link, my_runs, plain, serving, start_run, tomes

st.header("Ask & summarize")
docs = tomes().documents()
if not docs:
    st.info("Add documents in the Library first.")
    st.stop()

targets = [f"corpus:{c}" for c in sorted({d["corpus"] for d in docs})] + [str(d["id"]) for d in docs]
titles = {str(d["id"]): f"{d['title']} (document {d['id']})" for d in docs}
titles |= {t: f"corpus {t[7:]} (all its documents)" for t in targets if t.startswith("corpus:")}
target = st.selectbox("Over", targets, format_func=lambda t: titles.get(t, t))
task = st.radio("Task", ["Summarize", "Ask"], horizontal=True)
question = st.text_area("Question", placeholder="What happens to …?") if task == "Ask" else None
length = (st.select_slider("Summary length", ["short", "medium", "long"], value="medium")
          if task == "Summarize" else None)

strategies = tomes().strategies()
names = [s["name"] for s in strategies]
info = {s["name"]: s for s in strategies}
with st.expander("Options: strategy, map size, model", expanded=False):
    if task == "Ask":
        # The API's own default (``auto`` picks one and records why), else the first.
        default = inspect.signature(Tomes.ask).parameters["strategy"].default
        strategy = st.selectbox(
            "Strategy", names, index=names.index(default) if default in names else 0,
            format_func=lambda n: n + ("" if info[n]["available"] else " (unavailable)"),
            help="Every strategy the API offers (pipelines.STRATEGIES).",
        )
        if info[strategy]["about"]:
            st.caption(info[strategy]["about"])
    else:
        strategy = "mapreduce"
        st.caption("Summaries are made by map-reduce: every piece mapped, then reduced.")
    map_tokens = None
    if task == "Summarize" or "map_tokens" in info[strategy]["options"]:
        auto = st.checkbox("Map size: automatic", value=True,
                           help="Consecutive chunks up to what the model's window leaves (at most 16,000 tokens).")
        map_tokens = None if auto else st.number_input(
            "Tokens per map call (0: one chunk per call)", min_value=0, value=2000, step=500)
    models = tomes().models()
    active = models["active"]
    backends = models["backends"]
    backend = st.selectbox("Backend", backends,
                           index=backends.index(active["backend"]) if active["backend"] in backends else 0)
    model = st.text_input("Model (blank: the backend's default)",
                          value=(active.get("model") or "") if backend == active["backend"] else "")

unavailable = task == "Ask" and not info[strategy]["available"]
if unavailable:
    st.warning(f"**{strategy}** cannot run here: {info[strategy]['reason']}")
blank = task == "Ask" and not (question or "").strip()
if blank and question:
    st.caption("The question is only blank space: ask it in words.")

if st.button("Run", type="primary", disabled=blank or unavailable):
    # The session's serving choices, with this run's backend and model on top.
    t = Tomes(**(serving() | {"backend": backend, "model": model.strip() or None}))
    label = titles.get(target, target)
    about = {"task": task.lower(), "target": target, "target_title": label, "strategy": strategy,
             "question": question.strip() if question else None}
    try:
        if task == "Summarize":
            start_run("summarize", f"summarize {label}", meta=about,
                      work=lambda run_id, on_event: t.summarize(
                          target, length=length, map_tokens=map_tokens, on_event=on_event, run_id=run_id))
        else:
            q = question.strip()
            start_run("ask", f"ask {label}: {q}", meta=about,
                      work=lambda run_id, on_event: t.ask(
                          target, q, strategy=strategy, map_tokens=map_tokens, on_event=on_event,
                          run_id=run_id))
    except TomesError as exc:
        _views.error("Could not start", exc)


def show(job: Job) -> None:
    if job.running:
        _views.progress(job)
    elif job.error is not None:
        _views.error(f"Failed · {job.label}", job.error)
        st.caption(f"after {job.elapsed:.1f} s · {job.calls_done()} calls done · the run stays in "
                   "Runs & calls, where it can be resumed")
    else:
        st.success(f"Done · {plain(job.label)} · {job.elapsed:.1f} s")
        _views.result(job.result.to_dict(), job.meta, key=job.id)


def poll() -> None:
    jobs = my_runs()
    if not jobs:
        return
    newest, *older = jobs
    for job in (j for j in older if j.running):
        _views.progress(job)
    # A run that finished while the fragment polled: one full rerun, so the whole page
    # (and the sidebar's count of running jobs) catches up.
    finished = {j.id for j in jobs if not j.running}
    if finished - st.session_state.get("ask_seen_finished", set()):
        st.session_state.ask_seen_finished = finished
        st.rerun()
    show(newest)
    done = [j for j in older if not j.running]
    if done:
        st.divider()
        st.caption("Earlier runs this session (their answers and calls are in Runs & calls)")
        for job in done:
            link("runs", ("Failed · " if job.error else "Done · ") + job.label,
                 icon=":material/account_tree:", run=job.id)


live = any(j.running for j in my_runs())
st.fragment(run_every=1.0 if live else None)(poll)()
