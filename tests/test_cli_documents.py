"""tomes ingest / docs / show / rm, for people and with --json, and their error paths."""

from __future__ import annotations

import json
import sys

import pytest
from typer.testing import CliRunner

from app.cli import app, main
from app.errors import NotFound

runner = CliRunner()


def run(*args: str):
    result = runner.invoke(app, list(args))
    return result


def run_json(*args: str):
    result = run(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture
def files(tmp_path):
    (tmp_path / "rivers.md").write_text("# Rivers\n\nRivers run to the sea. " * 3)
    (tmp_path / "hills.txt").write_text("Hills rise over the plain.\n\nThey are green.")
    return tmp_path


def test_ingest_docs_show_rm_json(files):
    out = run_json("ingest", str(files / "rivers.md"), str(files / "hills.txt"), "--corpus", "geo", "--no-embed")
    assert out["corpus"] == "geo" and out["embedded"] == 0
    assert [o["status"] for o in out["outcomes"]] == ["added", "added"]
    assert all(o["chunks"] >= 1 for o in out["outcomes"])

    docs = run_json("docs")
    assert {d["title"] for d in docs} == {"Rivers", "hills"}
    assert all(d["corpus"] == "geo" and d["chunks"] >= 1 and d["tokens"] > 0 for d in docs)
    assert run_json("docs", "--corpus", "elsewhere") == []

    rivers = next(d for d in docs if d["title"] == "Rivers")
    shown = run_json("show", str(rivers["id"]))
    assert shown["title"] == "Rivers" and shown["format"] == "md"
    assert shown["chunks"][0]["heading"] == "Rivers"
    assert shown["chunks"][0]["text"].startswith("# Rivers")
    assert run_json("show", "hills.txt")["title"] == "hills"  # by file name

    removed = run_json("rm", "Rivers")
    assert removed["id"] == rivers["id"]
    assert [d["title"] for d in run_json("docs")] == ["hills"]


def test_human_output(files):
    result = run("ingest", str(files), "--no-embed")
    assert result.exit_code == 0
    assert "2 added" in result.stdout and "0 failed" in result.stdout
    again = run("ingest", str(files), "--no-embed")
    assert "0 added" in again.stdout and "2 unchanged" in again.stdout
    listing = run("docs")
    assert "Rivers" in listing.stdout and "hills" in listing.stdout
    shown = run("show", "Rivers")
    assert shown.exit_code == 0 and "Rivers run to the sea" in shown.stdout
    gone = run("rm", "hills")
    assert gone.exit_code == 0 and "Removed document" in gone.stdout


def test_show_reports_removed_boilerplate(tmp_path):
    book = tmp_path / "pg.txt"
    book.write_text(
        "The Project Gutenberg eBook of Tiny, by Nobody\n\nTitle: Tiny\n\nAuthor: Nobody\n\n"
        "*** START OF THE PROJECT GUTENBERG EBOOK TINY ***\n\nOnce upon a time.\n\n"
        "*** END OF THE PROJECT GUTENBERG EBOOK TINY ***\n\nLicence text.\n"
    )
    run_json("ingest", str(book), "--no-embed")
    shown = run("show", "Tiny")
    assert "2 boilerplate block(s)" in shown.stdout
    assert run_json("show", "Tiny")["meta"]["author"] == "Nobody"


def test_missing_file_fails_with_its_name(tmp_path):
    missing = tmp_path / "nowhere.txt"
    result = run("ingest", str(missing), "--no-embed")
    assert result.exit_code == 1
    assert "nowhere.txt" in result.stdout and "1 failed" in result.stdout
    as_json = run("ingest", str(missing), "--no-embed", "--json")
    assert as_json.exit_code == 1
    outcome = json.loads(as_json.stdout)["outcomes"][0]
    assert outcome["status"] == "failed" and "nowhere.txt" in outcome["error"]


def test_directory_with_a_bad_file_still_adds_the_rest(files):
    (files / "broken.pdf").write_bytes(b"%PDF-1.4\nnot really a pdf")
    result = run("ingest", str(files), "--no-embed")
    assert result.exit_code == 1  # not every file made it, though the good ones did
    assert "2 added" in result.stdout and "1 failed" in result.stdout
    assert "broken.pdf" in result.stdout and "not a readable PDF" in result.stdout
    titles = {d["title"] for d in run_json("docs")}
    assert titles == {"Rivers", "hills"}


def test_unknown_document_is_a_clear_error(files, monkeypatch, capsys):
    result = run("show", "no-such-doc")
    assert result.exit_code == 1 and isinstance(result.exception, NotFound)
    # Through the real entry point the user sees the cause and the fix, not a traceback.
    monkeypatch.setattr(sys, "argv", ["tomes", "rm", "424242"])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "no document with id 424242" in err and "tomes docs" in err
    assert "Traceback" not in err


def test_names_that_look_like_rich_markup_print_as_they_are(tmp_path):
    # "[final]" used to vanish (read as a style tag) and "[/b]" raised MarkupError.
    (tmp_path / "draft [final].txt").write_text("The draft says [bold]hello[/bold] twice.")
    odd = tmp_path / "x["
    odd.mkdir()
    (odd / "b].txt").write_text("")  # empty: its error message names the path "x[/b].txt"
    result = run("ingest", str(tmp_path / "draft [final].txt"), str(odd / "b].txt"), "--no-embed")
    assert "MarkupError" not in repr(result.exception), result.exception
    assert "x[/b].txt" in result.output.replace("\n", "")
    listing = run("docs")
    assert listing.exit_code == 0 and "[final]" in listing.output
    shown = run("show", "draft [final]")
    assert shown.exit_code == 0, shown.output
    assert "[bold]hello[/bold]" in shown.output


@pytest.mark.parametrize("args", [("show", "x", "-n", "-3"), ("runs", "-n", "-1"), ("runs", "-n", "0")])
def test_negative_counts_are_refused(args):
    result = run(*args)
    assert result.exit_code == 2 and "Invalid value" in result.output


def test_an_empty_search_query_is_an_error():
    from app.api import Tomes
    from app.errors import TomesError

    with pytest.raises(TomesError, match="empty"):
        Tomes().search("any", "   ")


def test_listing_documents_does_not_load_their_text(files, monkeypatch):
    from sqlalchemy import event

    from app.api import Tomes
    from app.store import open_store

    Tomes().ingest([files / "rivers.md"], "geo", embed=False)
    statements = []
    engine = open_store()
    event.listen(engine, "before_cursor_execute",
                 lambda conn, cur, sql, *a: statements.append(sql))
    (doc,) = Tomes().documents()
    listing_sql = statements[0]
    assert "documents.text" not in listing_sql, listing_sql
    assert doc["chars"] > 0  # from the stored length


def test_a_number_that_is_one_documents_id_and_anothers_title_is_flagged(tmp_path):
    from app.api import Tomes
    from app.errors import TomesError

    for name in ("a.txt", "b.txt", "c.txt", "3.txt"):  # "3.txt" is titled "3"
        (tmp_path / name).write_text(f"The text of {name}, which is short but real.\n")
    assert run("ingest", str(tmp_path), "--no-embed").exit_code == 0
    docs = run_json("docs")
    titled = next(d["id"] for d in docs if d["title"] == "3")
    third = next(d["title"] for d in docs if d["id"] == 3)
    assert titled != 3

    shown = run("show", "3")
    assert shown.exit_code == 0
    out = " ".join(shown.output.split())
    assert f"title {third}" in out and f"also the title of document {titled}" in out, out
    with pytest.raises(TomesError, match=f"title of document {titled}") as err:
        Tomes().remove("3")  # destructive: refused rather than guessed
    assert "tomes rm doc:3" in err.value.fix
    assert {d["id"] for d in run_json("docs")} == {1, 2, 3, 4}
    assert run("rm", "doc:3").exit_code == 0
    assert {d["id"] for d in run_json("docs")} == {1, 2, 4}
    assert "also the title" not in " ".join(run("show", str(titled)).output.split())


def test_a_search_that_must_embed_first_says_how_many(tmp_path):
    from app.api import Tomes
    from app.events import Event

    (tmp_path / "notes.txt").write_text("\n\n".join(f"Note {i} about apples and pears." for i in range(30)))
    report = Tomes().ingest([tmp_path / "notes.txt"], "fruit", embed=False)
    chunks = report.added[0].chunks
    events: list[Event] = []
    Tomes().search("fruit", "apples", on_event=events.append)
    first = next(e for e in events if e.stage == "embed")
    assert first.done == 0 and first.total == chunks
    assert first.message == f"{chunks:,} chunks without vectors"
    events.clear()
    Tomes().search("fruit", "pears", on_event=events.append)
    assert not any(e.stage == "embed" for e in events)  # nothing missing: nothing said
