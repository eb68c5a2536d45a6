"""The operator's side that needs no model: the prompt for a chunk (or a packed group of
consecutive chunks) and the tolerant reading of what the model replied.

``read_reply`` turns a parsed reply (or None, when no JSON could be had) into one record
per chunk: entities, roles/states, events with time and place, open questions, each with
its span in the document. What a small model writes is noisy, so everything is checked
against the passage: names that are not in it (made up, or copied from the prompt),
pronouns, empty or placeholder values, instructions copied back, are dropped and
counted, never stored, never a crash.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from memory import _prompts as P
from memory._text import PRONOUNS, best_sentence, grounded, locate, norm, words
from memory.schema import KINDS

MAX_NAME_WORDS = 6
MAX_NAME_CHARS = 60
MAX_VALUE_CHARS = 200


@dataclass(frozen=True)
class Source:
    """A chunk as the operator reads it: its id, where it starts in its document, its text."""

    chunk_id: int
    start: int
    text: str


def prompt(sources: list[Source]) -> list[dict[str, str]]:
    text = "\n\n".join(s.text for s in sources)
    return [{"role": "system", "content": P.SYSTEM_OPERATOR},
            {"role": "user", "content": P.operator_prompt(text)}]


_TEMPLATE = P.operator_prompt("").lower()


def _clean(value: Any, limit: int = MAX_VALUE_CHARS) -> str:
    if value is None or isinstance(value, (dict, bool)):
        return ""
    if isinstance(value, list):
        value = ", ".join(_clean(v) for v in value if _clean(v))
    text = " ".join(str(value).split()).strip(" .,;:\"'")
    if text.lower() in P.EMPTY_VALUES or len(text) > limit:
        return ""
    if len(text) >= 8 and text.lower() in _TEMPLATE:
        return ""  # an instruction copied back
    return text


def _list(value: Any) -> list[Any]:
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        return [value]
    if isinstance(value, str) and value.strip():
        return [v for v in re.split(r"\s*(?:,|;|\band\b)\s*", value) if v]
    return []


class _Reader:
    def __init__(self, sources: list[Source]) -> None:
        self.sources = sources
        self.words = [set(words(s.text)) for s in sources]
        self.all_words = set().union(*self.words) if self.words else set()
        self.dropped = 0

    def name(self, value: Any) -> str:
        text = _clean(value, MAX_NAME_CHARS)
        if not text or len(text.split()) > MAX_NAME_WORDS or norm(text) in PRONOUNS \
                or not norm(text) or not grounded(text, self.all_words):
            if value not in (None, "", []):
                self.dropped += 1
            return ""
        return text

    def where(self, phrases: list[str], sentence: bool) -> tuple[int, tuple[int, int] | None]:
        """(index of the chunk, span in its text): of the first phrase found, or with
        ``sentence`` (or none found) of the sentence sharing the most words with them."""
        for phrase in ([] if sentence else phrases):
            for i, src in enumerate(self.sources):
                span = locate(phrase, src.text) if phrase else None
                if span:
                    return i, span
        best: tuple[int, tuple[int, int] | None] = (0, None)
        best_score = -1
        for i, src in enumerate(self.sources):
            span = best_sentence(src.text, phrases)
            if span:
                score = len(set(words(src.text[span[0]:span[1]]))
                            & set(w for p in phrases for w in words(p)))
                if score > best_score:
                    best, best_score = (i, span), score
        return best


def read_reply(obj: dict[str, Any] | None, raw: str, parsed: str,
               sources: list[Source]) -> list[dict[str, Any]]:
    """One record per source chunk, in their order. ``obj`` None: the reply was not
    JSON even after the retry; names that occur in both the reply and the passage are
    kept as entities (the text fallback), nothing else is guessed."""
    reader = _Reader(sources)
    records = [{"chunk_id": s.chunk_id, "parsed": parsed, "entities": [], "states": [],
                "events": [], "questions": [], "dropped": 0} for s in sources]

    def put(kind: str, item: dict[str, Any], phrases: list[str], sentence: bool = True) -> None:
        i, span = reader.where(phrases, sentence)
        offset = sources[i].start
        item["start"], item["end"] = (offset + span[0], offset + span[1]) if span else (None, None)
        key = tuple(sorted((k, str(v)) for k, v in item.items() if k not in ("start", "end")))
        seen = records[i].setdefault("_seen", set())
        if key in seen:
            return
        seen.add(key)
        records[i][kind].append(item)

    if obj is None:
        for name in dict.fromkeys(re.findall(r"\b[A-Z][a-z]+(?:\s+[A-Z][a-z]+){0,3}\b", raw or "")):
            if reader.name(name) and norm(name) not in PRONOUNS:
                put("entities", {"name": name, "kind": "other", "aliases": []}, [name], sentence=False)
    else:
        for entry in _list(obj.get("entities")):
            if isinstance(entry, str):
                entry = {"name": entry}
            if not isinstance(entry, dict):
                reader.dropped += 1
                continue
            name = reader.name(entry.get("name"))
            if not name:
                continue
            kind = str(entry.get("kind") or "").strip().lower()
            kind = kind if kind in KINDS else "other"
            aliases = [a for a in (reader.name(a) for a in _list(entry.get("aliases")))
                       if a and norm(a) != norm(name)]
            put("entities", {"name": name, "kind": kind, "aliases": list(dict.fromkeys(aliases))},
                [name], sentence=False)
        for entry in _list(obj.get("states")):
            if not isinstance(entry, dict):
                reader.dropped += 1
                continue
            entity = reader.name(entry.get("entity"))
            if not entity:
                continue
            for attribute in ("role", "state"):
                value = _clean(entry.get(attribute))
                if value and norm(value) != norm(entity):
                    put("states", {"entity": entity, "attribute": attribute, "value": value},
                        [entity, value])
        for entry in _list(obj.get("events")):
            if not isinstance(entry, dict):
                reader.dropped += 1
                continue
            action = _clean(entry.get("action"))
            actors = list(dict.fromkeys(a for a in (reader.name(a) for a in _list(entry.get("actors"))) if a))
            if not action or not actors:
                reader.dropped += 1
                continue
            place = reader.name(entry.get("place"))
            time = _clean(entry.get("time"), 80)
            put("events", {"actors": actors, "action": action, "time": time, "place": place},
                actors + [action, place, time])
        for entry in _list(obj.get("questions")):
            if not isinstance(entry, dict):
                continue
            question = _clean(entry.get("question"))
            if len(question.split()) < 3:
                continue
            answer = _clean(entry.get("answer"))
            put("questions", {"question": question, "answer": answer}, [question, answer])
    for record in records:
        record.pop("_seen", None)
    records[0]["dropped"] = reader.dropped
    return records


def is_empty(record: dict[str, Any]) -> bool:
    return not any(record.get(k) for k in ("entities", "states", "events", "questions"))
