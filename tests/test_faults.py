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



def _break_table(db, table: str) -> None:
    """Overwrite the b-tree header of ``table``'s root page: the file still opens (its
    header is whole) and the damage shows only on a query that reads that table."""
    import sqlite3

    from app.store.db import dispose_all

    dispose_all()
    con = sqlite3.connect(db)
    try:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (page_size,) = con.execute("PRAGMA page_size").fetchone()
        (root,) = con.execute("select rootpage from sqlite_master where name = ?", (table,)).fetchone()
    finally:
        con.close()
    buf = bytearray(db.read_bytes())
    start = (root - 1) * page_size
    buf[start : start + 12] = b"\xff" * 12
    db.write_bytes(bytes(buf))


@pytest.mark.parametrize("command", [["docs"], ["search", "f", "flour oven bread"], ["ask", "f", "flour?"],
                                     ["summarize", "1"]])
def test_a_damaged_table_page_is_one_message_naming_the_file_not_a_traceback(tmp_path, command) -> None:
    """The file opens (the header is whole) and the damage shows only on the query that
    reads the chunks table: that used to be a 60-line sqlalchemy traceback."""
    from io import StringIO

    from app.cli import _output, app as cli, main

    Tomes().ingest([_book(tmp_path)], "f")
    db = Tomes().settings.db_path
    _break_table(db, "chunks")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.argv", ["tomes", *command])
        # main() is what turns errors into the message; run it as `tomes` would.
        mp.setattr("app.cli.app", lambda: cli(standalone_mode=False, prog_name="tomes"))
        err = StringIO()
        # _file, not file: the property reads back sys.stderr of this test, which a restore
        # would pin for every later test.
        mp.setattr(_output.console_err, "_file", err)
        mp.setattr(_output.console_err, "width", 10_000)
        with pytest.raises(SystemExit) as stop:
            main()
    out = " ".join(err.getvalue().split())
    assert stop.value.code == 1
    assert f"the tomes database {db} is damaged" in out and "malformed" in out, out
    assert "backup" in out and ".recover" in out and "move it aside" in out, out
    assert "Traceback" not in out

def test_a_damaged_table_page_is_a_tomes_error_from_the_api_too(tmp_path) -> None:
    """The UI calls the API, not main(): the store's sessions say it themselves."""
    from app.errors import TomesError

    Tomes().ingest([_book(tmp_path)], "f")
    db = Tomes().settings.db_path
    _break_table(db, "chunks")
    for call in (lambda: Tomes().documents(), lambda: Tomes().search("f", "flour", k=3, mode="keyword")):
        with pytest.raises(TomesError) as info:
            call()
        assert str(db) in info.value.cause and "malformed" in info.value.cause


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


# --- concurrent ingests: the database's constraints decide the races ------------------


def test_a_first_ingest_that_loses_the_race_for_a_new_corpus_uses_the_winners_row(
        tmp_path, monkeypatch) -> None:
    """Three first ingests into a new corpus: each looked the corpus up, found none, and
    all but one then failed on its unique name ("please report this")."""
    from app.ingest import service
    from app.store import Corpus, Document, session_scope

    first = tmp_path / "a.txt"
    first.write_text("Bakery notes: flour, oven, bread and the crust of morning loaves.")
    second = tmp_path / "b.txt"
    second.write_text("Orbit notes: planet, moon, gravity and a comet's long ellipse.")
    assert Tomes().ingest([first], "new", embed=False).added
    looked_up = service._corpus_row
    calls = []

    def missed_once(session, name):
        # The lookup ran before the winner committed: it saw no corpus yet.
        calls.append(name)
        return None if len(calls) == 1 else looked_up(session, name)

    monkeypatch.setattr(service, "_corpus_row", missed_once)
    report = Tomes().ingest([second], "new", embed=False)
    assert [o.status for o in report.outcomes] == ["added"], report.outcomes
    with session_scope() as s:
        assert s.query(Corpus).count() == 1
        assert {d.corpus_id for d in s.query(Document)} == {s.query(Corpus).one().id}


