"""What tomes runs on: backend, model, window, capacity, presets, embedder, home. Switch
the backend or endpoint for this session, and check that it answers."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from ui import _views
from ui._state import code, get_job, plain, serving, set_serving, start_job, tomes

st.header("Settings")
t = tomes()
s = t.settings
info = t.models()
active = info["active"]

checked = st.session_state.get("checked") or {}
if (checked.get("backend"), checked.get("base_url")) != (active["backend"], active.get("base_url")):
    checked = {}  # a check of another backend says nothing about this one
window = checked.get("context_window") or active.get("context_window")
rows = [
    ("backend", active["backend"] + (" (switched for this session)" if "backend" in serving() else "")),
    ("model", checked.get("model") or active.get("model") or "the backend's default"),
    ("endpoint", active.get("base_url") or "in this process"),
    ("context window", f"{window:,} tokens" if window else "known after a check"),
    ("capacity", str(s.concurrency) + " (TOMES_CONCURRENCY)" if s.concurrency else
     (f"{checked['capacity']} calls at once" if checked.get("capacity") else "the backend's own (known after a check)")),
    ("preset", active.get("preset") or "none"),
]
st.dataframe(pd.DataFrame(rows, columns=["active", "value"]), hide_index=True, width="stretch")

st.subheader("Check")
if st.button("Check that the model answers", icon=":material/network_check:"):
    job = start_job("check", f"check {active['backend']}", lambda on_event: t.check_model(timeout=30))
    st.session_state.check_job = job.id


def check_panel() -> None:
    job = get_job(st.session_state.get("check_job"))
    if job is None:
        st.caption("Sends one tiny prompt (not cached) to the active backend.")
        return
    if job.running:
        st.info(f"Asking {plain(job.label[6:])}… {job.elapsed:.0f} s")
        return
    if st.session_state.get("check_shown") != job.id:
        st.session_state.check_shown = job.id
        if job.error is None:
            st.session_state.checked = job.result
        st.rerun()  # stop polling, and show what the check learnt above
    if job.error is not None:
        _views.error("The model did not answer", job.error)
        return
    r = job.result
    st.session_state.checked = r
    window = f"{r['context_window']:,}" if r.get("context_window") else "?"
    st.success(f"{r['backend']} answered in {r['latency_ms']:,.0f} ms: model {code(r['model'])}, "
               f"window {window} tokens, capacity {r.get('capacity')}"
               + (f", at {code(r['base_url'])}" if r.get("base_url") else ""))
    st.caption(f"reply: {plain(r['reply'][:200])}")


polling = (job := get_job(st.session_state.get("check_job"))) is not None and job.running
st.fragment(run_every=0.5 if polling else None)(check_panel)()

st.subheader("Switch for this session")
st.caption("Applies to what you start from this browser tab; the server's settings and other "
           "sessions keep theirs. Runs you resume continue on the model they started with unless "
           "you switched here.")
backends = info["backends"]
with st.form("switch_serving"):
    backend = st.selectbox("Backend", backends,
                           index=backends.index(active["backend"]) if active["backend"] in backends else 0)
    model = st.text_input("Model", value=serving().get("model", ""),
                          help="Blank: the backend's default (or TOMES_MODEL).")
    base_url = st.text_input("Endpoint (openai backend)", value=serving().get("base_url") or s.base_url,
                             help="An OpenAI-compatible server: vLLM, llama-server, Ollama…")
    left, right = st.columns(2)
    apply = left.form_submit_button("Use for this session", type="primary")
    reset = right.form_submit_button("Back to the server's settings")
if apply:
    changes = {"backend": backend, "model": model.strip() or None}
    if backend == "openai" and base_url.strip():
        changes["base_url"] = base_url.strip()
    set_serving(**changes)
    st.rerun()
if reset:
    set_serving()
    st.rerun()

st.subheader("Presets")
presets = pd.DataFrame(info["presets"])
if not presets.empty:
    presets["runs on"] = [f"{g}× {m} GB GPU" if g else "CPU" for g, m in zip(presets.gpus, presets.gpu_memory_gb)]
    st.dataframe(presets[["name", "model", "backend", "context_window", "writes_code", "runs on", "notes"]],
                 hide_index=True, width="stretch")
st.caption(f"vLLM: {plain(info['vllm']) if info['vllm'] else 'not installed here'} · backends: "
           + ", ".join(backends))

st.subheader("Storage and retrieval")
st.dataframe(pd.DataFrame([
    {"setting": "home", "value": str(s.home)},
    {"setting": "database", "value": str(s.db_path)},
    {"setting": "indexes", "value": str(s.index_dir)},
    {"setting": "embedder", "value": s.embedder},
    {"setting": "hybrid fusion", "value": s.fusion},
    {"setting": "chunk tokens", "value": str(s.chunk_tokens)},
    {"setting": "chunk overlap", "value": str(s.chunk_overlap)},
    {"setting": "map tokens", "value": "automatic" if s.map_tokens is None else str(s.map_tokens)},
    {"setting": "max file size", "value": f"{s.max_file_mb:g} MB"},
    {"setting": "response cache", "value": "on" if s.cache else "off"},
]), hide_index=True, width="stretch")
