"""Fault injection: damaged files and misbehaving parts must give a clear message, lose
nothing and repair what is derived. Each test reproduces a fault first seen by attack."""

from __future__ import annotations

import random

import pytest

import retrieval
from app.api import Tomes

WORDS = {"bakery": "flour oven bread crust yeast dough baker", "orbit": "planet moon gravity ellipse comet"}


def _book(tmp_path):
    rng = random.Random(7)
    paras = []
    for topic, words in WORDS.items():
        for i in range(5):
            w = words.split()
            paras.append(f"{topic.title()} note {i}: " + " ".join(rng.choice(w) for _ in range(40)) + ".")
    path = tmp_path / "notes.txt"
    path.write_text("\n\n".join(paras))
    return path


def _damage(path, how: str) -> None:
    data = path.read_bytes()
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:  # bit flips all through the file, seeded
        rng = random.Random(3)
        buf = bytearray(data)
        for i in rng.sample(range(len(buf)), max(8, len(buf) // 50)):
            buf[i] ^= 0xFF
        path.write_bytes(bytes(buf))


@pytest.mark.parametrize("name", ["keyword.npz", "dense.npz"])
@pytest.mark.parametrize("how", ["empty", "truncated", "bitflip"])
def test_a_damaged_index_file_is_rebuilt_from_the_store(tmp_path, name, how, caplog):
    Tomes().ingest([_book(tmp_path)], "f")
    (path,) = (Tomes().settings.index_dir).glob(f"*/{name}")
    _damage(path, how)
    mode = "keyword" if name == "keyword.npz" else "dense"
    hits = Tomes().search("f", "flour oven bread", k=3, mode=mode)
    assert hits and "Bakery" in hits[0].text
    assert retrieval.status("f")["missing"] == 0 and retrieval.status("f")["keyword_in_step"]
    # Ingest and search go on working after the repair, and the file is whole again.
    more = tmp_path / "more.txt"
    more.write_text("Comets and moons of the outer planets circle in gravity's ellipse. " * 5)
    Tomes().ingest([more], "f")
    assert Tomes().search("f", "comets moons", k=1, mode=mode)
    assert retrieval.files.read_npz(path) is not None


def test_a_damaged_database_is_named_with_how_to_restore_it(tmp_path):
    from app.store.db import dispose_all

    Tomes().ingest([_book(tmp_path)], "f")
    db = Tomes().settings.db_path
    dispose_all()
    for suffix in ("-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)
    db.write_bytes(random.Random(5).randbytes(8192))  # not a database any more
    from app.errors import TomesError

    with pytest.raises(TomesError) as info:
        Tomes().documents()
    assert str(db) in info.value.cause and "damaged" in info.value.cause
    assert "backup" in info.value.fix and "rebuilt" in info.value.fix



def test_an_empty_reply_is_a_failed_call_retried_under_it_then_reported() -> None:
    from app.store import Call, session_scope
    from serving.backends.scripted import ScriptedBackend
    from serving.lm import LM, EmptyReplyError

    backend = ScriptedBackend(["", "  \n", "the answer"])
    assert LM(backend).chat("q?").text == "the answer"
    with session_scope() as s:
        calls = s.query(Call).order_by(Call.id).all()
        assert [c.error is not None for c in calls] == [True, True, False]
        # Each retry nests under the call whose reply was empty.
        assert [c.parent_id for c in calls] == [None, calls[0].id, calls[1].id]

    silent = ScriptedBackend([""])
    lm = LM(silent)
    with pytest.raises(EmptyReplyError) as err:
        lm.chat("other?")
    assert "empty reply 3 times" in err.value.cause and err.value.fix
    with pytest.raises(EmptyReplyError):
        lm.chat("other?")  # never served from the cache: asked again
    assert len(silent.requests) == 6


# --- text that is not quite what it claims ------------------------------------------

BOOK = ("“It was the best of times,” she said — naïvely, as ever. " * 40).encode("utf-8")


def test_a_utf8_book_with_a_few_bad_bytes_stays_utf8_and_says_where(tmp_path) -> None:
    from typer.testing import CliRunner

    from app.cli import app as cli

    raw = bytearray(BOOK)
    bad_at = [raw.index(b" ", at) for at in (100, 1500, 2500)]  # ASCII bytes: one bad byte each
    for offset in bad_at:
        raw[offset] = 0xFF  # never valid in UTF-8
    path = tmp_path / "book.txt"
    path.write_bytes(bytes(raw))
    result = CliRunner().invoke(cli, ["ingest", str(path), "--no-embed"])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    where = ", ".join(f"{o:,}" for o in bad_at)
    assert "3 byte(s) are not valid utf-8" in out and f"offset {where})" in out, out
    doc = Tomes().document(1)
    assert doc["meta"]["encoding"] == "utf-8" and doc["meta"]["replaced_bytes"]["count"] == 3
    text = Tomes().text(1)
    assert text.count("\ufffd") == 3
    assert text.count("“It was the best of times,”") >= 37  # not garbled as a legacy code page
    assert doc["warnings"] and "replaced" in doc["warnings"][0]


def test_a_declared_charset_is_honoured_over_a_guess(tmp_path) -> None:
    from app.ingest.readers.text import read_text

    body = "Title: Cyrano\nCharacter set encoding: ISO-8859-7\n\n" + "Καλημέρα κόσμε, είπε. " * 30
    raw = body.encode("iso-8859-7")
    result = read_text(tmp_path / "greek.txt", raw)
    assert result.meta["encoding"] == "iso8859-7"
    assert result.text.strip() == body.strip()


def test_binary_data_in_a_text_file_is_refused_naming_the_byte_offset(tmp_path) -> None:
    from app.errors import IngestError
    from app.ingest.readers.text import read_text

    raw = b"plain words here. " * 100 + bytes(range(0, 9)) * 40
    with pytest.raises(IngestError) as err:
        read_text(tmp_path / "blob.txt", raw)
    assert "binary data" in str(err.value) and "offset 1,800" in str(err.value)


def test_a_partly_scanned_pdf_is_stored_with_a_warning_and_the_count_in_show(tmp_path) -> None:
    from typer.testing import CliRunner

    from app.cli import app as cli
    from tests.docfactory import make_pdf

    pages = [["Chapter one begins here with words."], [], [], ["Chapter four goes on."], []]
    path = tmp_path / "mixed.pdf"
    path.write_bytes(make_pdf(pages))
    result = CliRunner().invoke(cli, ["ingest", str(path), "--no-embed"])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "1 added" in out and "3 of 5 pages have no text" in out and "page 2, 3, 5" in out, out
    assert "OCR" in out
    shown = CliRunner().invoke(cli, ["show", "1"])
    assert shown.exit_code == 0, shown.output
    lines = " ".join(shown.output.split())
    assert "pages_without_text 3" in lines and "3 of 5 pages have no text" in lines, lines
