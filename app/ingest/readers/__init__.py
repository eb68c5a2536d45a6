"""Readers: a file (path or bytes) -> ReadResult (text, format, title, meta, pages).

``read_file`` checks what every format shares (existence, size limit, emptiness),
dispatches on the extension, then moves known boilerplate (Project Gutenberg headers
and licences) out of the text into ``meta["boilerplate"]``. Anything a user can get
wrong comes back as one IngestError naming the file, the cause and what to do.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from app.errors import IngestError
from app.ingest.boilerplate import strip_gutenberg
from app.ingest.readers.docx import read_docx
from app.ingest.readers.epub import read_epub
from app.ingest.readers.html import read_html
from app.ingest.readers.markdown import read_markdown
from app.ingest.readers.pdf import read_pdf
from app.ingest.readers.text import read_text
from app.ingest.types import ReadResult

Reader = Callable[[Path, bytes], ReadResult]

_READERS: dict[str, Reader] = {
    ".txt": read_text, ".text": read_text, ".log": read_text, ".rst": read_text,
    ".csv": read_text, ".tsv": read_text,
    ".md": read_markdown, ".markdown": read_markdown,
    ".html": read_html, ".htm": read_html, ".xhtml": read_html,
    ".pdf": read_pdf,
    ".docx": read_docx,
    ".epub": read_epub,
}
SUPPORTED_SUFFIXES: set[str] = set(_READERS)

_MB = 1024 * 1024


def read_file(path: Path, *, max_bytes: int, raw: bytes | None = None) -> ReadResult:
    path = Path(path)
    name = str(path)
    suffix = path.suffix.lower()
    # A file named without an extension (README, LICENSE) is tried as text.
    reader = _READERS.get(suffix) or (read_text if not suffix else None)
    if reader is None:
        raise IngestError(
            name, f"has a format tomes does not read ({suffix})",
            "convert it to one of " + ", ".join(sorted(SUPPORTED_SUFFIXES)),
        )
    if raw is None:
        if not path.exists():
            raise IngestError(name, "does not exist", "check the path")
        if path.is_dir():
            raise IngestError(name, "is a directory", "ingest it as a directory, not a file")
        check_size(name, path.stat().st_size, max_bytes)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise IngestError(name, f"cannot be read ({exc.strerror})", "check its permissions") from exc
    check_size(name, len(raw), max_bytes)
    if not raw.strip():
        raise IngestError(name, "is empty", "check the file has content, or leave it out")

    try:
        result = reader(path, raw)
    except IngestError:
        raise
    except Exception as exc:  # noqa: BLE001 - a parser crash is still about this one file
        raise IngestError(
            name, f"could not be read as {suffix or 'text'} ({type(exc).__name__}: {exc})",
            "check it opens in its usual application; if it does, please report this",
        ) from exc

    if result.page_starts is None:
        # Gutenberg texts also come as HTML and EPUB; page offsets would need remapping,
        # and PDFs have their own page furniture removal.
        stripped = strip_gutenberg(result.text)
        if stripped.removed:
            result.text = stripped.text
            result.meta.setdefault("boilerplate", []).extend(stripped.removed)
            for key, value in stripped.meta.items():
                result.meta.setdefault(key, value)
            if stripped.meta.get("title"):
                result.title = stripped.meta["title"]
    if not result.text.strip():
        raise IngestError(name, "has no text after reading (only markup, images or boilerplate)",
                          "check the file is the document you meant")
    result.title = " ".join(result.title.split())[:500] or path.stem
    return result


def check_size(name: str, size: int, max_bytes: int) -> None:
    """Raise IngestError when a file of ``size`` bytes is over the limit."""
    if size > max_bytes:
        raise IngestError(
            name, f"is {size / _MB:.1f} MB, over the {max_bytes / _MB:.3g} MB limit",
            f"raise the limit (TOMES_MAX_FILE_MB={int(size / _MB) + 1}) or split the file",
        )
