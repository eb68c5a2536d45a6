"""Ask a question or summarize, with progress and provenance.

A run belongs to the app, not the page: it runs in a worker thread held by the process
(ui._state), and this page polls it, so it keeps going while you look elsewhere."""

from __future__ import annotations

import streamlit as st

from ui._state import describe_error, get_job, start_job, tomes

st.header("Ask & summarize")
docs = tomes().documents()
if not docs:
    st.info("Add documents in the Library first.")
    st.stop()

targets = [f"corpus:{c}" for c in sorted({d["corpus"] for d in docs})] + [str(d["id"]) for d in docs]
titles = {str(d["id"]): f"document {d['id']} · {d['title']}" for d in docs}
target = st.selectbox("Over", targets, format_func=lambda t: titles.get(t, t))
task = st.radio("Task", ["Summarize", "Ask"], horizontal=True)
question = st.text_area("Question") if task == "Ask" else None
length = st.select_slider("Summary length", ["short", "medium", "long"], value="medium") if task == "Summarize" else None

current = get_job(st.session_state.get("ask_job"))
blank = task == "Ask" and not (question or "").strip()
if blank and question:
    st.caption("The question is only blank space: ask it in words.")
if st.button("Run", type="primary", disabled=blank or bool(current and current.running)):
    t = tomes()
    if task == "Summarize":
        job = start_job("summarize", f"summarize {titles.get(target, target)}",
                        lambda on_event: t.summarize(target, length=length, on_event=on_event))
    else:
        q = question.strip()
        job = start_job("ask", f"ask {titles.get(target, target)}: {q}",
                        lambda on_event: t.ask(target, q, on_event=on_event))
    st.session_state.ask_job = job.id


def show_result(result) -> None:
    st.subheader("Answer")
    st.write(result.answer)
    st.caption(f"{result.calls} model calls · {result.prompt_tokens:,} prompt + "
               f"{result.completion_tokens:,} completion tokens · run `{result.run_id}`")
    st.subheader("Provenance")
    for p in result.provenance:
        with st.expander(f"{p.title} · chunk {p.chunk_id} · chars {p.start}-{p.end}" + (f" · page {p.page}" if p.page else "")):
            st.write(p.quote)


@st.fragment(run_every=1.0)
def progress() -> None:
    job = get_job(st.session_state.get("ask_job"))
    if job is None:
        return
    if not job.running and not st.session_state.get(f"shown_{job.id}"):
        # The fragment polled while running; one full rerun brings the Run button back.
        st.session_state[f"shown_{job.id}"] = True
        st.rerun()
    if job.running:
        e = job.last_event()
        with st.status(f"Running · {job.label}", expanded=True):
            if e is not None:
                st.progress(min(1.0, e.done / (e.total or 1)),
                            text=f"{e.stage}: {e.done}/{e.total or '?'} {e.message}")
            st.caption(f"node `{e.stage if e else 'starting'}` · {job.calls_done()} calls done · "
                       f"{job.elapsed:.0f} s elapsed")
        return
    if job.error is not None:
        cause, fix = describe_error(job.error)
        with st.expander(f"Failed · {job.label}", expanded=True):
            st.error(f"**Cause:** {cause}" + (f"\n\n**Fix:** {fix}" if fix else ""))
            st.caption(f"after {job.elapsed:.1f} s · {job.calls_done()} calls done")
        return
    st.success(f"Done · {job.label} · {job.elapsed:.1f} s")
    show_result(job.result)


progress()
