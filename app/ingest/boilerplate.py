"""Known boilerplate, kept out of the text pipelines read and kept as metadata instead.

Small models copy boilerplate: a summary of a Project Gutenberg book can come out as one
licence sentence repeated. So the Gutenberg header, licence and producer credits, and the
running headers, footers and page numbers of PDFs, are moved out of the text into
``meta["boilerplate"]``; what they say that is useful (title, author, ...) goes into
metadata fields.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# "*** START OF THE PROJECT GUTENBERG EBOOK X ***", "***START OF THIS PROJECT GUTENBERG
# EBOOK", and the 1990s "*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*...*END*" that
# closes the old licence header.
_START = re.compile(
    r"^[ \t]*\*+[ \t]*START OF (?:THE |THIS )?PROJECT GUTENBERG[^\n]*$"
    r"|^[ \t]*\*+[ \t]*END\*+[ \t]*THE SMALL PRINT[^\n]*$",
    re.I | re.M,
)
# "*** END OF THE PROJECT GUTENBERG EBOOK X ***", "End of the Project Gutenberg EBook of
# Emma, by Jane Austen", "End of Project Gutenberg's X, by Y", "End of this Etext of ...".
_END = re.compile(
    r"^[ \t]*\**[ \t]*END OF (?:THE |THIS )?PROJECT GUTENBERG[^\n]*$"
    r"|^[ \t]*\**[ \t]*END OF (?:THE |THIS )?(?:E-?TEXT|E-?BOOK) OF\b[^\n]*$",
    re.I | re.M,
)
_END_TITLE = re.compile(
    r"End of (?:the |this )?(?:Project Gutenberg(?:'s)?)?\s*(?:E-?(?:Book|Text)\s+)?(?:of\s+)?"
    r"(?P<title>.+?)(?:,\s+by\s+(?P<author>.+?))?\s*$",
    re.I,
)
_FIRST_LINE = re.compile(
    r"The Project Gutenberg E-?(?:Book|Text) of (?P<title>.+?)(?:,\s+by\s+(?P<author>.+?))?\s*$",
    re.I | re.M,
)
_FIELD = re.compile(
    r"^(Title|Author|Authors|Translator|Editor|Illustrator|Release Date|Language|"
    r"Character set encoding|Produced by|Credits):[ \t]*(.*)$",
    re.I,
)
_EBOOK_NO = re.compile(r"\[?E-?(?:Book|Text) #(\d+)\]?", re.I)
# Producer credits and transcriber notes that open many Gutenberg texts.
_CREDITS = re.compile(
    r"\A\s*(?:produced by|this (?:e-?book|e-?text|file) (?:was|is|has been) "
    r"(?:produced|prepared|made|created)|e-?text (?:prepared|produced|scanned|created) by|"
    r"transcribed (?:from|by)|transcriber'?s? notes?|scanned (?:by|and proofread)|"
    r"special thanks|proofread(?:ing)? by|updated editions will|distributed proofread|"
    r"there is an illustrated edition|an illustrated (?:html )?version|this etext)",
    re.I,
)
_PARAGRAPH = re.compile(r"\S(?:.*\S)?(?:\n[ \t]*\S.*)*")  # lines up to a blank line


@dataclass
class Stripped:
    text: str
    removed: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


def strip_gutenberg(text: str) -> Stripped:
    """Remove Project Gutenberg header, footer (licence) and producer credits."""
    if "gutenberg" not in text.lower():
        return Stripped(text)
    header_blocks: list[str] = []
    footer_blocks: list[str] = []
    meta: dict[str, Any] = {}
    body_start, body_end = 0, len(text)

    start = _START.search(text, 0, max(len(text) * 2 // 5, 50_000))
    if start:
        header = text[: start.end()]
        header_blocks.append(header.strip())
        meta.update(_header_fields(header))
        body_start = start.end()
    for end in _END.finditer(text, body_start):
        # Without a START marker, only trust an END line in the second half.
        if start or end.start() >= len(text) // 2:
            body_end = end.start()
            footer = text[end.start():]
            footer_blocks.append(footer.strip())
            if "title" not in meta:
                meta.update(_footer_fields(end.group(0)))
            break

    body = text[body_start:body_end]
    body, credits = _strip_credits(body)
    removed = header_blocks + credits + footer_blocks
    for credit in credits:
        produced = re.match(r"\s*produced by:?\s*(.+)", credit, re.I | re.S)
        if produced and "produced_by" not in meta:
            meta["produced_by"] = " ".join(produced.group(1).split())
    if not removed:
        return Stripped(text)
    body = re.sub(r"\A(?:[ \t]*\n)+", "", body).rstrip()
    meta["source"] = "Project Gutenberg"
    return Stripped(body, removed, meta)


def _strip_credits(body: str) -> tuple[str, list[str]]:
    """Credit paragraphs among the first few paragraphs of the body."""
    credits: list[str] = []
    cuts: list[tuple[int, int]] = []
    for i, para in enumerate(_PARAGRAPH.finditer(body, 0, min(len(body), 6000))):
        if i >= 8:
            break
        chunk = para.group(0)
        if _CREDITS.match(chunk) or (len(chunk) < 400 and re.search(
                r"gutenberg|www\.|https?://", chunk, re.I)):
            credits.append(chunk.strip())
            cuts.append((para.start(), para.end()))
    for s, e in reversed(cuts):
        body = body[:s] + body[e:]
    return body, credits


def _header_fields(header: str) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    key = None
    for line in header.split("\n"):
        match = _FIELD.match(line.strip())
        if match:
            key = match.group(1).lower().replace(" ", "_").replace("authors", "author")
            if key == "credits":
                key = "produced_by"
            meta[key] = match.group(2).strip()
        elif key and line.startswith((" ", "\t")) and line.strip():
            # An indented continuation (a subtitle under "Title:").
            if key == "title":
                meta["subtitle"] = (meta.get("subtitle", "") + " " + line.strip()).strip()
            else:
                meta[key] += " " + line.strip()
        else:
            key = None
    if number := _EBOOK_NO.search(header):
        meta["gutenberg_id"] = int(number.group(1))
    if "title" not in meta and (first := _FIRST_LINE.search(header)):
        meta["title"] = first.group("title").strip()
        if first.group("author"):
            meta.setdefault("author", first.group("author").strip())
    return {k: v for k, v in meta.items() if v not in ("", None)}


def _footer_fields(line: str) -> dict[str, Any]:
    if "***" in line or line.strip().isupper():
        return {}
    match = _END_TITLE.search(line.strip())
    if not match:
        return {}
    meta = {"title": match.group("title").strip()}
    if match.group("author"):
        meta["author"] = match.group("author").strip()
    return meta


# --- PDF page furniture ------------------------------------------------------------

_ROMAN = re.compile(r"[ivxlcdm]+", re.I)


def _furniture_key(line: str) -> str:
    key = " ".join(line.split()).lower()
    if _ROMAN.fullmatch(key):
        return "#"  # front-matter page numbers: i, ii, iv
    return re.sub(r"\d+", "#", key)


_TRAILING_NUMBER = re.compile(r"(?:^|\s)(\d{1,4})\s*$")


def _page_label_offset(filled_pages: list[list[str]], per_edge: int) -> int | None:
    """The constant difference between printed page numbers and page indexes, if the
    edges of enough pages end with a number that follows it."""
    offsets: Counter[int] = Counter()
    for i, filled in enumerate(filled_pages):
        numbers = {int(m.group(1)) for ln in filled[:per_edge] + filled[-per_edge:]
                   if (m := _TRAILING_NUMBER.search(ln))}
        offsets.update({n - i for n in numbers})
    if not offsets:
        return None
    offset, count = offsets.most_common(1)[0]
    return offset if count >= max(3, len(filled_pages) * 0.3) else None


def strip_page_furniture(pages: list[str], per_edge: int = 2) -> tuple[list[str], list[str]]:
    """Remove running headers, footers and page numbers from the top and bottom lines
    of pages: lines that recur (digits aside) at the same edge of at least three pages,
    and lines ending with the printed page number (a chapter's running header may
    appear on only one or two pages, but it carries the page number).

    Returns the cleaned pages and one example of each kind of line removed.
    """
    if len(pages) < 2:
        return pages, []
    need = 2 if len(pages) <= 3 else 3
    page_lines = [page.split("\n") for page in pages]
    filled_pages = [[ln for ln in lines if ln.strip()] for lines in page_lines]
    counts: Counter[tuple[str, str]] = Counter()
    for filled in filled_pages:
        seen = {("top", _furniture_key(ln)) for ln in filled[:per_edge]}
        seen |= {("bottom", _furniture_key(ln)) for ln in filled[-per_edge:]}
        counts.update(seen)
    offset = _page_label_offset(filled_pages, per_edge)

    def furniture(edge: str, line: str, index: int) -> bool:
        key = _furniture_key(line)
        if (key == "#" or len(key) >= 3 and any(c.isalnum() for c in key)) \
                and counts[(edge, key)] >= need:
            return True
        number = _TRAILING_NUMBER.search(line)
        return offset is not None and number is not None and int(number.group(1)) == index + offset

    examples: dict[str, str] = {}
    cleaned: list[str] = []
    for index, original in enumerate(page_lines):
        lines = list(original)
        found: dict[str, str] = {}
        for edge in ("top", "bottom"):
            dropped = 0
            while dropped < per_edge:
                filled = [i for i, ln in enumerate(lines) if ln.strip()]
                if not filled:
                    break
                i = filled[0] if edge == "top" else filled[-1]
                if not furniture(edge, lines[i], index):
                    break
                found.setdefault(_furniture_key(lines[i]), lines[i].strip())
                del lines[i]
                dropped += 1
        if not any(ln.strip() for ln in lines):
            lines = original  # a page that is all "furniture" is content after all
        else:
            for key, example in found.items():
                examples.setdefault(key, example)
        cleaned.append("\n".join(lines).strip("\n"))
    return cleaned, list(examples.values())