def test_a_failed_file_leaves_no_corpus_behind_when_it_created_it(tmp_path, monkeypatch) -> None:
    from app.ingest import service
    from app.store import Corpus, session_scope

    path = tmp_path / "a.txt"
    path.write_text("Harbour notes: boat, tide, rope and gulls over the pier.")

    def broken(*args, **kwargs):
        raise RuntimeError("disk went away")

    monkeypatch.setattr(service, "Chunk", broken)
    report = Tomes().ingest([path], "fresh", embed=False)
    assert report.failed
    with session_scope() as s:
        assert s.query(Corpus).count() == 0


def test_the_same_file_ingested_while_another_ingest_stores_it_is_unchanged(tmp_path, monkeypatch) -> None:
    """The same file ingested three times at once: one of the losers deleted the winner's
    document (same source) and stored its own copy, reporting "updated"."""
    from app.ingest import service
    from app.store import Chunk, Document, session_scope

    path = tmp_path / "same.txt"
    path.write_text("Bakery notes: flour, oven, bread and the crust of morning loaves.\n\n" * 5)
    winner = Tomes().ingest([path], "c", embed=False)
    assert [o.status for o in winner.outcomes] == ["added"]
    looked_up = service._stored
    calls = []

    def missed_once(corpus, digest):
        # Its content check ran before the winner committed.
        calls.append(digest)
        return None if len(calls) == 1 else looked_up(corpus, digest)

    monkeypatch.setattr(service, "_stored", missed_once)
    loser = Tomes().ingest([path], "c", embed=False)
    assert [o.status for o in loser.outcomes] == ["skipped"], loser.outcomes
    assert loser.outcomes[0].document_id == winner.outcomes[0].document_id
    with session_scope() as s:
        assert [d.id for d in s.query(Document)] == [winner.outcomes[0].document_id]
        assert {c.document_id for c in s.query(Chunk)} == {winner.outcomes[0].document_id}
    # An edited file is still an update, replacing the old version.
    path.write_text("Orbit notes: planet, moon, gravity and a comet's long ellipse.\n\n" * 5)
    monkeypatch.setattr(service, "_stored", looked_up)
    edited = Tomes().ingest([path], "c", embed=False)
    assert [o.status for o in edited.outcomes] == ["updated"]
    with session_scope() as s:
        assert s.query(Document).count() == 1


