"""Prompts and schemas for the map-reduce pipeline.

Kept short on purpose: the default model is a 135M model that loses the thread of long
instructions. The calibration example (stated -> 5, inferred -> 3, unrelated -> 1)
follows LLM x MapReduce's in-context confidence calibration; its names are unusual so
a copied example field can be told apart from a real answer (see ``EXAMPLE_VALUES``).
"""

from __future__ import annotations

from typing import Any

NO_INFO = "NO INFORMATION"
SCALE = "Confidence: 5 = the text states it, 3 = inferred from the text, 1 = unrelated or unclear."

SYSTEM_MAP = "You read one part of a long document. Reply with one JSON object only."
SYSTEM_MERGE = "You merge notes taken from a long document. Reply with one JSON object only."
SYSTEM_DIRECT = "You answer questions about a document. Reply with one JSON object only."
SYSTEM_SUMMARY = "You write clear, faithful summaries. Never repeat a sentence."

_QA_EXAMPLE = (
    'Examples for the question "Where did Mara Quill live?":\n'
    'text "Mara Quill kept a shop in Dunmere." -> answer "Dunmere", confidence 5\n'
    'text "Letters to Mara Quill were stamped at Dunmere." -> answer "probably Dunmere", confidence 3\n'
    f'text "The harvest was late that year." -> answer "{NO_INFO}", confidence 1'
)
_SUMMARY_EXAMPLE = (
    'Example: text "In May the Dunmere mill closed and forty men lost their work." -> '
    'answer "The Dunmere mill closed in May, costing forty jobs.", confidence 5'
)
# Values a model may copy from the examples instead of reading its text.
EXAMPLE_VALUES = {
    "dunmere", "probably dunmere", "mara quill kept a shop in dunmere.",
    "letters to mara quill were stamped at dunmere.", "the harvest was late that year.",
    "the dunmere mill closed in may, costing forty jobs.",
    "in may the dunmere mill closed and forty men lost their work.",
    "<facts from the text that bear on the question>", "<how they answer it>",
    "<key facts: who, what, where, when>", "<why they matter>",
}

_QUOTES = '"quotes": ["<1-3 exact sentences of the text the facts rest on>"], '
_RECORD_QA = (
    '{"extracted": "<facts from the text that bear on the question>", '
    '"rationale": "<how they answer it>", '
    f'"answer": "<the answer, or {NO_INFO}>", "confidence": <1-5>}}'
)
_RECORD_SUMMARY = (
    '{"extracted": "<key facts: who, what, where, when>", "rationale": "<why they matter>", '
    f'"answer": "<a 1-3 sentence summary, or {NO_INFO} if there is no content>", '
    '"confidence": <1-5>}'
)


# No maxLength: llama.cpp turns it into a grammar so large that decoding ran ~10x
# slower on the embedded model (114 s against 12 s for the same 66-token reply).
# max_tokens bounds the reply instead; a cut-off object is repaired when parsed.
_STRING: dict[str, Any] = {"type": "string"}

RECORD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "extracted": _STRING,
        "rationale": _STRING,
        "answer": _STRING,
        "confidence": {"type": "integer", "minimum": 1, "maximum": 5},
    },
    "required": ["extracted", "rationale", "answer", "confidence"],
    "additionalProperties": False,
}
RECORD_MAX_TOKENS = 256

# Grounding "verify": the record also quotes the text it rests on, and the quotes are
# looked up in that text (pipelines/_records.verify).
QUOTED_SCHEMA: dict[str, Any] = {
    **RECORD_SCHEMA,
    "properties": {**RECORD_SCHEMA["properties"],
                   "quotes": {"type": "array", "items": _STRING, "maxItems": 3}},
    "required": [*RECORD_SCHEMA["required"], "quotes"],
}
QUOTED_MAX_TOKENS = 384

ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "answer": _STRING,
        "rationale": _STRING,
        "confidence": {"type": "integer", "minimum": 1, "maximum": 5},
        "notes": {"type": "array", "items": {"type": "integer"}},
    },
    "required": ["answer", "rationale", "confidence", "notes"],
    "additionalProperties": False,
}
ANSWER_MAX_TOKENS = 420

LENGTHS: dict[str, tuple[str, int]] = {
    # length -> (instruction, max_tokens)
    "short": ("short (3-4 sentences)", 200),
    "medium": ("medium-length (one paragraph of 6-10 sentences)", 400),
    "long": ("detailed (several paragraphs)", 900),
}


def map_prompt(mode: str, text: str, question: str | None, part: str, quotes: bool = False) -> str:
    body = f'Text{part}:\n"""\n{text}\n"""\n\n'
    record = _RECORD_QA if mode == "qa" else _RECORD_SUMMARY
    if quotes:
        record = "{" + _QUOTES + record[1:]
    # The text first, what varies with the request after it: a second question over the
    # same piece reuses the server's cached prompt prefix (vLLM, llama.cpp slots).
    if mode == "qa":
        return (
            f"{body}Question: {question}\n\n"
            f"Report what this text says about the question as JSON:\n{record}\n"
            f"{SCALE}\n{_QA_EXAMPLE}"
        )
    return f"{body}Summarize this text as JSON:\n{record}\n{SCALE}\n{_SUMMARY_EXAMPLE}"


def collapse_prompt(mode: str, notes: str, question: str | None) -> str:
    if mode == "qa":
        return (
            f"Question: {question}\n\nNotes from parts of a document, with confidence (1-5):\n"
            f"{notes}\n\nMerge the notes into one note as JSON:\n{_RECORD_QA}\n"
            "Where notes disagree, keep the one with the higher confidence."
        )
    return (
        f"Notes on consecutive parts of a document, in order:\n{notes}\n\n"
        f"Merge them into one note as JSON:\n{_RECORD_SUMMARY}"
    )


def reduce_qa_prompt(notes: str, question: str | None) -> str:
    return (
        f"Question: {question}\n\nNotes from parts of a document, with confidence (1-5):\n"
        f"{notes}\n\nAnswer the question from the notes. Where notes disagree, trust the "
        "higher confidence. Reply as JSON:\n"
        '{"answer": "<the answer>", "rationale": "<why>", "confidence": <1-5>, '
        '"notes": [<numbers of the notes the answer rests on>]}'
    )


def reduce_summary_prompt(notes: str, length: str, style: str | None) -> str:
    instruction, _ = LENGTHS[length]
    style_line = f" Style: {style}." if style else ""
    return (
        f"Notes on a document, part by part, in order:\n{notes}\n\n"
        f"Write a {instruction} summary of the whole document from these notes.{style_line}"
    )


DIRECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"answer": _STRING, "rationale": _STRING,
                   "confidence": {"type": "integer", "minimum": 1, "maximum": 5}},
    "required": ["answer", "rationale", "confidence"],
    "additionalProperties": False,
}


def direct_qa_prompt(text: str, question: str | None) -> str:
    return (
        f'Document:\n"""\n{text}\n"""\n\nQuestion: {question}\n\n'
        f'Answer from the document only; if it does not say, answer "{NO_INFO}". Reply as JSON:\n'
        '{"answer": "<the answer>", "rationale": "<the words of the document it rests on>", '
        '"confidence": <1-5>}\n' + SCALE
    )


def direct_summary_prompt(text: str, length: str, style: str | None) -> str:
    instruction, _ = LENGTHS[length]
    style_line = f" Style: {style}." if style else ""
    return f'Document:\n"""\n{text}\n"""\n\nWrite a {instruction} summary of this document.{style_line}'


def retry_prompt(error: str) -> str:
    return f"That reply was not valid JSON ({error}). Reply again with only the JSON object."
