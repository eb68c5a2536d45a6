"""The real embedded model reads a real chapter by selection: nothing it returns can be
invented (issue: a novel's summary full of mills and dates that are not in the book)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.api import Tomes
from pipelines import _grounding as G


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_a_chapter_summary_names_only_what_the_chapter_names(shared_data: Path, tmp_path: Path) -> None:
    book = (shared_data / "books" / "pride_and_prejudice.txt").read_text(encoding="utf-8")
    start = book.index("Chapter III") if "Chapter III" in book else len(book) // 10
    chapter = book[start:start + 9000]
    path = tmp_path / "pp_chapter_3.txt"
    path.write_text(chapter, encoding="utf-8")
    tomes = Tomes(backend="embedded")
    doc = tomes.ingest([path], "chapters", embed=False).added[0].document_id

    result = tomes.summarize(doc, length="short", map_tokens=1024)
    assert result.details["grounding"] == "select"
    assert len(result.answer.split()) >= 8, result.answer
    # Every proper name of the summary occurs in the chapter; every sentence is the book's.
    assert G.invented_names(result.answer, chapter) == []
    flat = " ".join(chapter.split())
    for a, b in G.sentences(result.answer):
        assert " ".join(result.answer[a:b].split()) in flat
    support = result.details["support"]
    assert support["sentences"] and support["supported"] == support["sentences"]
    assert result.calls >= 2 and result.provenance
