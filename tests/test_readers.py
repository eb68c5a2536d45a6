"""Readers: formats, encodings, boilerplate removal, and one clear error per bad file."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from app.errors import IngestError
from app.ingest.readers import SUPPORTED_SUFFIXES, read_file
from docfactory import make_docx, make_epub, make_pdf

MB = 1024 * 1024


def read(path: Path, data: bytes | str | None = None, *, max_bytes: int = 50 * MB):
    if data is not None:
        path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return read_file(path, max_bytes=max_bytes)


def test_supported_suffixes_cover_the_common_formats():
    assert {".txt", ".md", ".markdown", ".html", ".htm", ".pdf", ".docx", ".epub", ".rst"} <= SUPPORTED_SUFFIXES


# --- plain text ----------------------------------------------------------------------


def test_text_bom_and_mixed_line_endings_are_normalised(tmp_path):
    raw = b"\xef\xbb\xbfline one\r\nline two\rline three\nline four\r\r\nline five"
    result = read(tmp_path / "notes.txt", raw)
    assert result.text == "line one\nline two\nline three\nline four\nline five"
    assert result.format == "txt"
    assert result.title == "notes"


def test_legacy_encoding_is_detected(tmp_path):
    french = (
        "Le cœur a ses raisons que la raison ne connaît point. Café crème, façade, "
        "naïveté, élève, à côté, déjà, où, garçon, Noël, hôtel, fenêtre, août. "
    ) * 20
    result = read(tmp_path / "fr.txt", french.encode("cp1252"))
    assert "connaît" in result.text and "façade" in result.text
    assert "\ufffd" not in result.text


def test_utf16_with_bom(tmp_path):
    result = read(tmp_path / "wide.txt", "Hello, wide world.\r\nSecond line.".encode("utf-16"))
    assert result.text == "Hello, wide world.\nSecond line."


def test_gutenberg_header_and_licence_become_metadata(tmp_path):
    text = (
        "The Project Gutenberg eBook of The Test Book, by Ann Author\r\n\r\n"
        "This eBook is for the use of anyone anywhere in the United States.\r\n\r\n"
        "Title: The Test Book\r\n       or, A Subtitle\r\n\r\nAuthor: Ann Author\r\n\r\n"
        "Release Date: May 1, 2001 [eBook #4242]\r\n\r\nLanguage: English\r\n\r\n"
        "*** START OF THE PROJECT GUTENBERG EBOOK THE TEST BOOK ***\r\n\r\n\r\n"
        "Produced by Some Volunteers\r\n\r\n\r\n"
        "CHAPTER I\r\n\r\nIt was a dark and stormy night.\r\n\r\n"
        "*** END OF THE PROJECT GUTENBERG EBOOK THE TEST BOOK ***\r\n\r\n"
        "Updated editions will replace the previous one. The Full Project Gutenberg License...\r\n"
    )
    result = read(tmp_path / "pg4242.txt", text)
    assert result.text == "CHAPTER I\n\nIt was a dark and stormy night."
    assert result.title == "The Test Book"
    assert result.meta["author"] == "Ann Author"
    assert result.meta["subtitle"] == "or, A Subtitle"
    assert result.meta["gutenberg_id"] == 4242
    removed = result.meta["boilerplate"]
    assert removed[0].startswith("The Project Gutenberg eBook") and "START OF THE" in removed[0]
    assert any("Produced by Some Volunteers" in b for b in removed)
    assert "License" in removed[-1]


def test_older_gutenberg_variants(tmp_path):
    text = (
        "Produced by An Anonymous Volunteer\n\n\n\nEMMA\n\nBy Jane Austen\n\n"
        + "Some prose that goes on. " * 200
        + "\n\nFINIS\n\n\n\nEnd of the Project Gutenberg EBook of Emma, by Jane Austen\n"
    )
    result = read(tmp_path / "emma.txt", text)
    assert result.text.startswith("EMMA\n\nBy Jane Austen")
    assert result.text.endswith("FINIS")
    assert result.title == "Emma" and result.meta["author"] == "Jane Austen"
    assert len(result.meta["boilerplate"]) == 2


def test_text_without_gutenberg_markers_is_untouched(tmp_path):
    text = "Produced by the committee.\n\nThe minutes of the meeting follow."
    result = read(tmp_path / "minutes.txt", text)
    assert result.text == text
    assert "boilerplate" not in result.meta


def test_sample_books_lose_their_gutenberg_boilerplate(shared_data):
    titles = {}
    for path in sorted((shared_data / "books").glob("*.txt")):
        result = read_file(path, max_bytes=50 * MB)
        low = result.text.lower()
        assert "gutenberg" not in low, path.name
        assert "\r" not in result.text and "\ufeff" not in result.text
        assert result.meta.get("boilerplate"), path.name
        titles[path.name] = (result.title, result.meta.get("author"))
    assert titles["frankenstein.txt"] == ("Frankenstein", "Mary Wollstonecraft (Godwin) Shelley")
    assert titles["emma.txt"] == ("Emma", "Jane Austen")
    assert titles["the_man_in_the_brown_suit.txt"] == ("The Man in the Brown Suit", "Agatha Christie")


# --- markdown, rst, html -------------------------------------------------------------


def test_markdown_title_and_front_matter(tmp_path):
    md = "---\ntitle: \"Front Title\"\nauthor: Me\n---\n# Heading One\n\nBody text.\n"
    result = read(tmp_path / "doc.md", md)
    assert result.title == "Front Title" and result.meta["author"] == "Me"
    assert result.text.startswith("# Heading One")
    plain = read(tmp_path / "plain.markdown", "```sh\n# not a title\n```\n\nSetext Title\n===\n\ntext")
    assert plain.title == "Setext Title" and plain.format == "md"


def test_rst_title(tmp_path):
    result = read(tmp_path / "guide.rst", "=====\nGuide\n=====\n\nIntro\n-----\n\nText.")
    assert result.title == "Guide" and result.format == "rst"


def test_html_structure_and_chrome(tmp_path):
    html = """<!doctype html><html lang="en"><head><title>Page &amp; Title</title>
    <style>p { color: red }</style><script>var secret = 1;</script></head><body>
    <nav><a href="/">Home</a> <a href="/about">About menu</a></nav>
    <h1>Main heading</h1><p>First   paragraph
    spans lines.</p><p>Second <b>bold</b> paragraph.</p>
    <h2>Sub</h2><ul><li>apple</li><li>pear</li></ul>
    <table><tr><th>k</th><th>v</th></tr><tr><td>a</td><td>1</td></tr></table>
    <pre><code># a comment
