"""Search a corpus: dense, keyword or both fused."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app.errors import TomesError
from ui._state import tomes

st.header("Search")
corpora = tomes().corpora()
if not corpora:
    st.info("Nothing to search yet: add documents in the Library.")
    st.stop()

corpus = st.selectbox("Corpus", corpora)
query = st.text_input("Query")
mode = st.segmented_control("Mode", ["hybrid", "dense", "keyword"], default="hybrid")
k = st.slider("Results", 1, 50, 10)
if query:
    try:
        hits = tomes().search(corpus, query, k, mode or "hybrid")
    except TomesError as exc:
        st.error(str(exc))
        st.stop()
    st.dataframe(
        pd.DataFrame([{"score": round(h.score, 4), "document": h.title, "chunk": h.chunk_id,
                       "span": f"{h.start}-{h.end}", "page": h.page, "text": h.text} for h in hits]),
        hide_index=True, width="stretch",
    )
