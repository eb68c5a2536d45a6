"""Plain-text files: bytes -> str with the right encoding and \\n line endings.

Files in the wild come with byte-order marks, legacy code pages and a mix of LF, CRLF
and CR (even CR CR LF, from a CRLF file converted twice). Binary files that merely carry
a text extension are caught here, with a message naming what they really are.
"""

from __future__ import annotations

import codecs
import re
from pathlib import Path

from app.errors import IngestError
from app.ingest.types import ReadResult

# Magic numbers of files people mistake for text (or name wrongly).
_MAGIC: list[tuple[bytes, str]] = [
    (b"%PDF-", "a PDF document"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"PK\x03\x04", "a ZIP archive (or a .docx/.epub/.xlsx file)"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"BZh", "a bzip2 archive"),
    (b"\xfd7zXZ\x00", "an xz archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-zip archive"),
    (b"\x7fELF", "an executable program"),
    (b"MZ", "a Windows executable"),
    (b"SQLite format 3\x00", "an SQLite database"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an old Microsoft Office file (.doc/.xls)"),
    (b"RIFF", "a RIFF media file (audio/video/image)"),
    (b"OggS", "an Ogg media file"),
    (b"ID3", "an MP3 audio file"),
]

_BOMS: list[tuple[bytes, str]] = [
    (codecs.BOM_UTF32_LE, "utf-32-le"),  # before UTF-16 LE: it starts with the same bytes
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
]

# One line break: CR* LF (CRLF, and CR CR LF from a double conversion) or a lone CR.
_NEWLINES = re.compile(r"\r*\n|\r")
# Control characters that never occur in real text (tab, LF, VT, FF, CR are fine).
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f\ufffd]")


def sniff_binary(raw: bytes) -> str | None:
    """What a binary file is, from its magic number, or None if it may be text."""
    for magic, what in _MAGIC:
        if raw.startswith(magic):
            # "MZ"/"ID3"/"BZh" are short: only trust them if the rest is not text-like.
            if len(magic) < 4 and _looks_textual(raw[:4096]):
                continue
            return what
    return None


def _looks_textual(sample: bytes) -> bool:
    return b"\x00" not in sample and sum(b < 9 or 13 < b < 32 for b in sample) < len(sample) * 0.01


def decode(raw: bytes, path: Path, declared: str | None = None) -> tuple[str, str]:
    """(text with \\n line endings, encoding name). Raises IngestError for binary data."""
    text, encoding, _replaced = decode_report(raw, path, declared)
    return text, encoding


def decode_report(raw: bytes, path: Path, declared: str | None = None) -> tuple[str, str, list[int]]:
    """(text with \\n line endings, encoding name, byte offsets replaced with U+FFFD).

    ``declared`` is the encoding the file claims (an HTML meta charset; for plain text a
    header such as Project Gutenberg's "Character set encoding:" is read here): honoured
    when the bytes are not strict UTF-8. A file that is UTF-8 but for a few bad bytes
    stays UTF-8 with those bytes replaced (and their offsets reported): guessing a legacy
    code page for it instead would garble every other non-ASCII character.
    """
    text, encoding, replaced = _decode(raw, path, _known(declared) or declared_charset(raw))
    text = _NEWLINES.sub("\n", text)
    bad = len(_CONTROL.findall(text[:200_000])) - len(replaced)
    if bad > max(8, min(len(text), 200_000) * 0.005):
        raise _not_text(path, f"contains binary data{_first_binary(raw)}")
    # A handful of stray control characters in an otherwise good text: drop them.
    if bad > 0 or "\x00" in text:
        text = _CONTROL.sub("", text) if not replaced else _CONTROL_ONLY.sub("", text)
    return text, encoding, replaced


_CONTROL_ONLY = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")
_BINARY_BYTE = re.compile(rb"[\x00-\x08\x0e-\x1f\x7f]")
# Where a plain-text file names its own encoding: Project Gutenberg's header, an
# Emacs/Python coding cookie on the first two lines.
_GUTENBERG = re.compile(rb"character set encoding:[ \t]*([\w.:-]+)", re.I)
_COOKIE = re.compile(rb"coding[:=][ \t]*([\w.-]+)")


def declared_charset(raw: bytes) -> str | None:
    match = _GUTENBERG.search(raw[:4096]) or _COOKIE.search(b"\n".join(raw[:1024].split(b"\n")[:2]))
    return _known(match.group(1).decode("ascii", "replace").rstrip(".:-")) if match else None


