"""HTML (and the XHTML inside EPUBs) rendered as markdown-like text.

Headings become `#` lines (the chunker reads them as headings), paragraphs and other
blocks are separated by blank lines, list items get "- ", table rows become
"cell | cell" lines and <pre> blocks become fenced code (so "# comment" lines in code are
not mistaken for headings). Scripts, styles, navigation and other page chrome are
dropped. When the page has a <main> element, only it is read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from app.ingest.readers.text import decode_report, encoding_meta
from app.ingest.types import ReadResult

_DROP = {
    "script", "style", "nav", "noscript", "template", "svg", "button", "form", "input",
    "select", "textarea", "iframe", "object", "embed", "canvas", "head", "link", "meta",
    "-comment", "audio", "video", "map",
}
_BLOCK = {
    "address", "article", "aside", "blockquote", "body", "caption", "center", "dd",
    "details", "dialog", "div", "dl", "dt", "fieldset", "figcaption", "figure", "footer",
    "header", "hgroup", "hr", "html", "main", "ol", "p", "section", "summary", "table",
    "tbody", "tfoot", "thead", "ul",
}
_HEADINGS = {f"h{i}": i for i in range(1, 7)}
_SPACES = re.compile(r"\s+")
_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?([\w.:-]+)""", re.I)


@dataclass
class Rendered:
    text: str
    title: str | None = None
    meta: dict = field(default_factory=dict)


class _Writer:
    """Collects text with paragraph/line breaks that merge (two blank lines never stack)."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.pending = 0  # newlines owed before the next text
        self.prefix = ""  # a list marker waiting for its item's first text
        self.line_start = True
        self.cell_depth = 0

    def brk(self, n: int) -> None:
        if self.cell_depth:
            self.text(" ")
        elif not self.prefix:
            self.pending = max(self.pending, n)

    def _flush(self) -> None:
        if self.pending and self.parts:
            self.parts[-1] = self.parts[-1].rstrip(" ")
            self.parts.append("\n" * self.pending)
            self.line_start = True
        self.pending = 0
        if self.prefix:
            self.parts.append(self.prefix)
            self.prefix = ""
            self.line_start = True  # the marker's own space ends it

    def text(self, s: str) -> None:
        s = _SPACES.sub(" ", s)
        if self.line_start or self.pending:
            s = s.lstrip(" ")
        if not s:
            return
        self._flush()
        self.parts.append(s)
        self.line_start = s.endswith(" ")

    def raw(self, s: str) -> None:
        self._flush()
        self.parts.append(s)
        self.line_start = s.endswith("\n")

    def result(self) -> str:
        return "".join(self.parts).strip()


def _text_of(node) -> str:
    return _SPACES.sub(" ", node.text(deep=True) or "").strip()


def _hidden(node) -> bool:
    attrs = node.attributes
    return "hidden" in attrs or attrs.get("aria-hidden") == "true" or \
        "display:none" in (attrs.get("style") or "").replace(" ", "")


def _render(root, out: _Writer) -> None:
    # An explicit stack: real pages nest deeper than Python's recursion limit allows.
    stack: list[tuple[object, bool]] = [(root, False)]
    lists: list[list[int]] = []  # per open list: [is_ordered, next number]
    while stack:
        node, leaving = stack.pop()
        tag = node.tag
        if leaving:
            if tag in ("ul", "ol"):
                lists.pop()
                out.brk(2 if not lists else 1)
            elif tag in ("td", "th"):
                out.cell_depth -= 1
            elif tag == "code":
                out.text("`")
            elif tag == "li" or tag == "tr":
                out.brk(1)
            elif tag in _BLOCK:
                out.brk(2)
            continue
        if tag == "-text":
            out.text(node.text_content or "")
            continue
        if tag in _DROP or (tag and not tag.startswith("-") and _hidden(node)):
            continue
        if tag in _HEADINGS:
            heading = _text_of(node)
            if heading:
                out.brk(2)
                out.raw("#" * _HEADINGS[tag] + " " + heading)
                out.brk(2)
            continue
        if tag == "pre":
            code = (node.text(deep=True) or "").strip("\n")
            if code.strip():
                out.brk(2)
                out.raw("```\n" + code.rstrip() + "\n```")
                out.brk(2)
            continue
        if tag == "br":
            out.brk(1)
            continue
        if tag == "img":
            continue
        if tag in ("ul", "ol"):
            out.brk(2 if not lists else 1)
            lists.append([tag == "ol", int(node.attributes.get("start") or 1)
                          if (node.attributes.get("start") or "1").isdigit() else 1])
        elif tag == "li":
            out.brk(1)
            indent = "  " * max(0, len(lists) - 1)
            if lists and lists[-1][0]:
                out.prefix = f"{indent}{lists[-1][1]}. "
                lists[-1][1] += 1
            else:
                out.prefix = f"{indent}- "
        elif tag == "tr":
            out.brk(1)
        elif tag in ("td", "th"):
            if node.prev is not None and any(
                    p.tag in ("td", "th") for p in _previous_siblings(node)):
                out.text(" | ")
            out.cell_depth += 1
        elif tag == "code":
            # Inline code keeps its backticks: technical text reads wrongly without them.
            out.text("`")
        elif tag in _BLOCK:
            out.brk(2)
        stack.append((node, True))
        children = []
        child = node.child
        while child is not None:
            children.append(child)
            child = child.next
        stack.extend((c, False) for c in reversed(children))


def _previous_siblings(node):
    prev = node.prev
    while prev is not None:
        yield prev
        prev = prev.prev


def render_html(markup: str) -> Rendered:
    from selectolax.lexbor import LexborHTMLParser

    tree = LexborHTMLParser(markup)
    meta: dict = {}
    title_node = tree.css_first("title")
    title = _text_of(title_node) if title_node is not None else ""
    author = tree.css_first('meta[name="author"]')
    if author is not None and (author.attributes.get("content") or "").strip():
        meta["author"] = author.attributes["content"].strip()
    html = tree.css_first("html")
    if html is not None and html.attributes.get("lang"):
        meta["language"] = html.attributes["lang"]
    mains = [m for m in tree.css("main, [role=main]") if _text_of(m)]
    root = mains[0] if len(mains) == 1 else (tree.body or tree.root)
    out = _Writer()
    if root is not None:
        _render(root, out)
    text = out.result()
    if not title:
        h1 = tree.css_first("h1")
        title = _text_of(h1) if h1 is not None else ""
    return Rendered(text=text, title=title or None, meta=meta)


def read_html(path: Path, raw: bytes) -> ReadResult:
    declared = _CHARSET.search(raw[:4096])
    markup, encoding, replaced = decode_report(
        raw, path, declared.group(1).decode("ascii", "replace") if declared else None)
    rendered = render_html(markup)
    meta = {**encoding_meta(encoding, replaced), **rendered.meta}
    return ReadResult(text=rendered.text, format="html", title=rendered.title or path.stem, meta=meta)
