"""The Streamlit pages, run headless with Streamlit's AppTest against a real store."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app.api import Tomes

PAGES = Path(__file__).resolve().parents[1] / "ui" / "app_pages"


def run_page(name: str) -> AppTest:
    at = AppTest.from_file(str(PAGES / name), default_timeout=60)
    return at.run()


def test_library_page_without_documents_says_how_to_add_some():
    at = run_page("library.py")
    assert not at.exception
    assert any("No documents yet" in i.value for i in at.info)


def test_library_page_lists_documents_and_their_chunks(tmp_path):
    book = tmp_path / "tale.md"
    book.write_text("# One\n\n" + "The lamp was lit at dusk. " * 80 + "\n\n# Two\n\nMorning came.\n")
    Tomes().ingest([book], "shelf", embed=False)
    title = Tomes().documents()[0]["title"]
    at = run_page("library.py")
    assert not at.exception
    frames = [df.value for df in at.dataframe]
    assert any(title in set(f.get("title", [])) for f in frames)
    chunk_frame = next(f for f in frames if "heading" in f.columns)
    assert set(chunk_frame["heading"]) >= {"One"}


def test_search_page_finds_a_chunk(tmp_path):
    (tmp_path / "a.txt").write_text("Walruses haul out on the ice.\n\nBicycles have two wheels.\n")
    Tomes().ingest([tmp_path / "a.txt"], "zoo")
    at = run_page("search.py")
    at.text_input[0].input("walrus ice").run()
    assert not at.exception
    top = at.dataframe[0].value.iloc[0]
    assert "Walruses" in top["text"]


def test_runs_page_draws_the_call_tree(tmp_path):
    book = tmp_path / "b.txt"
    book.write_text("\n\n".join(f"Paragraph {i} tells of a ship." for i in range(30)))
    Tomes().ingest([book], "ships", embed=False)
    result = Tomes().summarize("b", map_tokens=0)  # one map per chunk: a real tree
    at = run_page("runs.py")
    assert not at.exception
    chart = at.get("graphviz_chart")[0]
    dot = chart.proto.spec
    assert dot.count("->") == result.calls + result.cache_hits
    assert "map" in dot


@pytest.mark.parametrize("page", ["ask.py", "runs.py", "search.py"])
def test_pages_render_on_an_empty_store(page):
    at = run_page(page)
    assert not at.exception
    assert at.info, "an empty store should tell the user what to do first"
