"""What the pages share: one Tomes object per session, background indexing jobs."""

from __future__ import annotations

import threading

import streamlit as st

from app.api import Tomes


def tomes() -> Tomes:
    if "tomes" not in st.session_state:
        st.session_state.tomes = Tomes()
    return st.session_state.tomes


@st.cache_resource
def _jobs() -> dict[str, threading.Thread]:
    return {}


def index_in_background(corpus: str) -> None:
    """Embedding is slow on a CPU (~16 chunks/s): run it in a thread so the page stays
    usable; the Library page polls the index status."""
    jobs = _jobs()
    if corpus in jobs and jobs[corpus].is_alive():
        return
    job = threading.Thread(target=tomes().index, args=(corpus,), daemon=True, name=f"index-{corpus}")
    jobs[corpus] = job
    job.start()


def indexing(corpus: str) -> bool:
    job = _jobs().get(corpus)
    return bool(job and job.is_alive())