fn main() {}</code></pre></body></html>"""
    result = read(tmp_path / "page.html", html)
    assert result.title == "Page & Title" and result.format == "html"
    lines = result.text.split("\n")
    assert "# Main heading" in lines and "## Sub" in lines
    assert "First paragraph spans lines." in lines
    assert "Second bold paragraph." in lines
    assert "- apple" in lines and "- pear" in lines
    assert "k | v" in lines and "a | 1" in lines
    assert "```\n# a comment\nfn main() {}\n```" in result.text
    for chrome in ("secret", "color: red", "About menu"):
        assert chrome not in result.text
    assert result.meta["language"] == "en"


def test_gutenberg_html_edition(tmp_path):
    html = (
        "<html><head><title>The Project Gutenberg eBook of Tiny, by Nobody</title></head><body>"
        '<section class="pg-boilerplate"><p>Title: Tiny</p><p>Author: Nobody</p>'
        "<p>*** START OF THE PROJECT GUTENBERG EBOOK TINY ***</p></section>"
        "<h2>CHAPTER I</h2><p>Once upon a time.</p>"
        "<section><p>*** END OF THE PROJECT GUTENBERG EBOOK TINY ***</p><p>Licence.</p></section>"
        "</body></html>"
    )
    result = read(tmp_path / "pg.html", html)
    assert result.text == "## CHAPTER I\n\nOnce upon a time."
    assert result.title == "Tiny" and result.meta["author"] == "Nobody"


def test_html_title_falls_back_to_first_h1(tmp_path):
    result = read(tmp_path / "x.htm", "<body><h1>The Real Title</h1><p>text</p></body>")
    assert result.title == "The Real Title"


def test_html_declared_legacy_charset(tmp_path):
    html = '<html><head><meta charset="windows-1252"></head><body><p>déjà vu – “quoted”</p></body></html>'
    result = read(tmp_path / "old.html", html.encode("cp1252"))
    assert result.text == "déjà vu – “quoted”"


def test_sample_html_book(shared_data):
    result = read_file(shared_data / "docs" / "rust_book.html", max_bytes=50 * MB)
    assert result.title == "The Rust Programming Language"
    assert "\n# Foreword\n" in result.text
    # Page chrome outside <main> (keyboard help, theme menu, sidebar) is gone.
    assert "Keyboard shortcuts" not in result.text
    assert "localStorage" not in result.text


# --- pdf -----------------------------------------------------------------------------


def test_pdf_pages_and_running_headers(tmp_path):
    bodies = ["Widgets turn.", "Gears mesh with widgets.", "Oil them weekly.", "Store them dry."]
    pages = [["ACME Widget Manual", body, f"Page {i} of 4"] for i, body in enumerate(bodies, 1)]
    result = read(tmp_path / "manual.pdf", make_pdf(pages, title="Widget Manual"))
    assert result.format == "pdf" and result.title == "Widget Manual"
    assert result.meta["pages"] == 4
    assert len(result.page_starts) == 4 and result.page_starts[0] == 0
    for body, start in zip(bodies, result.page_starts):
        assert result.text[start:].startswith(body)
    assert "ACME Widget Manual" not in result.text and "of 4" not in result.text
    assert "ACME Widget Manual" in result.meta["boilerplate"]
    assert any(b.startswith("Page ") for b in result.meta["boilerplate"])


def test_pdf_title_from_first_line_without_metadata(tmp_path):
    result = read(tmp_path / "notitle.pdf", make_pdf([["A Short Report", "Findings follow."]]))
    assert result.title == "A Short Report"


def test_pdf_with_owner_password_only_is_read(tmp_path):
    # Encrypted with the empty user password: viewers open it without asking.
    result = read(tmp_path / "restricted.pdf", make_pdf([["Open text."]], password=""))
    assert "Open text." in result.text


def test_sample_pdf_furniture_and_outline(shared_data):
    result = read_file(shared_data / "docs" / "libtasn1.pdf", max_bytes=50 * MB)
    assert len(result.page_starts) == result.meta["pages"] == 36
    assert any(b.startswith("Chapter 4: Function reference") for b in result.meta["boilerplate"])
    lines = result.text.split("\n")
    assert not any(line.startswith("Chapter 4: Function reference") for line in lines)
    assert "# 4 Function reference" in lines and "## 4.1 ASN.1 schema functions" in lines


# --- docx, epub ----------------------------------------------------------------------


def test_docx(tmp_path):
    data = make_docx(
        [("Heading1", "Introduction"), (None, "First paragraph."), ("berschrift2", "Details"),
         (None, "Second paragraph.")],
        title="Docx Title", table=[["name", "value"], ["x", "1"]],
    )
    result = read(tmp_path / "report.docx", data)
    assert result.format == "docx" and result.title == "Docx Title"
    assert result.meta["author"] == "A. Writer"
    assert result.text == (
        "# Introduction\n\nFirst paragraph.\n\n## Details\n\nSecond paragraph.\n\nname | value\nx | 1"
    )


def test_epub_reads_spine_in_order(tmp_path):
    data = make_epub(["<h1>One</h1><p>First chapter.</p>", "<h1>Two</h1><p>Second chapter.</p>"],
                     title="Spine Book", author="E. Pub")
    result = read(tmp_path / "book.epub", data)
    assert result.title == "Spine Book" and result.meta["author"] == "E. Pub"
    assert result.text == "# One\n\nFirst chapter.\n\n# Two\n\nSecond chapter."


# --- bad input: one clear IngestError naming the file, the cause and the fix --------

BAD_FILES = {
    "corrupt.pdf": (b"%PDF-1.7\n" + random.Random(1).randbytes(2000), "not a readable PDF"),
    "truncated.pdf": (None, "not a readable PDF"),
    "locked.pdf": (None, "encrypted with a password"),
    "scan.pdf": (None, "no text layer"),
    "empty.txt": (b"", "is empty"),
    "blank.md": (b"   \n\n  \t\n", "is empty"),
    "image.txt": (b"\x89PNG\r\n\x1a\n" + random.Random(2).randbytes(3000), "PNG image"),
    "noise.txt": (bytes(range(256)) * 20, "binary"),
    "broken.docx": (b"this is not a zip", "not a readable Word document"),
    "drm.epub": (None, "DRM"),
    "only-markup.html": (b"<html><head><script>x()</script></head><body></body></html>", "no text"),
    "data.xyz": (b"whatever", "format tomes does not read"),
}


def _bad_bytes(name: str) -> bytes:
    if name == "truncated.pdf":
        return make_pdf([["Some text here."]] * 3)[:300]
    if name == "locked.pdf":
        return make_pdf([["Secret text."]], password="hunter2")
    if name == "scan.pdf":
        return make_pdf([[], []])
    if name == "drm.epub":
        return make_epub(["<p>x</p>"], drm=True)
    return BAD_FILES[name][0]


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_files_raise_one_clear_error(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(_bad_bytes(name))
    with pytest.raises(IngestError) as info:
        read_file(path, max_bytes=50 * MB)
    err = info.value
    assert err.path == str(path)
    assert str(path) in str(err)
    assert BAD_FILES[name][1].lower() in err.cause.lower()
    assert err.fix  # always says what to do
    assert "Traceback" not in str(err)


def test_missing_file(tmp_path):
    with pytest.raises(IngestError) as info:
        read_file(tmp_path / "nope.txt", max_bytes=MB)
    assert "does not exist" in info.value.cause and "nope.txt" in str(info.value)


def test_size_limit_is_checked_before_reading(tmp_path):
    path = tmp_path / "big.txt"
    path.write_text("word " * 50_000)
    with pytest.raises(IngestError) as info:
        read_file(path, max_bytes=100_000)
    assert "over the" in info.value.cause and "MB limit" in info.value.cause
    assert "TOMES_MAX_FILE_MB" in info.value.fix
    # The same limit applies to bytes handed over directly.
    with pytest.raises(IngestError):
        read_file(path, max_bytes=100_000, raw=path.read_bytes())


# --- page furniture ------------------------------------------------------------------


def test_running_headers_that_change_with_each_chapter():
    from app.ingest.boilerplate import strip_page_furniture

    pages, bodies = [], []
    for i in range(10):
        printed = i + 3  # the printed page number runs ahead of the page index
        body = f"Distinct body words {'abcdefghij'[i] * 3} on this page."
        bodies.append(body)
        if i % 2 == 0:  # a chapter opens: no running header, the number at the foot
            pages.append(f"{body}\n{printed}")
        else:  # the running header names the chapter: it appears on this page only
            pages.append(f"Chapter {i // 2 + 1}: Topic {'KLMNO'[i // 2]} {printed}\n{body}")
    cleaned, removed = strip_page_furniture(pages)
    assert cleaned == bodies
    assert "Chapter 3: Topic M 8" in removed


def test_pages_that_are_all_alike_keep_their_text():
    from app.ingest.boilerplate import strip_page_furniture

    pages = ["Slide title\nSame words"] * 4
    cleaned, removed = strip_page_furniture(pages)
    assert cleaned == pages and removed == []
