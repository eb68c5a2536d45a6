"""PDF via pypdf: text per page (page_starts), running headers/footers moved to
metadata, outline entries marked as `#` headings, and one clear message for the PDFs
that cannot be read (damaged, password-protected, scanned without a text layer)."""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

from app.errors import IngestError
from app.ingest.boilerplate import strip_page_furniture
from app.ingest.types import ReadResult

_JUNK = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
PAGE_SEPARATOR = "\n\n"


def read_pdf(path: Path, raw: bytes) -> ReadResult:
    from pypdf import PdfReader
    from pypdf.errors import DependencyError, FileNotDecryptedError, PdfReadError

    name = str(path)
    logging.getLogger("pypdf").setLevel(logging.ERROR)  # its warnings are not for users
    try:
        reader = PdfReader(io.BytesIO(raw), strict=False)
        if reader.is_encrypted:
            _decrypt(reader, name)
        n_pages = len(reader.pages)
    except IngestError:
        raise
    except DependencyError as exc:
        raise IngestError(name, f"is encrypted in a way that needs an extra library ({exc})",
                          "install it (`pip install cryptography`) or save an unencrypted copy") from exc
    except FileNotDecryptedError as exc:
        raise _locked(name) from exc
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, IndexError,
            RecursionError, OSError) as exc:
        raise IngestError(name, f"is not a readable PDF (damaged or truncated: {exc})",
                          "open it in a PDF viewer and save or print it to a new PDF") from exc
    if n_pages == 0:
        raise IngestError(name, "is a PDF with no pages", "check the file is complete")

    pages: list[str] = []
    failed: list[int] = []
    for number, page in enumerate(reader.pages, start=1):
        try:
            pages.append(_JUNK.sub("", page.extract_text() or ""))
        except Exception:  # noqa: BLE001 - one bad page must not lose the others
            pages.append("")
            failed.append(number)
    if not any(p.strip() for p in pages):
        raise IngestError(
            name, f"has no text layer ({n_pages} page(s) of images: a scan?)",
            "run OCR on it first (e.g. `ocrmypdf in.pdf out.pdf`) and ingest the result",
        )

    first_line = _first_line(next(p for p in pages if p.strip()))
    pages, furniture = strip_page_furniture(pages)
    pages = _mark_outline(reader, pages)
    page_starts: list[int] = []
    parts: list[str] = []
    offset = 0
    for page in pages:
        page_starts.append(offset)
        parts.append(page)
        offset += len(page) + len(PAGE_SEPARATOR)
    text = PAGE_SEPARATOR.join(parts)

    meta: dict = {"pages": n_pages}
    if furniture:
        meta["boilerplate"] = furniture
    empty = [i + 1 for i, p in enumerate(pages) if not p.strip()]
    if empty:
        meta["pages_without_text"] = empty
    if failed:
        meta["pages_failed"] = failed
    info = _metadata(reader)
    meta.update({k: v for k, v in info.items() if k != "title"})
    title = info.get("title") or first_line or path.stem
    return ReadResult(text=text, format="pdf", title=title, meta=meta, page_starts=page_starts)


def _decrypt(reader, name: str) -> None:
    from pypdf import PasswordType

    # Many PDFs are "encrypted" only to restrict printing: the empty password opens them.
    if reader.decrypt("") == PasswordType.NOT_DECRYPTED:
        raise _locked(name)


def _locked(name: str) -> IngestError:
    return IngestError(name, "is encrypted with a password",
                       "save a copy without a password (e.g. `qpdf --decrypt`) and ingest that")


def _metadata(reader) -> dict[str, str]:
    try:
        info = reader.metadata or {}
    except Exception:  # noqa: BLE001 - damaged metadata is not worth failing the file
        return {}
    out = {}
    for key, field in (("title", "/Title"), ("author", "/Author"), ("subject", "/Subject")):
        value = info.get(field)
        value = str(value).strip() if value is not None else ""
        if value and value.lower() not in {"untitled", "unknown", "none"}:
            out[key] = value
    return out


def _first_line(text: str) -> str | None:
    for line in text.split("\n", 20)[:20]:
        line = line.strip().lstrip("#").strip()
        if line:
            return line if len(line) <= 120 and any(c.isalpha() for c in line) else None
    return None


def _outline(reader) -> list[tuple[str, int, int]]:
    """(title, 0-based page, depth) of each bookmark."""
    entries: list[tuple[str, int, int]] = []

    def walk(items, depth: int) -> None:
        for item in items:
            if isinstance(item, list):
                walk(item, depth + 1)
                continue
            try:
                page = reader.get_destination_page_number(item)
            except Exception:  # noqa: BLE001 - a broken bookmark is skipped
                continue
            title = " ".join(str(getattr(item, "title", "") or "").split())
            if title and page is not None and page >= 0:
                entries.append((title, page, depth))

    try:
        walk(reader.outline, 0)
    except Exception:  # noqa: BLE001 - no usable outline: no headings
        return []
    return entries


_SECTION_NUMBER = re.compile(
    r"^(?:(?:chapter|appendix|part|section)(?:\s+[\dA-Z]{1,3}(?:\.\d+)*[.:]?)?"
    r"|[\dA-Z]{1,3}(?:\.\d+)*[.:]?)$",
    re.I,
)


def _mark_outline(reader, pages: list[str]) -> list[str]:
    """Mark the lines that bookmarks point at as `#` headings, so chunks know their
    section the way they do for HTML and markdown."""
    entries = _outline(reader)
    if not entries:
        return pages
    split = [page.split("\n") for page in pages]
    for title, page, depth in entries:
        if page >= len(split):
            continue
        want = title.lower()
        for i, line in enumerate(split[page]):
            norm = " ".join(line.split()).lower()
            if not norm or norm.startswith("#"):
                continue
            prefix = norm[: -len(want)].strip() if norm.endswith(want) else None
            if prefix is not None and (not prefix or _SECTION_NUMBER.match(prefix)):
                split[page][i] = "#" * min(depth + 1, 6) + " " + " ".join(line.split())
                break
    return ["\n".join(lines) for lines in split]
