"""The Streamlit pages, run headless with Streamlit's AppTest against a real store: every
page on an empty store, the Library, Search, Memory, and the `tomes ui` command."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest
from typer.testing import CliRunner
from uitools import PAGES, app, page_links, texts

from app.api import Tomes

ALL_PAGES = ["library", "reader", "search", "ask", "runs", "memory", "settings"]


def run_page(name: str) -> AppTest:
    return AppTest.from_file(str(PAGES / name), default_timeout=60).run()


@pytest.mark.parametrize("page", ALL_PAGES)
def test_every_page_renders_in_the_app_on_an_empty_store(page):
    at = app(page)
    assert not at.exception, [e.message for e in at.exception]
    if page != "settings":
        assert at.info, "an empty store should tell the user what to do first"


def test_library_page_without_documents_says_how_to_add_some():
    at = run_page("library.py")
    assert not at.exception
    assert any("No documents yet" in i.value for i in at.info)


def test_library_page_lists_documents_and_their_chunks(tmp_path):
    book = tmp_path / "tale.md"
    book.write_text("# One\n\n" + "The lamp was lit at dusk. " * 80 + "\n\n# Two\n\nMorning came.\n")
    Tomes().ingest([book], "shelf", embed=False)
    title = Tomes().documents()[0]["title"]
    at = app("library")
    assert not at.exception
    frames = [df.value for df in at.dataframe]
    assert any(title in set(f.get("title", [])) for f in frames)
    chunk_frame = next(f for f in frames if "heading" in f.columns)
    assert set(chunk_frame["heading"]) >= {"One"}
    # The document opens in the reader; the server's path to it is not shown.
    assert any(p.page == "reader" and "doc=1" in p.query_string for p in page_links(at))
    assert str(tmp_path) not in texts(at)


def test_search_page_finds_a_chunk_and_links_each_hit_to_the_reader(tmp_path):
    (tmp_path / "a.txt").write_text("Walruses haul out on the ice.\n\nBicycles have two wheels.\n")
    Tomes().ingest([tmp_path / "a.txt"], "zoo")
    at = app("search")
    at.text_input[0].input("walrus ice").run()
    assert not at.exception
    top = at.dataframe[0].value.iloc[0]
    assert "Walruses" in top["text"]
    links = [p for p in page_links(at) if p.page == "reader"]
    assert links and f"chunk={top['chunk']}" in links[0].query_string
    assert "q=walrus+ice" in links[0].query_string


def test_search_page_refuses_blank_space(tmp_path):
    (tmp_path / "a.txt").write_text("Walruses.\n")
    Tomes().ingest([tmp_path / "a.txt"], "zoo", embed=False)
    at = app("search")
    at.text_input[0].input("   ").run()
    assert not at.exception and not at.dataframe
    assert "blank space" in texts(at)


def test_memory_page_says_the_workspace_is_not_built_when_the_api_has_none(monkeypatch):
    monkeypatch.delattr(Tomes, "memory", raising=False)
    at = app("memory")
    assert not at.exception
    assert "not built" in texts(at)


def test_tomes_ui_binds_localhost_and_hides_the_deploy_button(monkeypatch):
    from app.cli import app as cli
    from app.cli import ui as ui_cli

    seen: list[list[str]] = []
    monkeypatch.setattr(ui_cli.subprocess, "call", lambda cmd: seen.append(cmd) or 0)
    monkeypatch.setenv("TOMES_MAX_FILE_MB", "7.5")
    from app import settings

    settings.reset()
    result = CliRunner().invoke(cli, ["ui", "--port", "8765", "--headless"])
    assert result.exit_code == 0, result.output
    cmd = seen[0]

    def opt(name: str) -> str:
        return cmd[cmd.index(name) + 1]

    assert opt("--server.address") == "127.0.0.1"
    assert opt("--server.port") == "8765"
    assert opt("--client.toolbarMode") == "minimal"
    assert opt("--server.maxUploadSize") == "8"  # the uploader's limit covers TOMES_MAX_FILE_MB
    CliRunner().invoke(cli, ["ui", "--host", "0.0.0.0"])
    assert seen[1][seen[1].index("--server.address") + 1] == "0.0.0.0"
