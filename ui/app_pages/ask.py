"""Ask a question or summarize, with progress and provenance."""

from __future__ import annotations

import streamlit as st

from app.errors import TomesError
from ui._state import tomes

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

if st.button("Run", type="primary", disabled=task == "Ask" and not question):
    with st.status("Running…", expanded=True) as status:
        bar = st.progress(0.0)

        def on_event(e):
            bar.progress(min(1.0, e.done / (e.total or 1)), text=f"{e.stage}: {e.done}/{e.total or '?'} {e.message}")

        try:
            if task == "Summarize":
                result = tomes().summarize(target, length=length, on_event=on_event)
            else:
                result = tomes().ask(target, question, on_event=on_event)
        except TomesError as exc:
            status.update(label="Failed", state="error")
            st.error(str(exc))
            st.stop()
        status.update(label=f"Done · run {result.run_id}", state="complete")
    st.subheader("Answer")
    st.write(result.answer)
    st.caption(f"{result.calls} model calls · {result.prompt_tokens:,} prompt + "
               f"{result.completion_tokens:,} completion tokens · run `{result.run_id}`")
    st.subheader("Provenance")
    for p in result.provenance:
        with st.expander(f"{p.title} · chunk {p.chunk_id} · chars {p.start}-{p.end}" + (f" · page {p.page}" if p.page else "")):
            st.write(p.quote)
