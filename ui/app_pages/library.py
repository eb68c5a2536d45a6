"""Upload documents, see what is in the store, look inside one."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app.errors import TomesError
from ui._state import describe_error, index_error, index_in_background, indexing, safe_upload_path, tomes

st.header("Library")

with st.form("upload", clear_on_submit=True):
    files = st.file_uploader("Add documents", accept_multiple_files=True,
                             type=["txt", "md", "markdown", "html", "htm", "pdf", "rst", "docx", "epub"])
    corpus = st.text_input("Corpus", value="default")
    submitted = st.form_submit_button("Ingest")

if submitted and files:
    uploads = tomes().settings.home / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    paths = []
    for f in files:
        path = safe_upload_path(uploads, f.name)
        path.write_bytes(f.getvalue())
        paths.append(path)
    bar = st.progress(0.0, text="reading")
    report = tomes().ingest(
        paths, corpus, embed=False,
        on_event=lambda e: bar.progress(min(1.0, e.done / (e.total or 1)), text=f"{e.stage} {e.message}"),
    )
    bar.empty()
    st.success(f"{len(report.added)} added, {len(report.skipped)} unchanged, {len(report.failed)} failed")
    for o in report.failed:
        st.error(o.error)
    if report.added:
        index_in_background(corpus)

docs = tomes().documents()
if not docs:
    st.info("No documents yet: upload some above, or run `tomes ingest PATH`.")
    st.stop()

for name in sorted({d["corpus"] for d in docs}):
    status = tomes().index_status(name)
    if indexing(name):
        st.caption(f"corpus **{name}**: indexing in the background… {status}")
    else:
        st.caption(f"corpus **{name}**: {status}")
        failure = index_error(name)
        if failure is not None:
            cause, fix = describe_error(failure)
            with st.expander(f"Indexing corpus {name} failed", expanded=True):
                st.error(f"**Cause:** {cause}" + (f"\n\n**Fix:** {fix}" if fix else ""))
                if st.button("Index again", key=f"reindex_{name}"):
                    index_in_background(name)
                    st.rerun()

table = pd.DataFrame(docs)[["id", "title", "corpus", "format", "chars", "chunks", "tokens", "pages"]]
st.dataframe(table, hide_index=True, width="stretch")

choice = st.selectbox("Look inside", [d["id"] for d in docs],
                      format_func=lambda i: next(f"{d['id']} · {d['title']}" for d in docs if d["id"] == i))
try:
    info = tomes().document(choice)
except TomesError as exc:
    st.error(str(exc))
    st.stop()

chunks = pd.DataFrame(info["chunks"])
left, right = st.columns([2, 1])
with left:
    st.subheader(info["title"])
    st.caption(f"{info['source']} · {info['chars']:,} characters · {len(chunks)} chunks")
    st.bar_chart(chunks.set_index("ordinal")["tokens"], height=180, x_label="chunk", y_label="tokens")
with right:
    removed = info["meta"].get("boilerplate") or []
    st.metric("boilerplate blocks kept out", len(removed))
    for block in removed[:3]:
        st.code(block[:400])
st.dataframe(chunks[["ordinal", "id", "start", "end", "page", "tokens", "heading", "text"]],
             hide_index=True, width="stretch")
if st.button("Remove this document", type="secondary"):
    tomes().remove(choice)
    st.rerun()
