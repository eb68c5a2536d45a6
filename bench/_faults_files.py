"""Inputs for bench/faults.py: small books, damaged copies of files, awkward documents.
All seeded, so every run of the bench attacks the same bytes."""

from __future__ import annotations

import io
import random
from pathlib import Path

SENTENCE = "The river keeps its own counsel through the valley. "
WORDS = {"bakery": "flour oven bread crust yeast dough baker",
         "orbit": "planet moon gravity ellipse comet"}


def river_book(path: Path, sections: int = 24) -> Path:
    """Sections of ~60 tokens each: with TOMES_CHUNK_TOKENS=60, one chunk per section."""
    paras = [f"Section {i}. " + SENTENCE * 4 for i in range(sections)]
    path.write_text("\n\n".join(paras) + "\n", encoding="utf-8")
    return path


def notes_book(path: Path, topics: dict[str, str] = WORDS, seed: int = 7) -> Path:
    rng = random.Random(seed)
    paras = []
    for topic, words in topics.items():
        for i in range(5):
            w = words.split()
            paras.append(f"{topic.title()} note {i}: " + " ".join(rng.choice(w) for _ in range(40)) + ".")
    path.write_text("\n\n".join(paras))
    return path


def short_story(path: Path) -> Path:
    """Fits one model call: a summary of it is one request to the server."""
    path.write_text(
        "Mara kept the lighthouse on the northern cape for thirty years.\n\n"
        "Each night she climbed the stairs and lit the lamp before the fishing boats came home.\n\n"
        "When the storm broke the lens, she held a lantern in the window until dawn.\n",
        encoding="utf-8")
    return path


def damage(path: Path, how: str, seed: int = 3) -> None:
    """empty | truncated (first half kept) | bitflip (2% of bytes inverted, all through
    the file) | random (replaced by random bytes of the same size)."""
    data = path.read_bytes()
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "random":
        path.write_bytes(random.Random(seed).randbytes(max(len(data), 8192)))
    elif how == "bitflip":
        rng = random.Random(seed)
        buf = bytearray(data)
        for i in rng.sample(range(len(buf)), max(8, len(buf) // 50)):
            buf[i] ^= 0xFF
        path.write_bytes(bytes(buf))
    else:
        raise ValueError(how)


def break_table(db: Path, table: str) -> int:
    """Overwrite the b-tree header of ``table``'s root page: the file still opens as a
    database (its header is intact) and the damage shows only when that table is read,
    as SQLite's "database disk image is malformed". Returns the page number."""
    import sqlite3

    con = sqlite3.connect(db)
    try:
        (page_size,) = con.execute("PRAGMA page_size").fetchone()
        (root,) = con.execute("select rootpage from sqlite_master where name = ?", (table,)).fetchone()
    finally:
        con.close()
    buf = bytearray(db.read_bytes())
    start = (root - 1) * page_size + (100 if root == 1 else 0)
    buf[start : start + 12] = b"\xff" * 12  # no such page type, nonsense cell counts
    db.write_bytes(bytes(buf))
    return root


BOOK = ("“It was the best of times,” she said — naïvely, as ever. " * 40).encode("utf-8")


def utf8_with_bad_bytes(path: Path) -> tuple[Path, list[int]]:
    raw = bytearray(BOOK)
    bad_at = [raw.index(b" ", at) for at in (100, 1500, 2500)]
    for offset in bad_at:
        raw[offset] = 0xFF  # never valid in UTF-8
    path.write_bytes(bytes(raw))
    return path, bad_at


def scanned_pdf(path: Path, pages: list[str | None]) -> Path:
    """A PDF whose page i shows the text pages[i], or, where it is None, only an image
    (a scanned page: pixels, no text layer)."""
    from pypdf import PdfWriter
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject, NumberObject

    writer = PdfWriter()
    font = writer._add_object(DictionaryObject({
        NameObject("/Type"): NameObject("/Font"),
        NameObject("/Subtype"): NameObject("/Type1"),
        NameObject("/BaseFont"): NameObject("/Helvetica"),
    }))
    rng = random.Random(11)
    for text in pages:
        page = writer.add_blank_page(612, 792)
        content = DecodedStreamObject()
        if text is None:
            side = 64
            image = DecodedStreamObject()
            image.set_data(bytes(rng.randrange(180, 256) for _ in range(side * side)))
            image.update({
                NameObject("/Type"): NameObject("/XObject"),
                NameObject("/Subtype"): NameObject("/Image"),
                NameObject("/Width"): NumberObject(side),
                NameObject("/Height"): NumberObject(side),
                NameObject("/ColorSpace"): NameObject("/DeviceGray"),
                NameObject("/BitsPerComponent"): NumberObject(8),
            })
            content.set_data(b"q 612 0 0 792 0 0 cm /Im1 Do Q")
            resources = {NameObject("/XObject"): DictionaryObject(
                {NameObject("/Im1"): writer._add_object(image)})}
        else:
            escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
            content.set_data(f"BT /F1 11 Tf 72 740 Td ({escaped}) Tj ET".encode("latin-1"))
            resources = {NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})}
        page[NameObject("/Contents")] = writer._add_object(content)
        page[NameObject("/Resources")] = DictionaryObject(resources)
    out = io.BytesIO()
    writer.write(out)
    path.write_bytes(out.getvalue())
    return path