def test_concurrent_first_ingests_of_one_file_into_a_new_corpus_store_it_once(tmp_path) -> None:
    """Real threads on one real SQLite file, started together: one added, the rest unchanged."""
    import threading

    from app.ingest import service
    from app.store import Corpus, Document, session_scope
    from serving.tokenizers import active_tokenizer

    path = tmp_path / "same.txt"
    path.write_text("Harbour notes: boat, tide, rope and gulls over the pier.\n\n" * 20)
    others = []
    for i in range(2):
        p = tmp_path / f"other{i}.txt"
        p.write_text(f"Other notes {i}: " + "planet moon gravity comet " * 30)
        others.append(p)
    tokenizer = active_tokenizer()
    gate = threading.Barrier(5)
    results: list = []

    def one(p):
        gate.wait()
        results.append(service.ingest([p], "raced", tokenizer=tokenizer).outcomes[0])

    threads = [threading.Thread(target=one, args=(p,)) for p in [path, path, path, *others]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = sorted(o.status for o in results if o.path == str(path))
    assert statuses == ["added", "skipped", "skipped"], results
    assert all(o.status == "added" for o in results if o.path != str(path)), results
    with session_scope() as s:
        assert s.query(Corpus).count() == 1 and s.query(Document).count() == 3


# --- a kill while embedding -------------------------------------------------------------

EMBED_CHILD = """
import json, os, sys, time
from retrieval import embedders

class Slow(embedders.HashEmbedder):
    # The hash embedder's vectors and model id, a batch at a time, slowly.
    def encode(self, texts, *, batch_size=32):
        vectors = super().encode(texts, batch_size=batch_size)
        time.sleep(0.15)
        with open(os.environ["EMBED_LOG"], "a") as f:
            f.write(json.dumps(len(texts)) + "\\n")
        return vectors

embedders.register_embedder("hash", Slow)
import retrieval
retrieval.sync_corpus(sys.argv[1])
"""


def test_a_sync_killed_mid_embedding_keeps_its_batches_and_the_next_embeds_only_the_rest(
        tmp_path, monkeypatch) -> None:
    """The dense index was saved every 60 s: a kill threw away everything embedded since."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from app import settings
    from retrieval import embedders

    rng = random.Random(11)
    words = " ".join(WORDS.values()).split()
    path = tmp_path / "long.txt"
    path.write_text("\n\n".join(f"Note {i}: " + " ".join(rng.choice(words) for _ in range(30)) + "."
                                for i in range(160)))
    with settings.override(chunk_tokens=60):
        Tomes().ingest([path], "big", embed=False)
    chunks = retrieval.status("big")["chunks"]
    assert chunks >= 100
    log = tmp_path / "embed.log"
    script = tmp_path / "child.py"
    script.write_text(EMBED_CHILD)
    root = Path(__file__).resolve().parents[1]
    child = subprocess.Popen([sys.executable, str(script), "big"], cwd=root, stderr=subprocess.PIPE,
                             env={**os.environ, "PYTHONPATH": str(root), "EMBED_LOG": str(log),
                                  "TOMES_EMBED_BATCH_SIZE": "8"}, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and child.poll() is None:
        if log.exists() and len(log.read_text().split()) >= 6:
            break
        time.sleep(0.05)
    child.kill()
    _, err = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL, err
    before = [int(n) for n in log.read_text().split()]
    assert sum(before) < chunks  # killed mid-way

    asked: list[int] = []
    encode = embedders.HashEmbedder.encode

    def counted(self, texts, *, batch_size=32):
        asked.append(len(texts))
        return encode(self, texts, batch_size=batch_size)

    monkeypatch.setattr(embedders.HashEmbedder, "encode", counted)
    with settings.override(embed_batch_size=8):
        retrieval.sync_corpus("big")
    # At most the batch under way at the kill is embedded again (one text per chunk here).
    assert sum(asked) <= chunks - sum(before) + before[-1], (sum(asked), chunks, before)
    state = retrieval.status("big")
    assert state["missing"] == 0 and state["stale"] == 0 and state["vectors"] == chunks
    assert not list(Path(state["directory"]).glob("*.journal"))  # folded into the index file
    hits = Tomes().search("big", "flour oven bread", k=3, mode="dense")
    assert hits


def test_a_torn_journal_record_is_dropped_and_the_whole_ones_kept(tmp_path) -> None:
    import numpy as np

    from retrieval._journal import Journal

    journal = Journal(tmp_path / "dense.npz")
    for start in (0, 10):
        journal.append(np.ones((10, 4), np.float32), np.arange(start, start + 10),
                       np.arange(10), model="m", dim=4)
    journal.append(np.ones((3, 2), np.float32), np.arange(3), np.arange(3), model="other", dim=2)
    whole = journal.path.stat().st_size
    journal.append(np.ones((10, 4), np.float32), np.arange(20, 30), np.arange(10), model="m", dim=4)
    with open(journal.path, "r+b") as f:  # the kill landed mid-write
        f.truncate(whole + 100)
    batches = journal.read("m", 4)
    assert [b.ids.tolist()[0] for b in batches] == [0, 10]  # the other model's is of no use
    assert journal.path.stat().st_size == whole  # cut back: appends follow the whole records
    journal.append(np.ones((1, 4), np.float32), np.array([40]), np.array([1]), model="m", dim=4)
    assert [b.ids.tolist()[0] for b in journal.read("m", 4)] == [0, 10, 40]
