"""EPUB: the spine's XHTML documents in reading order, rendered like HTML; title and
author from the package metadata. Standard library only (an EPUB is a zip)."""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from urllib.parse import unquote
from xml.etree import ElementTree as ET

from app.errors import IngestError
from app.ingest.readers.docx import open_zip
from app.ingest.readers.html import render_html
from app.ingest.readers.text import decode
from app.ingest.types import ReadResult

OPF = "{http://www.idpf.org/2007/opf}"
DC = "{http://purl.org/dc/elements/1.1/}"
CONTAINER = "{urn:oasis:names:tc:opendocument:xmlns:container}"
_FONTS = re.compile(r"\.(?:ttf|otf|woff2?)$", re.I)


def read_epub(path: Path, raw: bytes) -> ReadResult:
    archive = open_zip(path, raw, "EPUB book")
    names = set(archive.namelist())
    bad = IngestError(str(path), "is not a valid EPUB (no package document)",
                      "open it in an e-book reader and export it again")
    if "META-INF/container.xml" not in names:
        raise bad
    if "META-INF/encryption.xml" in names:
        enc = archive.read("META-INF/encryption.xml").decode("utf-8", "replace")
        uris = re.findall(r'URI="([^"]+)"', enc)
        if any(not _FONTS.search(u) for u in uris):  # obfuscated fonts are harmless
            raise IngestError(str(path), "is DRM-protected", "ingest a DRM-free copy of the book")
    container = ET.fromstring(archive.read("META-INF/container.xml"))
    rootfile = container.find(f".//{CONTAINER}rootfile")
    opf_path = rootfile.get("full-path") if rootfile is not None else None
    if not opf_path or opf_path not in names:
        raise bad
    opf = ET.fromstring(archive.read(opf_path))
    base = posixpath.dirname(opf_path)

    manifest = {
        item.get("id"): posixpath.normpath(posixpath.join(base, unquote(item.get("href") or "")))
        for item in opf.iter(f"{OPF}item")
    }
    texts: list[str] = []
    for ref in opf.iter(f"{OPF}itemref"):
        if ref.get("linear") == "no":
            continue
        name = manifest.get(ref.get("idref"))
        if not name or name not in names:
            continue
        markup, _ = decode(archive.read(name), Path(name))
        rendered = render_html(markup).text
        if rendered.strip():
            texts.append(rendered)

    meta: dict = {}
    for key, tag in (("title", "title"), ("author", "creator"), ("language", "language"),
                     ("publisher", "publisher")):
        el = opf.find(f".//{DC}{tag}")
        if el is not None and (el.text or "").strip():
            meta[key] = el.text.strip()
    title = meta.pop("title", None) or path.stem
    return ReadResult(text="\n\n".join(texts), format="epub", title=title, meta=meta)
