"""Search a corpus: dense, keyword or both fused; every hit opens in the reader."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app.errors import TomesError
from ui import _views
from ui._state import link, tomes

st.header("Search")
corpora = tomes().corpora()
if not corpora:
    st.info("Nothing to search yet: add documents in the Library.")
    st.stop()

corpus = st.selectbox("Corpus", corpora)
query = st.text_input("Query")
mode = st.segmented_control("Mode", ["hybrid", "dense", "keyword"], default="hybrid")
k = st.slider("Results", 1, 50, 10)
if query.strip():
    try:
        hits = tomes().search(corpus, query, k, mode or "hybrid")
    except TomesError as exc:
        _views.error("Search failed", exc)
        st.stop()
    if not hits:
        st.info("Nothing matches.")
        st.stop()
    st.dataframe(
        pd.DataFrame([{"score": round(h.score, 4), "document": h.title, "chunk": h.chunk_id,
                       "span": f"{h.start}-{h.end}", "page": h.page, "text": h.text} for h in hits]),
        hide_index=True, width="stretch",
    )
    st.caption("Open a hit in the reader, with the query's words highlighted:")
    for h in hits:
        link("reader", f"{h.title} · chunk {h.chunk_id} · score {h.score:.3f}", icon=":material/menu_book:",
             doc=h.document_id, chunk=h.chunk_id, q=query)
elif query:
    st.caption("The query is only blank space: search for some words.")
