"""Document text as safe HTML with marks: the reader's quotes, focus and search hits.

Document text is untrusted (anyone's upload): every piece of it is escaped before it
becomes HTML, and only the tags made here (div, mark, small) surround it. Streamlit's
``st.html`` sanitizes on top of that.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# Higher wins where marks overlap.
PRIORITY = {"focus": 1, "hit": 2, "quote": 3}
STYLES = {
    "focus": "background:#fff3bf;",
    "hit": "background:#a5d8ff;",
    "quote": "background:#ffd43b;font-weight:600;",
}


@dataclass(frozen=True)
class Mark:
    start: int  # absolute offsets into the document text
    end: int
    kind: str  # "quote" | "hit" | "focus"


def find_quote(text: str, quote: str, offset: int = 0) -> tuple[int, int] | None:
    """Where ``quote`` sits in ``text`` (absolute, given ``text`` starts at ``offset``):
    exactly, else with any run of whitespace matching any other (quotes are often
    re-flowed), else case-insensitively."""
    quote = quote.strip()
    if not quote:
        return None
    at = text.find(quote)
    if at >= 0:
        return offset + at, offset + at + len(quote)
    words = quote.split()
    pattern = r"\s+".join(re.escape(w) for w in words)
    match = re.search(pattern, text) or re.search(pattern, text, re.IGNORECASE)
    if match:
        return offset + match.start(), offset + match.end()
    return None


def term_marks(text: str, query: str, offset: int = 0, kind: str = "hit") -> list[Mark]:
    """Every whole-word, case-insensitive occurrence of the query's words (of 3 letters
    or more, so "a" and "of" do not paint the page)."""
    words = sorted({w for w in re.findall(r"\w+", query.lower()) if len(w) >= 3}, key=len, reverse=True)
    if not words:
        return []
    pattern = re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\w*", re.IGNORECASE)
    return [Mark(offset + m.start(), offset + m.end(), kind) for m in pattern.finditer(text)]


def to_html(text: str, offset: int, marks: Iterable[Mark]) -> str:
    """``text`` (which starts at ``offset`` in its document) escaped, with the marks
    that fall in it wrapped in <mark>."""
    end = offset + len(text)
    inside = [m for m in marks if m.end > offset and m.start < end and m.end > m.start]
    cuts = sorted({offset, end, *(max(offset, m.start) for m in inside), *(min(end, m.end) for m in inside)})
    out: list[str] = []
    for a, b in zip(cuts, cuts[1:]):
        piece = html.escape(text[a - offset:b - offset])
        active = [m for m in inside if m.start <= a and m.end >= b]
        if active:
            kind = max(active, key=lambda m: PRIORITY.get(m.kind, 0)).kind
            out.append(f'<mark class="tomes-{kind}" style="{STYLES.get(kind, "")}">{piece}</mark>')
        else:
            out.append(piece)
    return "".join(out)


def chunk_block(chunk_id: int, header: str, body_html: str, *, focused: bool = False) -> str:
    """One chunk of the reader: a small header line and its (already escaped) text."""
    border = "#f08c00" if focused else "#dee2e6"
    return (
        f'<div id="chunk-{int(chunk_id)}" class="tomes-chunk" '
        f'style="border-left:4px solid {border};padding:0.2rem 0.8rem;margin:0.6rem 0;">'
        f'<small style="color:#868e96;">{html.escape(header)}</small>'
        f'<div style="white-space:pre-wrap;font-family:Georgia,serif;line-height:1.5;">{body_html}</div>'
        "</div>"
    )


def quote_marks(chunks: Sequence[dict], page_text: str, page_start: int,
                quotes: dict[int, list[str]]) -> list[Mark]:
    """Marks for the quotes an answer rests on (chunk id -> quotes), found inside their
    chunks; a quote that cannot be found marks its whole chunk, so the reader still shows
    what the answer rests on."""
    marks: list[Mark] = []
    for c in chunks:
        for quote in quotes.get(c["id"], []):
            text = page_text[c["start"] - page_start:c["end"] - page_start]
            where = find_quote(text, quote, c["start"])
            marks.append(Mark(*where, "quote") if where else Mark(c["start"], c["end"], "quote"))
    return marks
