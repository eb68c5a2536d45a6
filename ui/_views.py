"""Pieces more than one page draws: a job's progress, an error with its cause and fix,
an answer with what it rests on."""

from __future__ import annotations

from typing import Any

import streamlit as st

from ui import _export
from ui._state import Job, describe_error, link, plain


PROVENANCE_FIRST = 10
PROVENANCE_MORE = 50


def progress(job: Job) -> None:
    """Where a running job is: node, calls done, elapsed time."""
    e = job.last_event()
    with st.status(f"Running · {plain(job.label)}", expanded=True, state="running"):
        if e is not None:
            st.progress(min(1.0, e.done / (e.total or 1)),
                        text=f"{e.stage}: {e.done}/{e.total or '?'} {e.message}".strip())
        st.caption(f"node `{e.stage if e else 'starting'}` · {job.calls_done()} calls done · "
                   f"{job.elapsed:.0f} s elapsed")


def error(title: str, exc: BaseException | None = None, *, cause: str | None = None,
          fix: str | None = None) -> None:
    """An error, expanded, as cause and fix (from an exception or given)."""
    if exc is not None:
        cause, fix = describe_error(exc)
    with st.expander(plain(title), expanded=True, icon=":material/error:"):
        st.error(f"**Cause:** {plain(cause)}" + (f"\n\n**Fix:** {fix}" if fix else ""))


def result(result: dict[str, Any], about: dict[str, Any], *, key: str) -> None:
    """The answer, its confidence and cost, the provenance (each entry opens the reader at
    its chunk, with the run's quotes highlighted) and downloads."""
    st.subheader("Answer")
    with st.container(border=True):
        st.text(result.get("answer", ""), width="stretch")  # model text: never markup
    details = result.get("details") or {}
    confidence = details.get("confidence")
    calls = result.get("calls", 0)
    cost = (f"{calls} model call{'' if calls == 1 else 's'}"
            + (f" (+{result['cache_hits']} from cache)" if result.get("cache_hits") else "")
            + f" · {result.get('prompt_tokens', 0):,} prompt + {result.get('completion_tokens', 0):,} "
            f"completion tokens · {result.get('pipeline', '')} · run `{result.get('run_id', '')}`")
    if confidence is not None:
        st.metric("confidence", confidence)
    st.caption(cost)
    if details.get("chosen_by") == "auto":
        st.caption(f"auto chose **{plain(details.get('strategy', '?'))}**: {plain(details.get('why', ''))}")
    fallbacks = details.get("fallbacks") or []
    if fallbacks:
        with st.expander(f"What the run worked around ({len(fallbacks)})", icon=":material/warning:"):
            for f in fallbacks:
                st.text(str(f))
    with st.expander("All details", icon=":material/data_object:"):
        st.json(details, expanded=False)
    a, b, _ = st.columns([1, 1, 3])
    a.download_button("Download Markdown", _export.as_markdown(result, about),
                      file_name=f"tomes-{result.get('run_id', 'answer')[:8]}.md", mime="text/markdown",
                      key=f"md_{key}", icon=":material/download:", on_click="ignore")
    b.download_button("Download JSON", _export.as_json(result, about),
                      file_name=f"tomes-{result.get('run_id', 'answer')[:8]}.json",
                      mime="application/json", key=f"json_{key}", icon=":material/download:", on_click="ignore")
    provenance = result.get("provenance") or []
    st.subheader(f"What it rests on ({len(provenance)})")
    if not provenance:
        st.caption("The run recorded no provenance.")
    # A summary rests on every chunk of a book: draw a first few, more on request.
    shown = st.session_state.get(f"prov_shown_{key}", PROVENANCE_FIRST)
    for i, p in enumerate(provenance[:shown]):
        page = f" · page {p['page']}" if p.get("page") else ""
        with st.container(border=True):
            link("reader", f"{p['title']} · chunk {p['chunk_id']} · chars {p['start']}–{p['end']}{page}",
                 icon=":material/menu_book:", doc=p["document_id"], chunk=p["chunk_id"],
                 run=result.get("run_id"))
            if p.get("quote"):
                st.text(p["quote"])
    if len(provenance) > shown:
        more = min(PROVENANCE_MORE, len(provenance) - shown)
        st.button(f"Show {more} more of {len(provenance) - shown}", key=f"prov_more_{key}",
                  icon=":material/expand_more:", on_click=st.session_state.__setitem__,
                  args=(f"prov_shown_{key}", shown + more))
