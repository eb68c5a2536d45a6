"""Markdown: the text as written (headings stay `#` lines; the chunker reads them)."""

from __future__ import annotations

import re
from pathlib import Path

from app.ingest.readers.text import decode_report, encoding_meta
from app.ingest.types import ReadResult

_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.*?\n)(?:---|\.\.\.)[ \t]*\n", re.S)
_ATX = re.compile(r"^ {0,3}#[ \t]+(.+?)[ \t#]*$", re.M)
_SETEXT = re.compile(r"^(\S.*)\n=+[ \t]*$", re.M)
_FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1", re.M | re.S)


def read_markdown(path: Path, raw: bytes) -> ReadResult:
    text, encoding, replaced = decode_report(raw, path)
    meta: dict = encoding_meta(encoding, replaced)
    title = None
    front = _FRONT_MATTER.match(text)
    if front:
        # YAML front matter is metadata, not prose: keep it out of the text.
        meta["front_matter"] = front.group(1)
        for line in front.group(1).splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() in {"title", "author"} and value.strip():
                meta[key.strip().lower()] = value.strip().strip("\"'")
        title = meta.get("title")
        text = text[front.end():]
    if not title:
        # Code blocks can hold "# comment" lines: look for headings outside them.
        prose = _FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
        first = [m for m in (_ATX.search(prose), _SETEXT.search(prose)) if m]
        if first:
            title = min(first, key=lambda m: m.start()).group(1).strip()
    return ReadResult(text=text, format="md", title=title or path.stem, meta=meta)
