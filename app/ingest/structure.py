"""The structure the chunker respects: blocks (paragraphs, code, headings), sentence and
line ends inside them, and the headings chunks are filed under.

Headings are recognised in the forms the readers produce and books use: markdown `#`
lines (HTML, PDF bookmarks, DOCX and EPUB headings are rendered that way), setext or
reStructuredText underlines, and the chapter lines of books ("CHAPTER IV", "Chapter 4",
"Letter 2", "PART ONE", a lone "XII"), with a short title line below joined to them.
A table of contents (chapter lines one after another) is not taken for headings.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass, field

# Strength of a boundary: where a chunk may end. Higher is better.
KEEP = -1  # right after a heading: a chunk should not end with its heading
CHAR = 0
WORD = 1
LINE = 2
SENTENCE = 3
PARAGRAPH = 4
HEADING = 5  # right before a heading

_NUMBER_WORDS = (
    "one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|"
    "fifteen|sixteen|seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|"
    "eighty|ninety|hundred|first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|"
    "tenth|eleventh|twelfth|thirteenth|fourteenth|fifteenth|sixteenth|seventeenth|"
    "eighteenth|nineteenth|twentieth|last|final"
)
_CHAPTER = re.compile(
    r"^(chapter|chap\.|book|part|volume|vol\.|letter|section|act|scene|canto|stave|"
    r"lecture|essay|story|tale)\s+"
    rf"(\d+|[ivxlcdm]+|(?:{_NUMBER_WORDS})(?:[- ](?:{_NUMBER_WORDS}))?)\b"
    r"[.:]?(?:\s*[-—–:.]\s*\S.{0,70}|\s+\S.{0,70})?$",
    re.I,
)
_SPECIAL = re.compile(
    r"^(prologue|epilogue|preface|foreword|afterword|introduction|conclusion|appendix|"
    r"contents|table of contents|postscript|interlude|finale)(?:\s+\S.{0,50})?[.:]?$",
    re.I,
)
_ROMAN = re.compile(r"^[IVXLC]{1,7}\.?(?:\s+[A-Z“\"'‘].{0,70})?$")
_ATX = re.compile(r"^ {0,3}(#{1,6})[ \t]+(\S.*?)[ \t#]*$")
_UNDERLINE = re.compile(r"^ {0,3}([=\-~^*+#\"'`:.])\1{2,}[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_LIST_ITEM = re.compile(r"^\s*(?:[-*+•]|\d+[.)])\s")
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]»]*(?=\s+\S)")
_ABBREVIATION = re.compile(
    r"(?:\b(?:mr|mrs|ms|dr|st|jr|sr|prof|mt|vs|etc|cf|no|vol|fig|capt|col|gen|gov|lt|sgt|"
    r"rev|hon|messrs|mme|mlle|esq|co|inc|ltd|viz|ch|pp|ed)|\b[A-Za-z]|\be\.g|\bi\.e)\.$",
    re.I,
)
_QUOTE_START = "\"'“‘«—–-(["


@dataclass(frozen=True)
class Heading:
    start: int
    text: str


@dataclass
class Structure:
    """Candidate boundaries (atom starts) with their strengths, and the headings."""

    bounds: list[int] = field(default_factory=list)  # sorted; bounds[0] == 0
    strengths: list[int] = field(default_factory=list)  # strength of ending before bounds[i]
    headings: list[Heading] = field(default_factory=list)

    def heading_at(self, pos: int) -> str | None:
        """The nearest heading that starts at or before ``pos``."""
        if not hasattr(self, "_starts"):
            self._starts = [h.start for h in self.headings]
        i = bisect_right(self._starts, pos) - 1
        return self.headings[i].text if i >= 0 else None


@dataclass
class _Block:
    start: int  # first character of its first line
    end: int  # end of its last line (before the newline)
    kind: str  # "para" | "code" | "heading"
    lines: int = 1
    heading: str | None = None
    family: str | None = None  # chapter-line family ("chapter", "roman", ...), or None


def _blocks(text: str) -> list[_Block]:
    blocks: list[_Block] = []
    lines = text.split("\n")
    offsets = [0]
    for line in lines[:-1]:
        offsets.append(offsets[-1] + len(line) + 1)
    current: _Block | None = None
    fence: str | None = None

    def close() -> None:
        nonlocal current
        if current is not None:
            blocks.append(current)
            current = None

    def atx(i: int) -> re.Match | None:
        return _ATX.match(lines[i]) if 0 <= i < len(lines) else None

    for i, line in enumerate(lines):
        start, end = offsets[i], offsets[i] + len(line)
        if fence is not None:
            current.end, current.lines = end, current.lines + 1
            if line.strip().startswith(fence):
                fence = None
                close()
            continue
        if not line.strip():
            close()
            continue
        if m := _FENCE.match(line):
            close()
            fence = m.group(1)
            current = _Block(start, end, "code")
            continue
        if m := atx(i):
            # Runs of same-level "#" lines are comments in code, not headings.
            level = len(m.group(1))
            if not any((n := atx(j)) and len(n.group(1)) == level for j in (i - 1, i + 1)):
                close()
                blocks.append(_Block(start, end, "heading", heading=m.group(2).strip()))
                continue
        if _UNDERLINE.match(line) and current is not None and current.kind == "para":
            first = text[current.start:current.end].split("\n")
            title = first[-1].strip()
            overlined = len(first) == 2 and _UNDERLINE.match(first[0])
            if (current.lines == 1 or overlined) and title and len(title) <= 100 \
                    and not _LIST_ITEM.match(first[-1]) and not _UNDERLINE.match(first[-1]):
                current.kind, current.heading = "heading", title
                current.end, current.lines = end, current.lines + 1
                close()
                continue
        if current is None:
            current = _Block(start, end, "para")
        else:
            current.end, current.lines = end, current.lines + 1
    close()
    return blocks


def _chapter_family(line: str) -> str | None:
    line = line.strip()
    if len(line) > 90:
        return None
    if m := _CHAPTER.match(line):
        return m.group(1).lower().rstrip(".")
    if m := _SPECIAL.match(line):
        return m.group(1).lower()
    if _ROMAN.match(line):
        return "roman"
    return None


def _title_like(line: str) -> bool:
    line = line.strip()
    if not line or len(line) > 80 or line[0] in _QUOTE_START or line[0].islower():
        return False
    letters = [c for c in line if c.isalpha()]
    if letters and all(c.isupper() for c in letters):
        return True
    return not re.search(r"[.!?,;:][\"'”’)\]]*$", line)


def _book_headings(text: str, blocks: list[_Block]) -> None:
    """Mark chapter lines as headings, join a title line below them, drop TOC entries."""
    for i, block in enumerate(blocks):
        if block.kind != "para" or block.lines > 2:
            continue
        lines = text[block.start:block.end].split("\n")
        family = _chapter_family(lines[0])
        if family is None or (len(lines) == 2 and not _title_like(lines[1])):
            continue
        title = " ".join(lines[0].split())
        if len(lines) == 2:
            title = _join(title, lines[1])
        elif i + 1 < len(blocks):
            nxt = blocks[i + 1]
            sub = text[nxt.start:nxt.end]
            if nxt.kind == "para" and nxt.lines == 1 and _title_like(sub) \
                    and _chapter_family(sub) is None:
                title = _join(title, sub)
                nxt.kind = "subtitle"
        block.kind, block.heading, block.family = "heading", title, family
    # A chapter line followed at once by another of its family is a table of contents.
    chapters = [b for b in blocks if b.family]
    for b, nxt in zip(chapters, chapters[1:]):
        between = text[b.end:nxt.start]
        if nxt.family == b.family and len("".join(between.split())) < 80:
            b.kind, b.heading, b.family = "para", None, None
    for b in blocks:
        if b.kind == "subtitle":
            b.kind = "heading_tail"


def _join(title: str, sub: str) -> str:
    sub = " ".join(sub.split())
    return f"{title} {sub}" if title[-1] in ".:—-–" else f"{title}: {sub}"


def analyse(text: str) -> Structure:
    blocks = _blocks(text)
    _book_headings(text, blocks)
    # A subtitle whose chapter line turned out to be a TOC entry is plain text again.
    for i, b in enumerate(blocks):
        if b.kind == "heading_tail" and (i == 0 or blocks[i - 1].kind != "heading"):
            b.kind = "para"

    marks: dict[int, int] = {0: HEADING}
    headings: list[Heading] = []
    prev: _Block | None = None
    for block in blocks:
        if prev is not None:
            if prev.kind == "heading" or block.kind == "heading_tail":
                strength = KEEP
            elif block.kind == "heading":
                strength = HEADING
            else:
                strength = PARAGRAPH
            marks[_ws_start(text, prev.end)] = strength
        if block.kind == "heading":
            headings.append(Heading(_content_start(text, block.start), block.heading or ""))
        elif block.kind in ("para", "code"):
            _inner_marks(text, block, marks)
        prev = block
    bounds = sorted(p for p in marks if p < len(text))
    return Structure(bounds, [marks[p] for p in bounds], headings)


def _inner_marks(text: str, block: _Block, marks: dict[int, int]) -> None:
    start, end = block.start, block.end
    nl = text.find("\n", start, end)
    while nl != -1:
        p = _ws_start(text, nl)
        if p > start:
            marks[p] = max(marks.get(p, LINE), LINE)
        nl = text.find("\n", nl + 1, end)
    if block.kind == "code":
        return
    for m in _SENTENCE_END.finditer(text, start, end):
        p = m.end()
        if p >= end:
            continue
        nxt = _content_start(text, p)
        if nxt < len(text) and text[nxt].islower():
            continue
        if text[m.start()] == "." and _ABBREVIATION.search(text, max(start, m.start() - 12), m.start() + 1):
            continue
        marks[p] = max(marks.get(p, SENTENCE), SENTENCE)


def _ws_start(text: str, pos: int) -> int:
    """The start of the whitespace run that ends at ``pos`` (or ``pos`` itself)."""
    while pos > 0 and text[pos - 1].isspace():
        pos -= 1
    return pos


def _content_start(text: str, pos: int) -> int:
    n = len(text)
    while pos < n and text[pos].isspace():
        pos += 1
    return pos
