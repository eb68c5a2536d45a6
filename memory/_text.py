"""Names and words: normalizing names for lookups, finding them in a chunk's text."""

from __future__ import annotations

import re

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)?", re.UNICODE)
_SENTENCE = re.compile(r"[^.!?\n]+(?:[.!?]+[\"'”’)]*|\n|$)")

HONORIFICS = frozenset({
    "mr", "mrs", "ms", "miss", "dr", "sir", "lady", "lord", "madam", "madame", "mme",
    "mlle", "monsieur", "mister", "master", "mistress", "dame", "herr", "frau",
})
ARTICLES = frozenset({"the", "a", "an"})
PRONOUNS = frozenset({
    "i", "me", "my", "you", "your", "he", "him", "his", "she", "her", "hers", "it", "its",
    "we", "us", "our", "they", "them", "their", "who", "whom", "someone", "somebody",
    "everyone", "nobody", "one", "himself", "herself", "themselves", "narrator",
})
STOPWORDS = frozenset({
    "a", "an", "the", "of", "in", "on", "at", "to", "for", "from", "by", "with", "and", "or",
    "was", "were", "is", "are", "be", "been", "did", "do", "does", "had", "has", "have",
    "what", "when", "where", "who", "whom", "which", "why", "how", "that", "this", "these",
    "those", "as", "it", "its", "his", "her", "their", "they", "he", "she", "him", "into",
    "after", "before", "then", "than", "there", "here", "about", "s", "first", "last",
    "happened", "happen", "time", "place", "story", "book", "text", "during", "while",
}) | PRONOUNS


def words(text: str) -> list[str]:
    return [w.lower().replace("’", "'") for w in _WORD.findall(text or "")]


def norm(name: str) -> str:
    """Lower case, punctuation gone, leading articles dropped: the lookup key."""
    tokens = words(name)
    while tokens and tokens[0] in ARTICLES:
        tokens = tokens[1:]
    return " ".join(tokens)


def core(name: str) -> str:
    """The key without honorifics: "Mr. Brown" and "Brown" share one."""
    tokens = [t for t in norm(name).split() if t not in HONORIFICS]
    return " ".join(tokens) or norm(name)


def name_tokens(name: str) -> set[str]:
    return {t for t in core(name).split() if len(t) > 2 and t not in STOPWORDS}


def content_words(text: str) -> set[str]:
    return {stem(w) for w in words(text) if len(w) > 2 and w not in STOPWORDS}


def stem(word: str) -> str:
    """A light stemmer, enough for "moved"/"moves"/"moving" to meet."""
    for suffix in ("ing", "ied", "ies", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            break
    return word


def grounded(name: str, text_words: set[str]) -> bool:
    """Every significant word of ``name`` occurs in the passage: names the model made
    up, or copied from the prompt, are not in it."""
    tokens = [t for t in words(name) if len(t) > 2 and t not in ARTICLES]
    if not tokens:
        tokens = words(name)
    return bool(tokens) and all(t in text_words for t in tokens)


def locate(phrase: str, text: str) -> tuple[int, int] | None:
    """Where ``phrase`` first occurs in ``text`` (case-insensitive, whole words)."""
    phrase = " ".join(phrase.split())
    if not phrase:
        return None
    pattern = r"(?<!\w)" + r"\s+".join(re.escape(p) for p in phrase.split()) + r"(?!\w)"
    m = re.search(pattern, text, re.I)
    return (m.start(), m.end()) if m else None


def best_sentence(text: str, terms: list[str]) -> tuple[int, int] | None:
    """The span of the sentence of ``text`` sharing the most words with ``terms``."""
    wanted = set()
    for term in terms:
        wanted |= {stem(w) for w in words(term) if w not in STOPWORDS}
    if not wanted:
        return None
    best: tuple[int, int] | None = None
    best_score = 0
    for m in _SENTENCE.finditer(text):
        score = len(wanted & {stem(w) for w in words(m.group(0))})
        if score > best_score:
            best, best_score = (m.start(), m.end()), score
    if best is None:
        return None
    start, end = best
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end
