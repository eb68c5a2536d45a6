"""Word .docx (Office Open XML), read with the standard library: paragraphs, headings
(from paragraph styles, whatever language the style names are in), list items and
tables. No dependency: a .docx is a zip of XML."""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path
from xml.etree import ElementTree as ET

from app.errors import IngestError
from app.ingest.types import ReadResult

W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
DC = "{http://purl.org/dc/elements/1.1/}"
_HEADING = re.compile(r"^heading\s*(\d)$", re.I)


def open_zip(path: Path, raw: bytes, what: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(io.BytesIO(raw))
    except zipfile.BadZipFile as exc:
        raise IngestError(str(path), f"is not a readable {what} (damaged or not a zip container)",
                          "open it in its application and save it again") from exc


def _xml(archive: zipfile.ZipFile, name: str) -> ET.Element | None:
    try:
        return ET.fromstring(archive.read(name))
    except KeyError:
        return None


def _heading_levels(styles: ET.Element | None) -> dict[str, int]:
    """Style id -> heading level (1-6). Ids are localised ("berschrift1"); the English
    name ("heading 1") or the outline level says what they are."""
    levels: dict[str, int] = {}
    if styles is None:
        return levels
    for style in styles.iter(f"{W}style"):
        sid = style.get(f"{W}styleId")
        name_el = style.find(f"{W}name")
        name = (name_el.get(f"{W}val") if name_el is not None else "") or ""
        outline = style.find(f"{W}pPr/{W}outlineLvl")
        if not sid:
            continue
        if match := _HEADING.match(name.strip()):
            levels[sid] = min(int(match.group(1)), 6)
        elif name.strip().lower() == "title":
            levels[sid] = 1
        elif outline is not None and (outline.get(f"{W}val") or "").isdigit():
            level = int(outline.get(f"{W}val")) + 1
            if level <= 6:
                levels[sid] = level
    return levels


def _paragraph_text(p: ET.Element) -> str:
    parts: list[str] = []
    for el in p.iter():
        if el.tag == f"{W}t":
            parts.append(el.text or "")
        elif el.tag == f"{W}tab":
            parts.append("\t")
        elif el.tag in (f"{W}br", f"{W}cr"):
            parts.append("\n")
    return "".join(parts)


def _blocks(container: ET.Element, levels: dict[str, int]) -> list[str]:
    blocks: list[str] = []
    for el in container:
        if el.tag == f"{W}p":
            text = _paragraph_text(el).strip()
            if not text:
                continue
            style = el.find(f"{W}pPr/{W}pStyle")
            sid = style.get(f"{W}val") if style is not None else None
            if sid in levels:
                blocks.append("#" * levels[sid] + " " + " ".join(text.split()))
            elif el.find(f"{W}pPr/{W}numPr") is not None:
                blocks.append("- " + text)
            else:
                blocks.append(text)
        elif el.tag == f"{W}tbl":
            rows = []
            for tr in el.iter(f"{W}tr"):
                cells = [" ".join(_paragraph_text(p).strip() for p in tc.iter(f"{W}p")).strip()
                         for tc in tr.findall(f"{W}tc")]
                rows.append(" | ".join(cells))
            if any(r.strip(" |") for r in rows):
                blocks.append("\n".join(rows))
        elif el.tag == f"{W}sdt":  # content controls wrap ordinary paragraphs
            content = el.find(f"{W}sdtContent")
            if content is not None:
                blocks.extend(_blocks(content, levels))
    return blocks


def read_docx(path: Path, raw: bytes) -> ReadResult:
    archive = open_zip(path, raw, "Word document")
    document = _xml(archive, "word/document.xml")
    if document is None:
        raise IngestError(str(path), "is a zip file but not a Word document (no word/document.xml)",
                          "check it is a .docx saved by Word or LibreOffice")
    body = document.find(f"{W}body")
    levels = _heading_levels(_xml(archive, "word/styles.xml"))
    text = "\n\n".join(_blocks(body, levels)) if body is not None else ""
    meta: dict = {}
    core = _xml(archive, "docProps/core.xml")
    if core is not None:
        for key, tag in (("title", "title"), ("author", "creator"), ("subject", "subject")):
            el = core.find(f"{DC}{tag}")
            if el is not None and (el.text or "").strip():
                meta[key] = el.text.strip()
    first_heading = re.search(r"^#+ (.+)$", text, re.M)
    title = meta.pop("title", None) or (first_heading.group(1) if first_heading else None) or path.stem
    return ReadResult(text=text, format="docx", title=title, meta=meta)
