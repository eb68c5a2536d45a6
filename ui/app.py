"""The tomes UI: `tomes ui` (or `streamlit run ui/app.py`).

A frame around the pages; every page talks to app.api.Tomes only.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

# `streamlit run ui/app.py` puts ui/ on sys.path, not the project root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ui._state import code, plain, running_jobs, tomes  # noqa: E402

st.set_page_config(page_title="tomes", page_icon=":books:", layout="wide")

pages = st.navigation({
    "Read": [
        st.Page("app_pages/library.py", title="Library", icon=":material/library_books:", default=True),
        st.Page("app_pages/reader.py", title="Reader", icon=":material/menu_book:"),
        st.Page("app_pages/search.py", title="Search", icon=":material/search:"),
    ],
    "Work": [
        st.Page("app_pages/ask.py", title="Ask & summarize", icon=":material/question_answer:"),
        st.Page("app_pages/runs.py", title="Runs & calls", icon=":material/account_tree:"),
        st.Page("app_pages/memory.py", title="Memory", icon=":material/hub:"),
    ],
    "Setup": [
        st.Page("app_pages/settings.py", title="Settings", icon=":material/settings:"),
    ],
})

with st.sidebar:
    s = tomes().settings
    st.caption(f"backend {code(s.backend)}" + (f" · model {code(s.model)}" if s.model else ""))
    busy = running_jobs()
    if busy:
        st.caption(f":material/pending: {len(busy)} job(s) running: "
                   + "; ".join(plain(j.label[:40]) for j in busy[:3]))

pages.run()
