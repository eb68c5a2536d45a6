"""Prompts and schemas for reading by selection (grounding "select").

The text is shown as numbered sentences and the model answers with sentence numbers;
grammar-constrained decoding holds it to numbers that exist. The record is then the
selected sentences themselves, with their spans: a small model can pick badly, but it
cannot put a word in the book's mouth.
"""

from __future__ import annotations

from typing import Any

from pipelines._mapreduce_prompts import NO_INFO

SYSTEM_SELECT = "You pick sentences from a text by their numbers. Reply with one JSON object only."

# How many sentences the final summary keeps, per length.
SUMMARY_SENTENCES = {"short": 4, "medium": 8, "long": 16}
# A map call selects about one sentence in this many (at least 2, at most 8).
MAP_SHARE = 8
QA_SENTENCES = 3
SELECT_MAX_TOKENS = 96  # a few numbers and a label
ANSWER_MAX_TOKENS = 160


def map_keep(n: int) -> int:
    return max(2, min(8, n // MAP_SHARE))


def select_schema(n: int, most: int, least: int = 0) -> dict[str, Any]:
    """``least``: a summary's pick must take that many (a small model left free often
    stops at one sentence)."""
    return {
        "type": "object",
        "properties": {
            "sentences": {"type": "array", "items": {"type": "integer", "enum": list(range(1, n + 1))},
                          "minItems": min(least, n), "maxItems": most},
            "label": {"type": "string"},
        },
        "required": ["sentences", "label"],
        "additionalProperties": False,
    }


def answer_schema(n: int) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "answer": {"type": "string"},
            "sentences": {"type": "array", "items": {"type": "integer", "enum": list(range(1, n + 1))},
                          "maxItems": QA_SENTENCES},
        },
        "required": ["answer", "sentences"],
        "additionalProperties": False,
    }


def select_prompt(mode: str, numbered: str, question: str | None, most: int, part: str = "") -> str:
    # The sentences first, the question after: over the same piece, a second question
    # reuses the server's cached prompt prefix.
    if mode == "qa":
        return (
            f"Sentences{part}:\n{numbered}\n\nQuestion: {question}\n\n"
            f"Which sentences (at most {most}) help answer the question? If none do, give an "
            'empty list. Reply as JSON: {"sentences": [<numbers>], "label": "<what they say, in a few words>"}'
        )
    return (
        f"Sentences{part}:\n{numbered}\n\n"
        f"Which {most} sentences carry the most important events and facts? Reply as JSON: "
        '{"sentences": [<numbers>], "label": "<what happens, in a few words>"}'
    )


def answer_prompt(numbered: str, question: str | None) -> str:
    return (
        f"Sentences from the document:\n{numbered}\n\nQuestion: {question}\n\n"
        "Answer the question from these sentences only, in their words; if they do not "
        f'answer it, answer "{NO_INFO}". Reply as JSON: {{"answer": "<short answer>", '
        '"sentences": [<numbers of the sentences it rests on>]}'
    )
