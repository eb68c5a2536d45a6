"""Read a document a few chunks at a time: jump to a chunk or a character offset, see the
quotes an answer rests on highlighted in place, find words.

Links from other pages say where to open: ``?doc=ID&chunk=ID`` (``&start=OFFSET`` for a
span, ``&run=RUN`` to highlight that run's provenance, ``&q=WORDS`` to find words)."""

from __future__ import annotations

import streamlit as st

from app.errors import NotFound, TomesError
from ui import _highlight as H
from ui._state import plain, tomes

st.header("Reader")
t = tomes()
docs = t.documents()
if not docs:
    st.info("No documents yet: add some in the Library.")
    st.stop()
by_id = {d["id"]: d for d in docs}
state = st.session_state


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and str(value).isdigit() else None


# A link (query params) is applied once, when it is new; after that the page's own
# controls move around and the URL follows them.
qp = st.query_params
arrived = tuple(qp.get(k) for k in ("doc", "chunk", "start", "run", "q"))
if arrived != state.get("reader_link") and any(arrived):
    state.reader_link = arrived
    doc_arg, chunk_arg, start_arg, run_arg, q_arg = arrived
    if _int(doc_arg) in by_id:
        state.reader_doc = _int(doc_arg)
    elif doc_arg is not None:
        st.warning(f"There is no document {plain(doc_arg)} (any more); showing another.")
    state.reader_goto = ("chunk", _int(chunk_arg)) if _int(chunk_arg) is not None else (
        ("offset", _int(start_arg)) if _int(start_arg) is not None else None)
    state.reader_focus = _int(chunk_arg)
    state.reader_run = run_arg
    state.reader_find = q_arg or ""

ids = list(by_id)
current = state.get("reader_doc") if state.get("reader_doc") in by_id else ids[0]
doc_id = st.selectbox("Document", ids, index=ids.index(current),
                      format_func=lambda i: f"{by_id[i]['title']} · {by_id[i]['corpus']} · document {i}")
if doc_id != state.get("reader_doc"):
    if state.get("reader_doc") is not None and "reader_goto" not in state:
        state.reader_first = 0
    state.reader_doc = doc_id
doc = by_id[doc_id]
try:
    spans = t.spans(doc_id)
except NotFound:
    st.rerun()
if not spans:
    st.info("This document has no chunks.")
    st.stop()
n = len(spans)
ordinal_of = {s["id"]: i for i, s in enumerate(spans)}

SIZES = [2, 4, 8, 16, 32]


def chunk_at(offset: int) -> int:
    for i, s in enumerate(spans):
        if s["end"] > offset:
            return i
    return n - 1


goto = state.pop("reader_goto", None)
if goto is not None:
    kind, value = goto
    if kind == "chunk" and value in ordinal_of:
        state.reader_first = ordinal_of[value]
    elif kind == "chunk":
        st.warning(f"Chunk {value} is not in this document; showing its start.")
        state.reader_first = 0
    elif kind == "offset":
        state.reader_first = chunk_at(max(0, value))

first = min(max(0, state.get("reader_first", 0)), n - 1)
nav = st.columns([1.1, 1, 3.6, 1.1, 1.3], vertical_alignment="bottom")
size = nav[3].selectbox("Chunks per page", SIZES, index=SIZES.index(state.get("reader_size", 8)))
state.reader_size = size
if nav[0].button("◀ Previous", disabled=first == 0, width="stretch"):
    first = max(0, first - size)
if nav[1].button("Next ▶", disabled=first + size >= n, width="stretch"):
    first = min(n - 1, first + size)
with nav[4].popover("Jump to…", icon=":material/near_me:"):
    with st.form("jump", border=False, clear_on_submit=True):
        want_chunk = st.number_input("Chunk id", min_value=0, value=None, step=1)
        want_offset = st.number_input("Character offset", min_value=0, value=None, step=1000)
        if st.form_submit_button("Go"):
            if want_chunk is not None and int(want_chunk) in ordinal_of:
                first = ordinal_of[int(want_chunk)]
                state.reader_focus = int(want_chunk)
            elif want_chunk is not None:
                st.error(f"Chunk {int(want_chunk)} is not in this document "
                         f"(its chunks are {spans[0]['id']}–{spans[-1]['id']}).")
            elif want_offset is not None:
                first = chunk_at(int(want_offset))
