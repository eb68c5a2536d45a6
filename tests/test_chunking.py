"""Chunking: exact offsets, budgets, coverage, overlap, structure, headings, pages."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.ingest.chunking import chunk_text
from app.ingest.types import Span
from serving.base import ApproxTokenizer

APPROX = ApproxTokenizer()


class LumpyTokenizer:
    """Counts more for a joined text than for its parts (like BPE merges can, the other
    way round): sums of parts under-estimate, which the chunker must catch."""

    name = "lumpy"

    def count(self, text: str) -> int:
        return len(text.split()) + len(text) // 30

    def count_many(self, texts: list[str]) -> list[int]:
        return [self.count(t) for t in texts]


class CountingTokenizer(ApproxTokenizer):
    """Records how much text it was asked to count."""

    def __init__(self) -> None:
        self.chars = 0
        self.calls = 0

    def count(self, text: str) -> int:
        self.chars += len(text)
        self.calls += 1
        return super().count(text)

    def count_many(self, texts: list[str]) -> list[int]:
        self.chars += sum(map(len, texts))
        self.calls += 1
        return [ApproxTokenizer.count(self, t) for t in texts]


def check(text: str, spans: list[Span], tok, max_tokens: int, overlap: int = 0) -> None:
    """The properties every chunking must have."""
    if not text.strip():
        assert spans == []
        return
    assert spans, "non-blank text gives at least one chunk"
    assert not text[: spans[0].start].strip() and not text[spans[-1].end:].strip()
    for span in spans:
        chunk = text[span.start:span.end]
        assert 0 <= span.start < span.end <= len(text)
        assert chunk == chunk.strip(), "chunks carry no outer whitespace"
        assert span.n_tokens == tok.count(chunk), "n_tokens is the exact count"
        assert span.n_tokens <= max_tokens, "no chunk over budget"
    for prev, nxt in zip(spans, spans[1:]):
        assert prev.start < nxt.start and prev.end < nxt.end, "in order"
        if nxt.start >= prev.end:
            assert not text[prev.end:nxt.start].strip(), "no gap but whitespace"
        else:
            assert overlap > 0, "chunks overlap only when asked"
            assert tok.count(text[nxt.start:prev.end]) <= overlap


# --- property tests ------------------------------------------------------------------

_word = st.one_of(
    st.sampled_from("the a cat sat on mat and then ran far away quickly Mr. Dr. it's “quoted” (aside)".split()),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyzéß0123456789", min_size=1, max_size=14),
    st.text(alphabet="abcxyz", min_size=40, max_size=200),  # longer than small budgets
)
_sentence = st.builds(
    lambda ws, end: " ".join(ws) + end,
    st.lists(_word, min_size=1, max_size=25),
    st.sampled_from([".", "!", "?", "…", ".”", "", ";"]),
)
_paragraph = st.builds(
    lambda ss, sep: sep.join(ss),
    st.lists(_sentence, min_size=1, max_size=8),
    st.sampled_from([" ", "  ", "\n", "\n   "]),
)
_heading = st.one_of(
    st.builds(lambda n, t: "#" * n + " " + t, st.integers(1, 4), st.sampled_from(["Intro", "Part Two", "Notes"])),
    st.sampled_from(["CHAPTER IV", "Chapter 12", "XI", "PROLOGUE", "Letter 3"]),
    st.builds(lambda t: f"{t}\n{'=' * len(t)}", st.sampled_from(["Setext Title", "Another"])),
)
_code = st.builds(lambda body: "```\n" + body + "\n```", st.sampled_from(["# comment\nx = 1", "a\n\nb"]))
_block = st.one_of(_paragraph, _paragraph, _paragraph, _heading, _code)
_document = st.builds(
    lambda lead, blocks, seps, trail: lead + "".join(b + s for b, s in zip(blocks, seps)) + trail,
    st.sampled_from(["", "\n", "  \n\n", "\ufeff"]),
    st.lists(_block, min_size=1, max_size=30),
    st.lists(st.sampled_from(["\n\n", "\n\n\n", "\n \t\n", "\n"]), min_size=30, max_size=30),
    st.sampled_from(["", "\n", "   "]),
)

_settings = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_settings
@given(text=_document, max_tokens=st.integers(4, 120))
def test_properties_without_overlap(text, max_tokens):
    check(text, chunk_text(text, APPROX, max_tokens=max_tokens), APPROX, max_tokens)


@_settings
@given(text=_document, max_tokens=st.integers(6, 120), frac=st.floats(0.05, 0.5))
def test_properties_with_overlap(text, max_tokens, frac):
    overlap = max(1, int(max_tokens * frac))
    spans = chunk_text(text, APPROX, max_tokens=max_tokens, overlap=overlap)
    check(text, spans, APPROX, max_tokens, overlap)


@_settings
@given(text=_document, max_tokens=st.integers(8, 80), overlap=st.integers(0, 3))
def test_properties_when_parts_underestimate_the_whole(text, max_tokens, overlap):
    tok = LumpyTokenizer()
    check(text, chunk_text(text, tok, max_tokens=max_tokens, overlap=overlap), tok, max_tokens, overlap)


@_settings
@given(text=st.text(min_size=0, max_size=600), max_tokens=st.integers(1, 40))
def test_properties_on_arbitrary_unicode(text, max_tokens):
    check(text, chunk_text(text, APPROX, max_tokens=max_tokens), APPROX, max_tokens)


# --- structure -----------------------------------------------------------------------


def prose(n: int, topic: str = "river") -> str:
    return " ".join(f"The {topic} ran past house number {i} today." for i in range(n))


def test_chunks_break_at_headings_and_record_them():
    text = "\n\n".join(f"## Section {k}\n\n{prose(7, f'topic{k}')}" for k in range(1, 5))
    spans = chunk_text(text, APPROX, max_tokens=120)
    check(text, spans, APPROX, 120)
    # A section is ~70 tokens: greedy filling would start chunks mid-section; structure
    # first ends each chunk where its section ends.
    starts = [text[s.start:s.end].split("\n")[0] for s in spans]
    assert starts == [f"## Section {k}" for k in range(1, 5)]
    assert [s.heading for s in spans] == [f"Section {k}" for k in range(1, 5)]


def test_whole_small_sections_share_chunks():
    text = "\n\n".join(f"## Section {k}\n\n{prose(3, f'topic{k}')}" for k in range(1, 9))
    spans = chunk_text(text, APPROX, max_tokens=120)
    check(text, spans, APPROX, 120)
    assert len(spans) < 8
    for s in spans:  # every chunk holds whole sections
        chunk = text[s.start:s.end]
        assert chunk.startswith("## Section") and chunk.endswith("today.")
        assert s.heading == chunk.split("\n")[0][3:]


def test_small_sections_share_a_chunk_and_the_heading_is_the_one_in_force():
    text = "# Title\n\nIntro line.\n\n## A\n\nShort.\n\n## B\n\n" + prose(30)
    spans = chunk_text(text, APPROX, max_tokens=100)
    check(text, spans, APPROX, 100)
    assert text[spans[0].start:spans[0].end].startswith("# Title")
    assert spans[0].heading == "Title"
    assert all(s.heading == "B" for s in spans[1:])


def test_book_chapters_titles_and_table_of_contents():
    toc = "CONTENTS\n\n" + "\n\n".join(f"Chapter {i}" for i in range(1, 6))
    body = "\n\n".join(
        f"CHAPTER {roman}\n\nTHE {name}\n\n{prose(20, name.lower())}"
        for roman, name in [("I", "BEGINNING"), ("II", "MIDDLE"), ("III", "END")]
    )
    text = toc + "\n\n\n" + body
    spans = chunk_text(text, APPROX, max_tokens=90)
    check(text, spans, APPROX, 90)
    headings = [s.heading for s in spans]
    assert "CHAPTER I: THE BEGINNING" in headings and "CHAPTER III: THE END" in headings
    # TOC lines ("Chapter 1".."Chapter 5") are not taken for headings.
    assert not any(h and h.startswith("Chapter ") for h in headings)
    for s in spans:  # each chunk is filed under the chapter its text belongs to
        for name, heading in (("beginning", "CHAPTER I: THE BEGINNING"),
                              ("middle", "CHAPTER II: THE MIDDLE"), ("end", "CHAPTER III: THE END")):
            if f"The {name} ran" in text[s.start:s.end]:
                assert s.heading == heading
    # A chunk never ends with a bare chapter line.
    assert not any(re.search(r"CHAPTER [IV]+$|THE [A-Z]+$", text[s.start:s.end]) for s in spans[:-1])


def test_hash_lines_in_code_are_not_headings():
    text = "# Real\n\n```\n# comment one\nx = 1\n```\n\n# shell one\n# shell two\n\n" + prose(40)
    spans = chunk_text(text, APPROX, max_tokens=60)
    check(text, spans, APPROX, 60)
    assert {s.heading for s in spans} == {"Real"}


def test_sentences_before_words():
    text = " ".join(f"Sentence number {i} says something rather short." for i in range(60))
    spans = chunk_text(text, APPROX, max_tokens=50)
    check(text, spans, APPROX, 50)
    assert len(spans) > 5
    assert all(text[s.start:s.end].endswith(".") for s in spans)


def test_unit_larger_than_budget_is_split_hard():
    word = "x" * 5000
    text = f"Before.\n\n{word}\n\nAfter."
    spans = chunk_text(text, APPROX, max_tokens=20)
    check(text, spans, APPROX, 20)
    inner = [text[s.start:s.end] for s in spans if "x" in text[s.start:s.end]]
    assert "".join(c.replace("Before.", "").replace("After.", "").strip() for c in inner) == word


def test_pages_from_page_starts():
    pages = [prose(15, f"page{i}") for i in range(1, 4)]
    text = "\n\n".join(pages)
    page_starts = [0, len(pages[0]) + 2, len(pages[0]) + len(pages[1]) + 4]
    spans = chunk_text(text, APPROX, max_tokens=40, page_starts=page_starts)
    check(text, spans, APPROX, 40)
    for s in spans:
        expected = sum(1 for p in page_starts if p <= s.start)
        assert s.page == expected
    assert {s.page for s in spans} == {1, 2, 3}
    assert all(s.page is None for s in chunk_text(text, APPROX, max_tokens=40))


def test_overlap_starts_at_a_sentence_and_stays_within_budget():
    text = " ".join(f"Fact {i} is noted here." for i in range(200))
    spans = chunk_text(text, APPROX, max_tokens=60, overlap=15)
    check(text, spans, APPROX, 60, 15)
    overlapping = [(a, b) for a, b in zip(spans, spans[1:]) if b.start < a.end]
    assert len(overlapping) == len(spans) - 1
    assert all(text[b.start:b.end].startswith("Fact ") for _, b in overlapping)


def test_bad_arguments_and_blank_text():
    assert chunk_text("", APPROX, max_tokens=10) == []
    assert chunk_text(" \n\t\n ", APPROX, max_tokens=10) == []
    with pytest.raises(ValueError):
        chunk_text("text", APPROX, max_tokens=10, overlap=10)
    with pytest.raises(ValueError):
        chunk_text("text", APPROX, max_tokens=0)


def test_counting_is_linear_not_quadratic():
    tok = CountingTokenizer()
    text = "\n\n".join(prose(8, f"t{i}") for i in range(400))  # ~150 KB
    spans = chunk_text(text, tok, max_tokens=256, overlap=32)
    check(text, spans, APPROX, 256, 32)
    # Atoms once, chunks once, overlap candidates: a few times the text, never n².
    assert tok.chars < 4 * len(text)
    assert tok.calls < 3 * len(spans) + 10


@pytest.mark.slow
def test_real_tokenizer_on_a_book(shared_data):
    from app.ingest.readers import read_file
    from app.settings import override
    from serving.tokenizers import active_tokenizer

    with override(backend="embedded"):
        tok = active_tokenizer()
    assert tok.name != "approx", "the embedded backend's tokenizer is the model's own"
    result = read_file(shared_data / "books" / "a_modest_proposal.txt", max_bytes=10 * 1024 * 1024)
    spans = chunk_text(result.text, tok, max_tokens=128, overlap=16)
    check(result.text, spans, tok, 128, 16)
    assert len(spans) > 20
