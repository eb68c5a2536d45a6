"""Upload documents, see what is in the store and how its indexes stand, look inside one."""

from __future__ import annotations

import math

import pandas as pd
import streamlit as st

from app.errors import TomesError
from ui import _views
from ui._state import SUFFIXES, index_in_background, index_job, ingest_uploads, link, plain, tomes

st.header("Library")
limit_mb = tomes().settings.max_file_mb

with st.form("upload", clear_on_submit=True):
    files = st.file_uploader(
        "Add documents", accept_multiple_files=True, type=SUFFIXES,
        # Streamlit takes whole megabytes; the exact limit is checked again on arrival.
        max_upload_size=max(1, math.ceil(limit_mb)),
        help=f"Up to {limit_mb:g} MB per file (TOMES_MAX_FILE_MB on the server).",
    )
    corpus = st.text_input("Corpus", value="default", help="Documents are searched and asked together per corpus.")
    submitted = st.form_submit_button("Ingest", type="primary")

if submitted and files:
    if not corpus.strip():
        st.error("Name the corpus the documents go into (e.g. `default`).")
    else:
        bar = st.progress(0.0, text="reading")
        outcomes = ingest_uploads(
            files, corpus.strip(),
            on_event=lambda e: bar.progress(min(1.0, e.done / (e.total or 1)), text=f"reading {e.message}".strip()),
        )
        bar.empty()
        stored = [o for o in outcomes if o["status"] in ("added", "updated")]
        # Kept for the reruns that follow (the one when indexing ends redraws the whole
        # page): what happened to the upload stays on screen until the next one.
        notes: list[tuple[str, str]] = []
        if stored:
            notes.append(("success", "Added: " + ", ".join(
                f"{plain(o['name'])} ({o['chunks']} chunk{'' if o['chunks'] == 1 else 's'})"
                for o in stored)
                + f" to corpus {plain(corpus.strip())}; indexing for search in the background."))
        for o in outcomes:
            if o["status"] == "skipped":
                notes.append(("info", f"{plain(o['name'])}: already in corpus "
                                      f"{plain(corpus.strip())}, unchanged."))
            elif o["status"] == "failed":
                notes.append(("error", f"**{plain(o['name'])}** was not added: {plain(o['error'])}"))
        st.session_state.library_notes = notes
        if stored:
            index_in_background(corpus.strip())
elif submitted:
    st.session_state.library_notes = [("warning", "Choose one or more files first.")]
for kind, note in st.session_state.get("library_notes", []):
    getattr(st, kind)(note)

docs = tomes().documents()
if not docs:
    st.info("No documents yet: upload some above, or run `tomes ingest PATH`.")
    st.stop()


def words(status: dict) -> tuple[str, float]:
    """An index status in words, and how far along it is (0-1)."""
    total = status["chunks"]
    if not total:
        return "no chunks", 1.0
    embedded = total - status.get("missing", total)
    parts = []
    if status.get("missing"):
        parts.append(f"{embedded:,} of {total:,} chunks embedded for meaning search")
    else:
        parts.append(f"all {total:,} chunks embedded ({status.get('model') or '?'})")
    if status.get("stale"):
        parts.append(f"{status['stale']:,} changed since")
    parts.append("keyword index up to date" if status.get("keyword_in_step") else "keyword index to rebuild")
    return "; ".join(parts), embedded / total


names = sorted({d["corpus"] for d in docs})


def index_panel() -> None:
    busy = False
    for name in names:
        job = index_job(name)
        status = tomes().index_status(name)
        text, done = words(status)
        if job is not None and job.running:
            busy = True
            e = job.last_event()
            if e is not None and e.stage == "embed" and e.total:
                done = e.done / e.total
                text = f"embedding {e.done:,} of {e.total:,} chunks"
            elif e is not None:
                text = f"{e.stage}: {e.message}"
            st.progress(min(1.0, done), text=f"corpus **{plain(name)}**: indexing… {text} · {job.elapsed:.0f} s")
            continue
        ready = done >= 1.0 and not status.get("stale") and status.get("keyword_in_step")
        st.progress(min(1.0, done), text=f"corpus **{plain(name)}**: " + ("ready · " if ready else "") + text)
        if job is not None and job.error is not None:
            _views.error(f"Indexing corpus {name} failed", job.error)
        if not ready and st.button("Index now", key=f"reindex_{name}"):
            index_in_background(name)
            st.rerun()
    if not busy and st.session_state.get("library_was_indexing"):
        st.session_state.library_was_indexing = False
        st.rerun()  # finished: the whole page (search, counts) catches up
    st.session_state.library_was_indexing = busy


indexing = any((j := index_job(n)) is not None and j.running for n in names)
st.session_state.library_was_indexing = indexing
st.fragment(run_every=1.0 if indexing else None)(index_panel)()

table = pd.DataFrame(docs)[["id", "title", "corpus", "format", "chars", "chunks", "tokens", "pages"]]
st.dataframe(table, hide_index=True, width="stretch")

choice = st.selectbox("Look inside", [d["id"] for d in docs],
                      format_func=lambda i: next(f"{d['id']} · {d['title']}" for d in docs if d["id"] == i))
try:
    info = tomes().document(choice)
except TomesError as exc:
    _views.error("Cannot open the document", exc)
    st.stop()

chunks = pd.DataFrame(info["chunks"])
left, right = st.columns([2, 1])
with left:
    st.subheader(info["title"])
    st.caption(f"{info['format']} · {info['chars']:,} characters · {len(chunks)} chunks")
    link("reader", "Read it", icon=":material/menu_book:", doc=choice)
    st.bar_chart(chunks.set_index("ordinal")["tokens"], height=180, x_label="chunk", y_label="tokens")
with right:
    removed = info["meta"].get("boilerplate") or []
    st.metric("boilerplate blocks kept out", len(removed))
    for block in removed[:3]:
        st.code(block[:400], language=None)
st.dataframe(chunks[["ordinal", "id", "start", "end", "page", "tokens", "heading", "text"]],
             hide_index=True, width="stretch")
if st.button("Remove this document", type="secondary"):
    tomes().remove(choice)
    st.rerun()
