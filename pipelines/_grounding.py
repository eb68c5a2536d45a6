"""Checking what a model wrote against the text it read.

Small models invent: a map record about a Regency novel came back with "the Dunmore
Mill was closed in May, with a loss of four hundred jobs". Three checks keep such things
from being passed on:

- ``sentences``: the text cut into sentences with their spans (blingfire), so a model
  can *select* sentences by number instead of writing (extractive mode): what it returns
  is then the text itself, by construction.
- ``find_quote``: where a quote a model gave occurs in its source, exactly or within a
  small edit distance (rapidfuzz), after normalizing case, whitespace and quote marks.
- ``invented_names`` and ``support``: proper names in a claim that occur nowhere in the
  source, and per sentence of an answer whether its content words and names are found
  in the text it cites.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

# A quote counts as found at this similarity (0-100) of its best-aligned stretch.
QUOTE_MATCH = 90
# An answer sentence is supported when this share of its content words occur in its
# sources (and all its names do).
SUPPORT_SHARE = 0.6

_WORD = re.compile(r"[A-Za-z][A-Za-z'’-]*")
_PART = re.compile(r"[A-Za-z]+")
_WORD_LOWER = re.compile(r"[a-z][a-z'’-]*")
_PART_LOWER = re.compile(r"[a-z]+")
_NAME = re.compile(r"\b[A-Z][a-z'’]+(?:[ -][A-Z][a-z'’]+)*\b")
# Capitalized words that are not names wherever they stand.
_NOT_NAMES = {
    "i", "a", "an", "the", "this", "that", "these", "those", "he", "she", "it", "they", "we",
    "you", "his", "her", "its", "their", "our", "my", "your", "in", "on", "at", "of", "for",
    "and", "but", "or", "so", "yet", "as", "if", "when", "while", "after", "before", "then",
    "there", "here", "what", "who", "whom", "which", "why", "how", "where", "all", "some",
    "no", "not", "one", "two", "three", "first", "second", "text", "chapter", "part", "book",
    "summary", "mr", "mrs", "miss", "ms", "dr", "sir", "lady", "lord", "st", "however",
    "although", "though", "because", "since", "also", "both", "each", "every", "many",
    "much", "most", "more", "other", "such", "with", "without", "from", "to", "by", "about",
    "overall", "finally", "meanwhile", "later", "yes", "oh", "ah", "note", "notes",
}
_STOP = _NOT_NAMES | {
    "was", "were", "is", "are", "be", "been", "being", "had", "has", "have", "did", "does",
    "do", "would", "could", "should", "will", "shall", "may", "might", "must", "can", "very",
    "into", "upon", "than", "them", "him", "who", "whose", "only", "own", "same", "said",
    "says", "say", "tells", "told", "document", "story", "author", "narrator", "describes",
    "discusses", "explains", "mentions", "reader", "passage", "section",
}
_TITLE_END = re.compile(r"\b(?:Mr|Mrs|Ms|Dr|St|Sr|Jr|Mme|Mlle|Capt|Col|Gen|Rev|Prof|Lt|Sgt)\.$")
_STRAIGHT = (("“", '"'), ("”", '"'), ("‘", "'"), ("’", "'"), ("—", "-"), ("–", "-"))
_QUOTES = str.maketrans(dict(_STRAIGHT))  # the same as a table, for checking ``straighten``


def straighten(text: str) -> str:
    """Curly quotes straight and dashes plain: six ``str.replace`` passes are many times
    faster than ``str.translate`` with a table on long texts."""
    for curly, plain in _STRAIGHT:
        if curly in text:
            text = text.replace(curly, plain)
    return text


def sentences(text: str) -> list[tuple[int, int]]:
    """Spans of the sentences of ``text`` (whitespace trimmed, empty ones dropped)."""
    if not text.strip():
        return []
    import blingfire

    _, offsets = blingfire.text_to_sentences_and_offsets(text)
    spans: list[tuple[int, int]] = []
    glue = False  # the last piece ended in a title ("Mrs."): blingfire cut a name in two
    for start, end in offsets:
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if end <= start:
            continue
        if glue and spans:
            spans[-1] = (spans[-1][0], end)
        elif _WORD.search(text[start:end]):
            spans.append((start, end))
        else:
            continue
        glue = bool(_TITLE_END.search(text[spans[-1][0]:spans[-1][1]]))
    return spans


def _normalized(text: str) -> tuple[str, list[int]]:
    """``text`` case-folded with quotes straightened and whitespace runs collapsed, and
    for each of its characters the offset in ``text`` it came from (char by char: the
    slow way, for text whose case-folding changes its length)."""
    out: list[str] = []
    where: list[int] = []
    space = False
    for i, ch in enumerate(straighten(text)):
        if ch.isspace():
            if not space and out:
                out.append(" ")
                where.append(i)
            space = True
            continue
        space = False
        out.append(ch.lower())
        where.append(i)
    return "".join(out), where


_SPACE_RUN = re.compile(r"\s+")
_SPACE_CODES = [c for c in range(0x3001) if chr(c).isspace()]  # none above U+3000


class _Folded:
    """What ``_normalized`` gives, made with C-speed string methods and numpy; the
    offsets are worked out on the first lookup, since a source is tens of thousands of
    characters and most quotes looked up in it are not found."""

    def __init__(self, text: str) -> None:
        flat = straighten(text)
        self._lead = len(flat) - len(flat.lstrip())
        collapsed = _SPACE_RUN.sub(" ", flat[self._lead:])
        self.text = collapsed.lower()
        self._flat = flat
        self._where: Any = None
        if len(self.text) != len(collapsed):  # case-folding changed the length
            self.text, self._where = _normalized(text)

    def offset(self, i: int) -> int:
        """The offset in the text of character ``i`` of the folded text."""
        if self._where is None:
            import numpy as np

            codes = np.frombuffer(self._flat.encode("utf-32-le"), dtype=np.uint32)
            space = np.isin(codes, _SPACE_CODES)
            # Kept: every other character, and the first of each run of whitespace but
            # a leading one (index 0 is never a run's first kept character).
            keep = ~space
            keep[1:] |= space[1:] & ~space[:-1]
            self._where = np.flatnonzero(keep)
        return int(self._where[i])


@lru_cache(maxsize=8)
def _folded(text: str) -> _Folded:
    # Cached: the records of one map pack, and the sentences of one answer, are all
    # checked against the same source.
    return _Folded(text)


def find_quote(quote: str, source: str) -> tuple[int, int] | None:
    """The span of ``source`` that ``quote`` stands for, or None when it is not there."""
    needle = _Folded(quote.strip().strip('"\'')).text
    if len(needle) < 8:
        return None
    hay = _folded(source)
    at = hay.text.find(needle)
    if at >= 0:
        return hay.offset(at), hay.offset(at + len(needle) - 1) + 1
    from rapidfuzz import fuzz

    found = fuzz.partial_ratio_alignment(needle, hay.text, score_cutoff=QUOTE_MATCH)
    if found is None or found.dest_end <= found.dest_start:
        return None
    return hay.offset(found.dest_start), hay.offset(found.dest_end - 1) + 1


def names(text: str) -> set[str]:
    """Proper names in ``text``: capitalized words (and runs of them) other than the
    common words that begin sentences."""
    found: set[str] = set()
    for match in _NAME.finditer(text):
        words = [re.sub(r"['’]s?$", "", w) for w in re.split(r"[ -]", match.group())]
        found.update(w for w in words if len(w) > 1 and w.lower() not in _NOT_NAMES)
    return found


def invented_names(claim: str, source: str) -> list[str]:
    """Names in ``claim`` that occur nowhere in ``source`` (in any case): the strongest
    sign of an invented fact."""
    present = _present(source)
    return sorted(n for n in names(straighten(claim))
                  if n.lower() not in present and n.lower().rstrip("s") not in present)


@lru_cache(maxsize=8)
def _present(source: str) -> frozenset[str]:
    """The words of ``source``, lower-cased, whole and in parts: a name stands alone in a
    claim ("Heaven", "York") where the source has it joined ("Heaven's sake", "New
    York-and", "Fifteen-year-old"). Cached: each sentence of an answer is checked against
    the same source."""
    flat = straighten(source).lower()
    return frozenset(_WORD_LOWER.findall(flat)) | frozenset(_PART_LOWER.findall(flat))


def content_words(text: str) -> set[str]:
    return {w for w in (m.lower() for m in _WORD.findall(straighten(text)))
            if len(w) > 3 and w not in _STOP}


@dataclass(frozen=True)
class Support:
    sentence: str
    supported: bool
    share: float  # of its content words found in the sources
    invented: tuple[str, ...]  # names found nowhere in the sources

    def to_dict(self) -> dict[str, object]:
        return {"sentence": self.sentence, "supported": self.supported,
                "share": round(self.share, 2), "invented": list(self.invented)}


def support(answer: str, source: str) -> list[Support]:
    """Each sentence of ``answer``, judged against ``source`` (the text it cites)."""
    present = content_words(source)
    out = []
    for start, end in sentences(answer):
        sentence = answer[start:end]
        words = content_words(sentence)
        share = len(words & present) / len(words) if words else 1.0
        invented = tuple(invented_names(sentence, source))
        out.append(Support(sentence, share >= SUPPORT_SHARE and not invented, share, invented))
    return out


def numbered(text: str, spans: list[tuple[int, int]], first: int = 1) -> str:
    """The sentences one per line as ``[n] sentence`` (newlines inside flattened)."""
    return "\n".join(f"[{first + i}] {' '.join(text[a:b].split())}" for i, (a, b) in enumerate(spans))
