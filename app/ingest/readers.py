"""PLACEHOLDER readers (plain text only) until the ingestion helper replaces this file."""

from __future__ import annotations

from pathlib import Path

from app.errors import IngestError
from app.ingest.types import ReadResult

SUPPORTED_SUFFIXES = {".txt", ".md"}


def read_file(path: Path, *, max_bytes: int, raw: bytes | None = None) -> ReadResult:
    raw = path.read_bytes() if raw is None else raw
    if len(raw) > max_bytes:
        raise IngestError(str(path), "too large", "raise TOMES_MAX_FILE_MB")
    text = raw.decode("utf-8-sig", errors="replace").replace("\r\n", "\n").replace("\r", "\n")
    return ReadResult(text=text, format=path.suffix.lstrip(".").lower() or "txt", title=path.stem)
