"""The Reader: opens any document at a chunk or span from a link, highlights the quotes
an answer rests on and the words searched for, escapes the document's text, and pages
through a long book a few chunks at a time."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from uitools import app, button, html, island_model, script_model, texts, voyage

from app.api import Tomes

BOOKS = Path("/work/shared/data/books")


@pytest.fixture
def book(tmp_path, monkeypatch):
    return voyage(tmp_path, monkeypatch, paragraphs=40)


def _chunks_shown(at) -> list[int]:
    return [int(i) for i in re.findall(r'<div id="chunk-(\d+)"', html(at))]


def _marked(at, kind: str) -> list[str]:
    return re.findall(rf'<mark class="tomes-{kind}"[^>]*>(.*?)</mark>', html(at), re.S)


def test_a_provenance_link_opens_the_chunk_with_the_quote_highlighted(book, monkeypatch):
    script_model(monkeypatch, island_model(33))
    result = Tomes().ask(book["id"], "Where did the ship sail past island 33?", strategy="mapreduce")
    assert result.answer == "Past island 33, at dawn."
    cited = result.provenance[0]
    assert "island 33 " in Tomes().text(book["id"], cited.start, cited.end)
    assert cited.chunk_id != Tomes().spans(book["id"])[0]["id"]
    at = app("reader", doc=str(book["id"]), chunk=str(cited.chunk_id), run=result.run_id)
    assert not at.exception, [e.message for e in at.exception]
    shown = _chunks_shown(at)
    assert shown[0] == cited.chunk_id  # the page starts at the cited chunk
    quotes = _marked(at, "quote")
    assert quotes and cited.quote.strip() in " ".join(quotes)
    assert "Where did the ship sail past island 33?" in texts(at)  # which answer is highlighted
    # The passage buttons jump between what the answer rests on.
    assert any(b.label == f"chunk {cited.chunk_id}" for b in at.button)


def test_a_link_to_a_span_opens_the_chunk_holding_that_offset(book):
    spans = Tomes().spans(book["id"])
    target = spans[17]
    at = app("reader", doc=str(book["id"]), start=str(target["start"] + 5))
    assert _chunks_shown(at)[0] == target["id"]


def test_jump_to_a_chunk_or_an_offset(book):
    spans = Tomes().spans(book["id"])
    at = app("reader", doc=str(book["id"]))
    assert _chunks_shown(at)[0] == spans[0]["id"]
    chunk_box, offset_box = at.number_input
    chunk_box.set_value(spans[12]["id"])
    next(b for b in at.button if b.label == "Go").click().run()
    assert _chunks_shown(at)[0] == spans[12]["id"]
    at.number_input[1].set_value(spans[3]["end"] - 1)
    next(b for b in at.button if b.label == "Go").click().run()
    assert _chunks_shown(at)[0] == spans[3]["id"]
    at.number_input[0].set_value(10_000)  # not a chunk of this document: said, not ignored
    next(b for b in at.button if b.label == "Go").click().run()
    assert "is not in this document" in " ".join(e.value for e in at.error)


def test_pages_move_a_few_chunks_at_a_time_and_the_url_follows(book):
    spans = Tomes().spans(book["id"])
    at = app("reader", doc=str(book["id"]))
    first = _chunks_shown(at)
    assert first == [s["id"] for s in spans[:8]]
    button(at, "Next ▶").click().run()
    assert _chunks_shown(at) == [s["id"] for s in spans[8:16]]
    assert at.query_params["chunk"] == str(spans[8]["id"])
    next(s for s in at.selectbox if s.label == "Chunks per page").set_value(2).run()
    assert len(_chunks_shown(at)) == 2
    button(at, "◀ Previous").click().run()
    assert _chunks_shown(at) == [s["id"] for s in spans[6:8]]


def test_find_highlights_the_words_and_lists_the_matching_chunks(book):
    at = app("reader", doc=str(book["id"]))
    next(t for t in at.text_input if t.label == "Find in this document").input("island 31").run()
    hit_buttons = [b for b in at.button if b.label.startswith("chunk ")]
    assert hit_buttons
    target = next(s for s in Tomes().spans(book["id"])
                  if "island 31 " in Tomes().text(book["id"], s["start"], s["end"]))
    assert hit_buttons[0].label == f"chunk {target['id']}"  # best first
    hit_buttons[0].click().run()
    assert _chunks_shown(at)[0] == target["id"]
    assert "island" in [m.lower() for m in _marked(at, "hit")]


def test_a_search_link_highlights_its_words(tmp_path):
    (tmp_path / "a.txt").write_text("Walruses haul out on the ice.\n\nBicycles have two wheels.\n")
    doc = Tomes().ingest([tmp_path / "a.txt"], "zoo", embed=False).added[0].document_id
    at = app("reader", doc=str(doc), q="walrus")
    assert _marked(at, "hit") == ["Walruses"]


def test_document_text_is_escaped_never_markup(tmp_path):
    hostile = ("Before <script>alert('x')</script> and <img src=x onerror=alert(1)> then "
               "**bold** [a link](http://evil.example) &amp; <b>tags</b> after.\n")
    (tmp_path / "evil.txt").write_text(hostile)
    doc = Tomes().ingest([tmp_path / "evil.txt"], "zoo", embed=False).added[0].document_id
    at = app("reader", doc=str(doc), q="bold")
    body = html(at)
    assert "<script>" not in body and "<img" not in body and "<b>" not in body
    assert "&lt;script&gt;" in body and "&lt;img src=x onerror=alert(1)&gt;" in body
    assert "&amp;amp;" in body  # an entity in the text is shown as typed
    assert "**bold**" in body or "<mark" in body  # markdown is not rendered either
    assert "<strong>" not in body and "<a " not in body


def test_an_unknown_document_is_said_and_another_shown(book):
    at = app("reader", doc="999")
    assert "no document 999" in " ".join(w.value for w in at.warning)
    assert _chunks_shown(at)


def test_a_whole_real_book_opens_and_pages_without_loading_it_all(tmp_path):
    src = BOOKS / "emma.txt"
    shutil.copy(src, tmp_path / "emma.txt")
    doc = Tomes().ingest([tmp_path / "emma.txt"], "novels", embed=False).added[0].document_id
    spans = Tomes().spans(doc)
    assert len(spans) > 200
    middle = spans[len(spans) // 2]
    at = app("reader", doc=str(doc), chunk=str(middle["id"]))
    shown = _chunks_shown(at)
    assert shown == [s["id"] for s in spans[len(spans) // 2:len(spans) // 2 + 8]]
    # Only the page's text goes to the browser, not the book's 880,000 characters.
    assert len(html(at)) < 40_000