def _known(name: str | None) -> str | None:
    """The codec's canonical name, or None for a name Python does not know."""
    try:
        return codecs.lookup(name).name if name else None
    except LookupError:
        return None


def _first_binary(raw: bytes) -> str:
    match = _BINARY_BYTE.search(raw)
    return f" (byte 0x{raw[match.start()]:02x} at offset {match.start():,})" if match else ""


def _bad_utf8(raw: bytes) -> list[int]:
    """Offsets of the bytes that are not UTF-8, as a replacing decoder meets them."""
    offsets: list[int] = []
    start = 0
    while True:
        try:
            raw[start:].decode("utf-8")
            return offsets
        except UnicodeDecodeError as exc:
            offsets.extend(range(start + exc.start, start + exc.end))
            start += exc.end
            if len(offsets) > 4096:  # far too many to be a few bad bytes
                return offsets


def _mostly_utf8(raw: bytes) -> list[int] | None:
    """The bad bytes' offsets when the file is UTF-8 but for a few of them (its other
    non-ASCII characters are valid UTF-8 sequences), else None."""
    bad = _bad_utf8(raw)
    if not bad or len(bad) > 4096:
        return None
    valid_multibyte = sum(1 for b in raw if b >= 0xC2) - sum(1 for i in bad if raw[i] >= 0xC2)
    return bad if valid_multibyte >= max(1, 4 * len(bad)) else None


def _decode(raw: bytes, path: Path, declared: str | None) -> tuple[str, str, list[int]]:
    for bom, encoding in _BOMS:
        if raw.startswith(bom):
            try:
                return raw[len(bom):].decode(encoding), encoding, []
            except UnicodeDecodeError:
                break  # a BOM followed by garbage: let detection decide
    what = sniff_binary(raw)
    if what:
        raise _not_text(path, f"is {what}, not text")
    if b"\x00" in raw[:4096]:
        utf16 = _utf16_without_bom(raw)
        if utf16 is not None:
            return (*utf16, [])
        raise _not_text(path, f"contains binary data{_first_binary(raw)}")
    try:
        return raw.decode("utf-8"), "utf-8", []
    except UnicodeDecodeError:
        pass
    if declared and declared != "utf-8":
        try:
            return raw.decode(declared), declared, []
        except (UnicodeDecodeError, LookupError):
            pass
    bad = _mostly_utf8(raw)
    if bad is None and declared == "utf-8":  # the file says so: believe it over a guess
        bad = _bad_utf8(raw)
    if bad is not None:
        return raw.decode("utf-8", errors="replace"), "utf-8", bad
    from charset_normalizer import from_bytes

    best = from_bytes(raw).best()
    if best is None:
        raise _not_text(path, "is not text in any encoding tomes recognises")
    return str(best), best.encoding, []


def _utf16_without_bom(raw: bytes) -> tuple[str, str] | None:
    sample = raw[:4096]
    even, odd = sample[0::2].count(0), sample[1::2].count(0)
    # ASCII-heavy UTF-16: nearly every other byte is zero.
    for zeros, encoding in ((odd, "utf-16-le"), (even, "utf-16-be")):
        if zeros > len(sample) * 0.4 and raw:
            try:
                return raw.decode(encoding), encoding
            except UnicodeDecodeError:
                return None
    return None


def _not_text(path: Path, cause: str) -> IngestError:
    return IngestError(
        str(path), cause,
        "remove it from the folder, or give it the extension of its real format "
        "if tomes reads that format",
    )


def encoding_meta(encoding: str, replaced: list[int]) -> dict:
    meta: dict = {"encoding": encoding}
    if replaced:
        meta["replaced_bytes"] = {"count": len(replaced), "offsets": replaced[:20]}
    return meta


def read_text(path: Path, raw: bytes) -> ReadResult:
    text, encoding, replaced = decode_report(raw, path)
    fmt = {".csv": "csv", ".tsv": "tsv", ".rst": "rst", ".log": "txt"}.get(path.suffix.lower(), "txt")
    meta = encoding_meta(encoding, replaced)
    title = _rst_title(text) if fmt == "rst" else None
    return ReadResult(text=text, format=fmt, title=title or path.stem, meta=meta)


_UNDERLINE = re.compile(r"^([=\-~^*+#\"'`:.])\1{2,}[ \t]*$")


def _rst_title(text: str) -> str | None:
    lines = text.split("\n")
    for i, line in enumerate(lines[:-1][:200]):
        below = lines[i + 1]
        if line.strip() and not _UNDERLINE.match(line) and _UNDERLINE.match(below) \
                and len(below.strip()) >= len(line.strip()):
            return line.strip()
    return None
