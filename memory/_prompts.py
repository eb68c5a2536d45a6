"""Prompts and schemas of the memory workspace. Short and flat: the embedded 135M model
follows a small schema under a grammar, and loses the thread in long instructions."""

from __future__ import annotations

from typing import Any

from memory.schema import KINDS

SYSTEM_OPERATOR = (
    "You read a passage of a story and note who is in it, what they are, and who did "
    "what, when and where. Use the passage's own words. Reply with JSON only."
)


def operator_prompt(text: str) -> str:
    return (
        f"Passage:\n{text}\n\n"
        "Note from the passage only:\n"
        "- entities: people, places, groups and things named in it, with their kind and "
        "any other names the passage gives them;\n"
        "- states: for an entity, its role (job, title, position) and its state (where it "
        "lives, its condition); \"\" when the passage does not say;\n"
        "- events: who did what, with the time and place as written; \"\" when not said;\n"
        "- questions: what the passage leaves unknown, with the answer if it gives one."
    )


OPERATOR_MAX_TOKENS = 400

_STR = {"type": "string"}

OPERATOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "entities": {"type": "array", "maxItems": 8, "items": {
            "type": "object",
            "properties": {"name": _STR, "kind": {"type": "string", "enum": list(KINDS)},
                           "aliases": {"type": "array", "maxItems": 3, "items": _STR}},
            "required": ["name", "kind"]}},
        "states": {"type": "array", "maxItems": 6, "items": {
            "type": "object",
            "properties": {"entity": _STR, "role": _STR, "state": _STR},
            "required": ["entity", "role", "state"]}},
        "events": {"type": "array", "maxItems": 6, "items": {
            "type": "object",
            "properties": {"actors": {"type": "array", "maxItems": 4, "items": _STR},
                           "action": _STR, "time": _STR, "place": _STR},
            "required": ["actors", "action", "time", "place"]}},
        "questions": {"type": "array", "maxItems": 2, "items": {
            "type": "object",
            "properties": {"question": _STR, "answer": _STR},
            "required": ["question", "answer"]}},
    },
    "required": ["entities", "states", "events", "questions"],
}

# What small models copy from the schema or write for "not said": never a value.
EMPTY_VALUES = frozenset({
    "", "name", "string", "entity", "entities", "kind", "role", "state", "states", "action",
    "actors", "time", "place", "question", "answer", "unknown", "none", "null", "n/a", "na",
    "not mentioned", "not specified", "not said", "not stated", "not given", "empty",
    "nothing", "no", "-", "?", "...", "not known", "unspecified", "passage", "the passage",
})

SYSTEM_VERIFY = "You decide whether two names in a story refer to the same one. Reply with JSON only."

VERIFY_SCHEMA: dict[str, Any] = {
    "type": "object", "properties": {"same": {"type": "boolean"}}, "required": ["same"],
}


def verify_prompt(name: str, about_name: str, other: str, about_other: str) -> str:
    return (
        f"A: {name}\n{about_name}\n\nB: {other}\n{about_other}\n\n"
        "Are A and B the same person, place or thing? Answer same: true or false."
    )


SYSTEM_ANSWER = (
    "You answer questions about a long story from notes taken while reading it. The "
    "notes are numbered; use only them. Answer briefly, and list the numbers of the "
    "notes the answer rests on."
)

ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"answer": _STR, "notes": {"type": "array", "maxItems": 6,
                                             "items": {"type": "integer"}}},
    "required": ["answer", "notes"],
}

ANSWER_MAX_TOKENS = 160


def answer_prompt(context: str, question: str) -> str:
    return f"Notes:\n{context}\n\nQuestion: {question}"


def retry_prompt(error: str) -> str:
    return (f"That reply could not be read ({error}). Reply again with one JSON object "
            "only, as asked.")
