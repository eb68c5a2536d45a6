"""The ingest service: files and directories into Document and Chunk rows, one
transaction per file, failures reported per file, re-ingest a no-op."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app.api import Tomes
from app.ingest import service
from app.settings import override
from app.store import Chunk, Corpus, Document, session_scope
from docfactory import make_pdf


def counts() -> tuple[int, int, int]:
    with session_scope() as s:
        return (s.scalar(select(func.count(Corpus.id))), s.scalar(select(func.count(Document.id))),
                s.scalar(select(func.count(Chunk.id))))


def ingest(paths, corpus="default", **kw):
    return Tomes().ingest([Path(p) for p in paths], corpus, embed=False, **kw)


def test_sample_documents_go_in_with_exact_chunks(shared_data):
    paths = [shared_data / "books" / "a_modest_proposal.txt", shared_data / "books" / "the_great_gatsby.txt",
             shared_data / "docs" / "shared-mime-info-spec.pdf"]
    events = []
    report = ingest(paths, "samples", on_event=events.append)
    assert [o.status for o in report.outcomes] == ["added"] * 3
    assert events[-1].stage == "read" and events[-1].done == events[-1].total == 3
    with session_scope() as s:
        docs = {d.title: d for d in s.scalars(select(Document))}
        assert set(docs) == {"A Modest Proposal", "The Great Gatsby", "Shared MIME-info Database"}
        for doc in docs.values():
            assert doc.tokenizer  # the tokenizer the counts are in
            assert doc.chunks and [c.ordinal for c in doc.chunks] == list(range(len(doc.chunks)))
            for chunk in doc.chunks:
                assert doc.text[chunk.start:chunk.end] == chunk.text
                assert chunk.n_tokens <= 512
        gatsby = docs["The Great Gatsby"]
        assert gatsby.meta["author"] == "F. Scott Fitzgerald"
        assert any("START OF THE PROJECT GUTENBERG" in b for b in gatsby.meta["boilerplate"])
        assert "gutenberg" not in gatsby.text.lower()
        assert {c.heading for c in gatsby.chunks} >= {"I", "V", "IX"}
        pdf = docs["Shared MIME-info Database"]
        assert pdf.format == "pdf" and len(pdf.page_starts) == 17
        assert [c.page for c in pdf.chunks] == sorted(c.page for c in pdf.chunks)
        assert pdf.chunks[0].page == 1 and pdf.chunks[-1].end > pdf.page_starts[-1]
        for c in pdf.chunks:  # a chunk's page is the page its first character is on
            assert pdf.page_starts[c.page - 1] <= c.start
            assert c.page == 17 or c.start < pdf.page_starts[c.page]


def test_reingest_is_a_no_op_even_under_another_name(tmp_path):
    first = tmp_path / "a.md"
    first.write_text("# Notes\n\nSome text about rivers.\n")
    assert ingest([first]).added
    before = counts()
    copy = tmp_path / "copy-of-a.md"
    shutil.copy(first, copy)
    report = ingest([first, copy])
    assert [o.status for o in report.outcomes] == ["skipped", "skipped"]
    assert report.outcomes[0].document_id == report.outcomes[1].document_id
    assert counts() == before
    # The same content in another corpus is another document.
    assert ingest([first], "other").added


def test_directory_walk_reports_failures_and_keeps_going(tmp_path):
    root = tmp_path / "library"
    (root / "nested" / "deeper").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "one.txt").write_text("The first document.")
    (root / "nested" / "two.md").write_text("# Two\n\nThe second document.")
    (root / "nested" / "deeper" / "three.html").write_text("<title>Three</title><p>The third.</p>")
    (root / "nested" / "four.pdf").write_bytes(make_pdf([["The fourth document."]]))
    (root / ".git" / "hidden.txt").write_text("never read")
    (root / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # unsupported: not walked
    (root / "empty.txt").write_bytes(b"")
    (root / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    (root / "locked.pdf").write_bytes(make_pdf([["secret"]], password="pw"))
    (root / "scan.pdf").write_bytes(make_pdf([[]]))

    report = ingest([root, tmp_path / "missing.txt"])
    added = {Path(o.path).name for o in report.added}
    failed = {Path(o.path).name: o.error for o in report.failed}
    assert added == {"one.txt", "two.md", "three.html", "four.pdf"}
    assert set(failed) == {"empty.txt", "image.txt", "locked.pdf", "scan.pdf", "missing.txt"}
    assert "is empty" in failed["empty.txt"]
    assert "PNG image" in failed["image.txt"]
    assert "password" in failed["locked.pdf"]
    assert "no text layer" in failed["scan.pdf"] and "OCR" in failed["scan.pdf"]
    for name, error in failed.items():
        assert name in error  # each message names its file
    assert counts()[1:] == (4, 4)


def test_failure_mid_write_leaves_nothing_behind(tmp_path, monkeypatch):
    good = tmp_path / "good.txt"
    good.write_text("A document that goes in.")
    bad = tmp_path / "bad.txt"
    bad.write_text("\n\n".join(f"Paragraph {i} of a document whose write fails." for i in range(50)))
    real_chunk_text = service.chunk_text

    class Exploding(list):
        """Spans that blow up halfway through being turned into rows."""

        def __iter__(self):
            for i, span in enumerate(list.__iter__(self)):
                if i == len(self) // 2:
                    raise RuntimeError("disk on fire")
                yield span

    def chunk_text(text, *args, **kwargs):
        spans = real_chunk_text(text, *args, **kwargs)
        return Exploding(spans) if text.startswith("Paragraph") else spans

    monkeypatch.setattr(service, "chunk_text", chunk_text)
    with override(chunk_tokens=16):
        report = ingest([bad, good], "fresh")
    assert [o.status for o in report.outcomes] == ["failed", "added"]
    assert "disk on fire" in report.outcomes[0].error and "bad.txt" in report.outcomes[0].error
    with session_scope() as s:
        assert [d.title for d in s.scalars(select(Document))] == ["good"]
        assert s.scalar(select(func.count(Chunk.id))) == 1


def test_failed_file_alone_leaves_no_corpus(tmp_path):
    bad = tmp_path / "empty.md"
    bad.write_bytes(b"")
    report = ingest([bad], "never-made")
    assert report.failed and not report.added
    assert counts() == (0, 0, 0)


def test_size_limit_from_settings(tmp_path, monkeypatch):
    big = tmp_path / "big.txt"
    big.write_text("word " * 60_000)  # 300 KB
    monkeypatch.setenv("TOMES_MAX_FILE_MB", "0.1")
    from app import settings

    settings.reset()
    report = ingest([big])
    assert report.failed and "0.1 MB limit" in report.failed[0].error
    assert "TOMES_MAX_FILE_MB" in report.failed[0].error
    with override(max_file_mb=1):
        assert ingest([big]).added


@pytest.mark.parametrize("tokens,overlap", [(64, 0), (64, 16)])
def test_chunk_settings_are_used(tmp_path, tokens, overlap):
    doc = tmp_path / "doc.txt"
    doc.write_text(" ".join(f"Sentence {i} is here." for i in range(300)))
    with override(chunk_tokens=tokens, chunk_overlap=overlap):
        ingest([doc])
    with session_scope() as s:
        chunks = list(s.scalars(select(Chunk).order_by(Chunk.ordinal)))
    assert max(c.n_tokens for c in chunks) <= tokens
    overlapping = sum(b.start < a.end for a, b in zip(chunks, chunks[1:]))
    assert (overlapping > 0) == (overlap > 0)


def test_reingesting_an_edited_file_replaces_the_old_document(tmp_path):
    import retrieval
    from app.api import Tomes

    path = tmp_path / "letter.txt"
    path.write_text("Dear Anna, the orchard is in bloom and the bees are busy.")
    first = Tomes().ingest([path], "mail")
    assert len(first.added) == 1
    path.write_text("Dear Anna, the orchard burned down; the bees have flown to the hills.")
    second = Tomes().ingest([path], "mail")
    assert [o.status for o in second.outcomes] == ["updated"]
    docs = Tomes().documents("mail")
    assert len(docs) == 1 and docs[0]["id"] == second.updated[0].document_id
    assert "burned" in Tomes().document(docs[0]["id"])["chunks"][0]["text"]
    hits = Tomes().search("mail", "orchard bees", k=5, mode="keyword")
    assert hits and all("burned" in h.text for h in hits)  # the old text is not searchable
    assert retrieval.status("mail")["missing"] == 0
    # Same content again: nothing changes.
    assert [o.status for o in Tomes().ingest([path], "mail").outcomes] == ["skipped"]


def test_an_ingest_with_a_failed_file_exits_non_zero_after_storing_the_good_ones(tmp_path):
    from typer.testing import CliRunner

    from app.api import Tomes
    from app.cli import app

    (tmp_path / "good.txt").write_text("Good words are stored.")
    (tmp_path / "empty.txt").write_text("")
    result = CliRunner().invoke(app, ["ingest", str(tmp_path), "--no-embed"])
    assert result.exit_code == 1
    assert [d["title"] for d in Tomes().documents()] == ["good"]
