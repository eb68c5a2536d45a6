"""A small book for the direct, rag, auto and batch tests: one paragraph per island, each
with its own keeper and door colour, so a question has one chunk that answers it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app import settings
from app.api import Tomes
from app.store import Chunk, session_scope

ISLANDS = ["Alder", "Birch", "Cedar", "Damson", "Elder", "Fennel", "Gorse", "Hazel", "Juniper",
           "Kestrel", "Larch", "Myrtle", "Nettle", "Osier", "Poplar", "Quince", "Rowan",
           "Sorrel", "Tansy", "Umber", "Vetch", "Willow", "Yarrow", "Zelkova"]
KEEPERS = ["Morwen Tally", "Jory Penhale", "Ysolde Carne", "Tamsin Vose", "Bran Treloar",
           "Kerra Nance", "Loveday Pask", "Demelza Rowe", "Gwyn Hocking", "Ennor Polglase",
           "Piran Jago", "Senara Keast", "Talan Bray", "Wenna Coad", "Cador Eddy",
           "Elowen Hosken", "Jenifer Retallack", "Kitto Spargo", "Morvah Teague", "Nessa Uren",
           "Oby Varcoe", "Perran Wearne", "Rosen Yelland", "Steren Zennor"]
COLOURS = ["blue", "red", "green", "yellow", "white", "black", "orange", "purple"] * 3


# What a long book says of every island besides its keeper: words no question asks about.
FILLER = (" Ships pass it at night, and their sailors count its flashes from the deck. The "
          "path up from the harbour is steep, and the wind there never rests.")


def paragraph(i: int, long: bool = False) -> str:
    return (f"The lighthouse on {ISLANDS[i]} Island is kept by {KEEPERS[i]}, who paints "
            f"its door {COLOURS[i]} every spring." + (FILLER if long else ""))


def write_book(tmp_path: Path, islands: int = 8, name: str = "islands.txt",
               long: bool = False) -> Path:
    path = tmp_path / name
    path.write_text("\n\n".join(paragraph(i, long) for i in range(islands)) + "\n",
                    encoding="utf-8")
    return path


def ingest_book(tmp_path: Path, islands: int = 8, corpus: str = "isles",
                name: str = "islands.txt", long: bool = False) -> int:
    """The book, one chunk per paragraph; returns its document id. ``long`` paragraphs
    (about 60 tokens each) make a book of 24 that no 1,200-token window holds."""
    path = write_book(tmp_path, islands, name, long)
    with settings.override(chunk_tokens=80 if long else 30):
        report = Tomes().ingest([path], corpus, embed=False)
    assert not report.failed, report.failed
    doc = (report.added or report.skipped)[0].document_id
    assert len(chunks(doc)) == islands  # one paragraph per chunk
    return doc


def chunks(doc_id: int) -> list[Chunk]:
    with session_scope() as s:
        return list(s.query(Chunk).filter_by(document_id=doc_id).order_by(Chunk.ordinal))


def chunk_with(doc_id: int, needle: str) -> int:
    return next(c.id for c in chunks(doc_id) if needle in c.text)


def keeper_reply(request: Any) -> str:
    """A model that answers a keeper question the way each strategy asks: direct with a
    quote of the sentence, rag with the number of the passage that names the island."""
    prompt = request.messages[-1]["content"]
    question = prompt.rsplit("Question:", 1)[-1]
    island = next((n for n in ISLANDS if f"{n} Island" in question), None)
    if island is None:
        return json.dumps({"answer": "NO INFORMATION", "quote": "", "passages": []})
    i = ISLANDS.index(island)
    if prompt.startswith("Passages:"):
        passages = _passages(prompt.split("\n\nQuestion:")[0])
        hit = [n for n, text in enumerate(passages, start=1) if f"{island} Island" in text]
        return json.dumps({"answer": KEEPERS[i], "passages": hit})
    return json.dumps({"answer": KEEPERS[i], "quote": paragraph(i)})


def _passages(body: str) -> list[str]:
    parts: list[str] = []
    for line in body.splitlines():
        if line.startswith("[") and "]" in line:
            parts.append("")
        if parts:
            parts[-1] += line + "\n"
    return parts