position = st.slider("Position (chunk)", 1, n, first + 1, disabled=n == 1) if n > 1 else 1
if position - 1 != first and position != state.get("reader_slider"):
    first = position - 1
state.reader_slider = position
state.reader_first = first
page = spans[first:first + size]
nav[2].markdown(f"chunks **{first + 1}–{first + len(page)}** of {n} · "
                f"page {first // size + 1} of {(n + size - 1) // size} · {doc['chars']:,} characters")
# --- what to highlight -----------------------------------------------------------------

quotes: dict[int, list[str]] = {}
run_id = state.get("reader_run")
if run_id:
    try:
        run = t.run(run_id)
    except NotFound:
        run = None
    provenance = [p for p in ((run or {}).get("result") or {}).get("provenance", [])
                  if p["document_id"] == doc_id]
    if run is not None:
        for p in provenance:
            quotes.setdefault(p["chunk_id"], []).append(p.get("quote") or "")
        box = st.container(border=True)
        head = box.columns([5, 1])
        what = run["question"] or "summary"
        head[0].markdown(f"Highlighting what **{plain(what)}** rests on: "
                         f"{len(provenance)} passage(s) in this document.")
        if head[1].button("Clear", key="reader_clear_run"):
            state.reader_run = None
            st.rerun()
        if provenance:
            jump = box.columns(min(6, len(provenance)))
            for i, p in enumerate(provenance[:12]):
                if jump[i % len(jump)].button(f"chunk {p['chunk_id']}", key=f"prov_{i}_{p['chunk_id']}"):
                    state.reader_goto = ("chunk", p["chunk_id"])
                    state.reader_focus = p["chunk_id"]
                    st.rerun()

find = st.text_input("Find in this document", value=state.get("reader_find", ""),
                     placeholder="words to find and highlight")
state.reader_find = find
hits = []
if find.strip():
    try:
        hits = t.search(doc["corpus"], find, 20, "hybrid", document=doc_id)
    except TomesError:
        hits = t.search(doc["corpus"], find, 20, "keyword", document=doc_id)  # no vectors yet
    if hits:
        st.caption(f"{len(hits)} chunk(s) match, best first:")
        row = st.columns(min(8, len(hits)))
        for i, h in enumerate(hits[:16]):
            if row[i % len(row)].button(f"chunk {h.chunk_id}", key=f"hit_{i}_{h.chunk_id}",
                                        help=h.text[:200]):
                state.reader_goto = ("chunk", h.chunk_id)
                state.reader_focus = h.chunk_id
                st.rerun()
    else:
        st.caption("No chunk of this document matches.")

# --- the page --------------------------------------------------------------------------

page_start, page_end = page[0]["start"], max(s["end"] for s in page)
text = t.text(doc_id, page_start, page_end)
marks = H.quote_marks(page, text, page_start, quotes)
if find.strip():
    marks += H.term_marks(text, find, page_start)
focus = state.get("reader_focus")
hit_ids = {h.chunk_id for h in hits}
blocks = []
for s in page:
    body = text[s["start"] - page_start:s["end"] - page_start]
    header = " · ".join(x for x in [
        f"chunk {s['id']}", f"{s['ordinal'] + 1} of {n}", f"chars {s['start']:,}–{s['end']:,}",
        f"page {s['page']}" if s["page"] else "", s["heading"] or "",
        "cited" if s["id"] in quotes else "", "matches" if s["id"] in hit_ids else "",
    ] if x)
    blocks.append(H.chunk_block(s["id"], header, H.to_html(body, s["start"], marks),
                                focused=s["id"] == focus or s["id"] in quotes))
st.html("".join(blocks))

# The URL follows the page, so it can be shared; written as a link the page already applied.
here = {"doc": str(doc_id), "chunk": str(page[0]["id"]), "run": state.get("reader_run") or None,
        "q": state.get("reader_find") or None}
for k in ("doc", "chunk", "start", "run", "q"):
    qp.pop(k, None)
qp.update({k: v for k, v in here.items() if v})
state.reader_link = (here["doc"], here["chunk"], None, here["run"], here["q"])
