"""Chunking: structure first, budgets in the reading model's tokens.

The text is cut into small atoms at every place a chunk may end (before headings, at
paragraph, sentence and line ends), each counted once, in one batch. Chunks are packed
greedily from atoms; when the next atom no longer fits, the chunk ends at the strongest
boundary that still leaves it reasonably full (a heading beats a paragraph end, which
beats a sentence end...). When what is left of a section needs two chunks, the two are
made even rather than leaving a scrap. Only an atom larger than the whole budget is
split at words, and a word larger than the budget at characters.

Sums of atom counts estimate chunk counts (nearly exactly, since whitespace leads each
atom the way BPE tokenizers attach it), so nothing is counted twice while growing; every
chunk is then counted exactly, and the rare one over budget is split again.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from itertools import accumulate

from app.ingest.structure import (
    CHAR, HEADING, KEEP, LINE, PARAGRAPH, SENTENCE, WORD, Structure, analyse,
)
from app.ingest.types import Span
from app.tokens import Tokenizer

# How full a chunk must be before it may end at a boundary of each strength: a chunk
# may end early before a heading, must be half full to end at a paragraph or sentence,
# and fuller still to end mid-paragraph at a line or a word.
_MIN_FILL = {HEADING: 0.15, PARAGRAPH: 0.5, SENTENCE: 0.5, LINE: 0.6, WORD: 0.75, CHAR: 0.0,
             KEEP: float("inf")}
# No token is longer than this many characters (bounds the search for hard splits).
_MAX_CHARS_PER_TOKEN = 48
_SPACE_RUN = re.compile(r"\s+")


def chunk_text(text: str, tokenizer: Tokenizer, *, max_tokens: int, overlap: int = 0,
               page_starts: list[int] | None = None) -> list[Span]:
    """Spans of ``text``, each at most ``max_tokens`` tokens, in order, covering the text
    but for whitespace; with ``overlap``, each chunk starts up to that many tokens
    before the previous one ends (at a sentence or line start where one fits)."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    if not 0 <= overlap < max_tokens:
        raise ValueError(f"overlap must be between 0 and max_tokens - 1 ({max_tokens - 1}), got {overlap}")
    if not text.strip():
        return []
    chunker = _Chunker(text, tokenizer, budget=max_tokens - overlap)
    pieces = chunker.fit(chunker.pack())
    starts = [p[0] for p in pieces]
    if overlap:
        pieces = chunker.add_overlap(pieces, overlap, max_tokens)
    spans = []
    for (start, end, n), own_start in zip(pieces, starts):
        page = max(1, bisect_right(page_starts, start)) if page_starts else None
        # The heading of the chunk's own text, not of the overlap borrowed from before.
        spans.append(Span(start, end, n, page, chunker.structure.heading_at(own_start)))
    return spans


