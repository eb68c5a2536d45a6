"""The tomes UI: `tomes ui` (or `streamlit run ui/app.py`).

A frame around four pages; every page talks to app.api.Tomes only.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

# `streamlit run ui/app.py` puts ui/ on sys.path, not the project root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ui._state import tomes  # noqa: E402

st.set_page_config(page_title="tomes", page_icon=":books:", layout="wide")

pages = st.navigation([
    st.Page("app_pages/library.py", title="Library", icon=":material/library_books:", default=True),
    st.Page("app_pages/search.py", title="Search", icon=":material/search:"),
    st.Page("app_pages/ask.py", title="Ask & summarize", icon=":material/question_answer:"),
    st.Page("app_pages/runs.py", title="Runs & calls", icon=":material/account_tree:"),
])

with st.sidebar:
    s = tomes().settings
    st.caption(f"home `{s.home}`")
    st.caption(f"backend `{s.backend}`" + (f" · model `{s.model}`" if s.model else ""))

pages.run()