class _Chunker:
    def __init__(self, text: str, tokenizer: Tokenizer, budget: int) -> None:
        self.text = text
        self.tok = tokenizer
        self.budget = budget
        self.structure: Structure = analyse(text)
        self._atoms()

    # --- atoms -------------------------------------------------------------------------

    def _atoms(self) -> None:
        text, bounds = self.text, self.structure.bounds
        ends = bounds[1:] + [len(text)]
        counts = self.tok.count_many([text[a:b] for a, b in zip(bounds, ends)])
        self.pos: list[int] = []
        self.strength: list[int] = []
        self.count: list[int] = []
        for a, b, s, c in zip(bounds, ends, self.structure.strengths, counts):
            if c <= self.budget:
                self.pos.append(a)
                self.strength.append(s)
                self.count.append(c)
                continue
            for i, (pa, pb, ps, pc) in enumerate(self._hard_split(a, b)):
                self.pos.append(pa)
                self.strength.append(s if i == 0 else ps)
                self.count.append(pc)
        self.prefix = [0, *accumulate(self.count)]

    def _hard_split(self, a: int, b: int) -> list[tuple[int, int, int, int]]:
        """(start, end, strength of the cut before it, exact count) pieces of text[a:b],
        each within budget: as many whole words as fit, else as many characters."""
        text, budget = self.text, self.budget
        pieces = []
        cur, strength = a, WORD
        while cur < b:
            cap = min(b, cur + budget * _MAX_CHARS_PER_TOKEN)
            if cap == b and self.tok.count(text[cur:b]) <= budget:
                pieces.append((cur, b, strength, self.tok.count(text[cur:b])))
                break
            words = [m.start() for m in _SPACE_RUN.finditer(text, cur + 1, cap) if m.start() > cur]
            end = self._longest_fit(cur, words)
            if end is not None:
                cut_strength = WORD
            else:
                end = self._longest_fit(cur, list(range(cur + 1, cap + 1))) or cur + 1
                cut_strength = CHAR
            pieces.append((cur, end, strength, self.tok.count(text[cur:end])))
            cur, strength = end, cut_strength
        return pieces

    def _longest_fit(self, start: int, ends: list[int]) -> int | None:
        """The largest end in ``ends`` (ascending) with text[start:end] within budget."""
        lo, hi, best = 0, len(ends) - 1, None
        while lo <= hi:
            mid = (lo + hi) // 2
            if self.tok.count(self.text[start:ends[mid]]) <= self.budget:
                best, lo = ends[mid], mid + 1
            else:
                hi = mid - 1
        return best

    # --- packing -----------------------------------------------------------------------

    def pack(self) -> list[tuple[int, int]]:
        """Character ranges of chunks, packed from atoms by estimated counts."""
        n, prefix, strength, budget = len(self.pos), self.prefix, self.strength, self.budget
        # next_heading[b]: the first atom at or after b that starts a heading (or n).
        next_heading = [n] * (n + 1)
        for b in range(n - 1, 0, -1):
            next_heading[b] = b if strength[b] == HEADING else next_heading[b + 1]
        ranges: list[tuple[int, int]] = []
        i = 0
        while i < n:
            # When what is left of a section needs two chunks, make them even, so the
            # section does not end in a scrap (which would be merged into the next).
            rest = prefix[next_heading[i + 1]] - prefix[i]
            limit = min(budget, rest // 2 + 1) if budget < rest <= 2 * budget else budget
            k = bisect_right(prefix, prefix[i] + limit, i + 1, n + 1) - 1
            k = max(k, i + 1)
            if k >= n:
                ranges.append(self._chars(i, n))
                break
            best = None
            for b in range(k, i, -1):  # latest first: ties go to the fuller chunk
                s = strength[b]
                if (prefix[b] - prefix[i]) >= _MIN_FILL[s] * limit and \
                        (best is None or s > strength[best]):
                    best = b
                    if s == HEADING:
                        break
            if best is None:
                best = max(range(i + 1, k + 1), key=lambda b: (strength[b] > KEEP, strength[b], b))
            ranges.append(self._chars(i, best))
            i = best
        return [r for r in ranges if r[0] < r[1]]

    def _chars(self, i: int, j: int) -> tuple[int, int]:
        """Atoms i..j-1 as a character range without outer whitespace."""
        start = _content_start(self.text, self.pos[i])
        end = self.pos[j] if j < len(self.pos) else len(self.text)
        return start, max(start, _content_end(self.text, end))

    # --- exact counts ------------------------------------------------------------------

    def fit(self, ranges: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
        """Count every chunk exactly; split again any that the estimate let over budget."""
        done: list[tuple[int, int, int]] = []
        pending = ranges
        while pending:
            counts = self.tok.count_many([self.text[s:e] for s, e in pending])
            nxt: list[tuple[int, int]] = []
            for (s, e), c in zip(pending, counts):
                # One character over budget (a rare symbol as several byte tokens under
                # a tiny budget) cannot be split further: it is kept rather than lost.
                if c <= self.budget or e - s <= 1:
                    done.append((s, e, c))
                else:
                    cut = self._exact_cut(s, e)
                    nxt += [(s, cut), (_content_start(self.text, cut), e)]
            pending = [r for r in nxt if r[0] < r[1]]
        return sorted(done)

    def _exact_cut(self, s: int, e: int) -> int:
        """Where to end a chunk that starts at s so that it fits: the last atom boundary
        (by exact count), else the last word or character that fits."""
        lo, hi = bisect_right(self.pos, s), bisect_left(self.pos, e)
        ends = [_content_end(self.text, p) for p in self.pos[lo:hi]]
        ends = [p for p in ends if p > s]
        cut = self._longest_fit(s, sorted(set(ends)))
        if cut is None:
            cut = self._hard_split(s, e)[0][1]
        return cut

    # --- overlap -----------------------------------------------------------------------

    def add_overlap(self, pieces: list[tuple[int, int, int]], overlap: int,
                    max_tokens: int) -> list[tuple[int, int, int]]:
        """Start each chunk earlier, inside the previous one, by at most ``overlap``
        tokens: at the earliest sentence start that fits, else line start, else word."""
        out = [pieces[0]]
        for (ps, pe, _), (s, e, c) in zip(pieces, pieces[1:]):
            out.append(self._overlapped(ps, pe, e, overlap, max_tokens) or (s, e, c))
        return out

    def _overlapped(self, ps: int, pe: int, e: int, overlap: int,
                    max_tokens: int) -> tuple[int, int, int] | None:
        text, tok = self.text, self.tok
        lo, hi = bisect_right(self.pos, ps), bisect_left(self.pos, pe)
        tail_end = self.prefix[hi]  # estimated tokens up to the previous chunk's end

        def attempt(q: int) -> tuple[int, int, int] | None | bool:
            """The overlapped chunk from q; None if q overlaps too much; False if the
            chunk would be over budget (a later q may still fit)."""
            if tok.count(text[q:pe]) > overlap:
                return None
            total = tok.count(text[q:e])
            return (q, e, total) if total <= max_tokens else False

        # Atom starts, by the estimate from atom counts (exact counts only to confirm).
        for wanted in (lambda s: s >= SENTENCE, lambda s: s == LINE):
            for i in range(lo, hi):
                if not wanted(self.strength[i]) or tail_end - self.prefix[i] > overlap:
                    continue
                q = _content_start(text, self.pos[i])
                if ps < q < pe and (found := attempt(q)):
                    return found
        # Word starts: the earliest that fits, by binary search on exact counts.
        window = max(ps, pe - overlap * _MAX_CHARS_PER_TOKEN)
        words = [m.end() for m in _SPACE_RUN.finditer(text, window, pe) if ps < m.end() < pe]
        first, last = 0, len(words) - 1
        while first <= last:
            mid = (first + last) // 2
            if tok.count(text[words[mid]:pe]) <= overlap:
                last = mid - 1
            else:
                first = mid + 1
        for q in words[first:first + 4]:
            if found := attempt(q):
                return found
        return None


def _content_start(text: str, pos: int) -> int:
    n = len(text)
    while pos < n and text[pos].isspace():
        pos += 1
    return pos


def _content_end(text: str, pos: int) -> int:
    while pos > 0 and text[pos - 1].isspace():
        pos -= 1
    return pos
