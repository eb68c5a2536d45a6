"""Prompts of the recursive controller: the root's system prompt for each mode (the
environment it programs against, with its sizes), the per-step prompt of actions mode,
and the sub-calls (a map over one chunk, an answer from evidence, a last summary)."""

from __future__ import annotations

import json
from typing import Any

# --- code mode -----------------------------------------------------------------------

CODE_SYSTEM = """\
You answer a question about a text that is far too long to read at once. You cannot see \
the text: it is loaded into a Python REPL that you control. Write Python in ```repl \
blocks; each block runs when you reply, and you see only what it prints (cut to \
{output_chars:,} characters). Variables persist between your replies.

Variables:
- `context`: str, the whole text: {n_chars:,} characters, about {n_tokens:,} tokens.{docs_line}
- `documents`: list of {n_docs} dict(s) with id, title, offset, length (where each sits in `context`).
- `chunks`: list of {n_chunks:,} dicts with id, document_id, start, end, page, tokens, text: \
the text in pieces of about {chunk_tokens} tokens.

Functions:
- `search(query, k=5)` -> list of dicts (chunk_id, document_id, title, start, end, page, \
score, text): the chunks that best match the query.
- `grep(pattern, limit=100)` -> list of dicts (chunk_id, document_id, start, end, text): \
regex matches (case-insensitive for a lower-case pattern).
- `llm_query(prompt)` -> str: ask a sub-model. Its window is {window:,} tokens: keep a \
prompt under about {sub_chars:,} characters.
- `llm_query_batched(prompts)` -> list[str]: many llm_query calls at once, {capacity} in \
parallel - far faster than a loop of llm_query.
- `rlm_query(prompt, context)` -> str: hand a sub-question and a piece of text (a str) to a \
helper that works like you, in its own REPL.{depth_line}
- `FINAL(value)`: the final answer; `FINAL_VAR("name")`: the final answer is that variable.

Work in steps: look at the text's shape (print slices, grep, search), run sub-calls over \
the pieces that matter, collect their answers in variables, then call FINAL(...) in a \
```repl block, or write FINAL(...) on a line of its own. Do not guess: read first."""

CODE_START = "Question: {question}\n\nStart by looking at the text. Reply with a ```repl block."
CODE_CONTINUE = "{observation}\n\n{left} Continue, or give the answer with FINAL(...)."
CODE_NO_CODE = ("Your reply had no ```repl block and no FINAL(...) on a line of its own. "
                "Write code to read the text, or give the answer.")
CODE_LAST = "This is your last step: give the answer now with FINAL(...)."


def code_system(*, n_chars: int, n_tokens: int, n_docs: int, n_chunks: int, chunk_tokens: int,
                window: int, capacity: int, output_chars: int, depth: int, max_depth: int) -> str:
    docs_line = (f" {n_docs} documents, each after a line '===== document ID: TITLE ====='."
                 if n_docs > 1 else "")
    if depth < max_depth:
        depth_line = f" You are at depth {depth}; helpers may go {max_depth - depth} level(s) deeper."
    else:
        depth_line = " You are at the deepest level: it answers with one sub-model call."
    return CODE_SYSTEM.format(
        n_chars=n_chars, n_tokens=n_tokens, docs_line=docs_line, n_docs=n_docs,
        n_chunks=n_chunks, chunk_tokens=chunk_tokens, window=window,
        sub_chars=max(1000, int(window * 0.6) * 3), capacity=capacity,
        output_chars=output_chars, depth_line=depth_line,
    )


# --- actions mode ----------------------------------------------------------------------

ACTIONS = ("search", "grep", "read", "map", "recurse", "answer")

ACTION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "action": {"type": "string", "enum": list(ACTIONS)},
        "text": {"type": "string", "maxLength": 300},
        "chunks": {"type": "array", "items": {"type": "integer"}, "maxItems": 8},
    },
    "required": ["action", "text", "chunks"],
    "additionalProperties": False,
}
ACTION_MAX_TOKENS = 160

ACTIONS_SYSTEM = """\
You answer a question about a long text that you cannot see. You work one step at a \
time. Each reply is one JSON object: {"action": ..., "text": ..., "chunks": [...]}.
Actions:
- search: find the chunks about the words in "text".
- grep: find the chunks that contain "text" exactly.
- read: show the chunks listed in "chunks".
- map: ask the question in "text" of each chunk in "chunks" (empty: the chunks found last).
- recurse: give the question in "text" and the chunks in "chunks" to a helper.
- answer: the final answer in "text" (empty "text": write it from the evidence).
Search first, then map, then answer."""


def actions_prompt(*, question: str, about: str, steps: list[str], latest: str,
                   selection: list[int], evidence: list[str], hint: dict[str, Any],
                   last: bool, note: str = "") -> str:
    parts = [f"Question: {question}", f"The text: {about}"]
    if steps:
        parts.append("Steps so far:\n" + "\n".join(steps))
    if latest:
        parts.append(f"Result of step {len(steps)}:\n{latest}")
    if selection:
        parts.append("Chunks found last: " + ", ".join(str(i) for i in selection))
    if evidence:
        parts.append("Evidence:\n" + "\n".join(evidence))
    if note:
        parts.append(note)
    if last:
        parts.append("This is the last step: answer now.")
    parts.append("Suggested next step: " + json.dumps(hint, ensure_ascii=False))
    parts.append("Your next step, one JSON object:")
    return "\n\n".join(parts)


# --- sub-calls -------------------------------------------------------------------------

ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"answer": {"type": "string", "maxLength": 600}},
    "required": ["answer"],
    "additionalProperties": False,
}
MAP_MAX_TOKENS = 120
ANSWER_MAX_TOKENS = 200

MAP_SYSTEM = "You read one passage of a long text and answer a question from that passage only."


def map_prompt(passage: str, question: str, label: str) -> str:
    return (f"Passage ({label}):\n{passage}\n\nQuestion: {question}\n\n"
            "Answer from the passage in one or two sentences. If the passage does not "
            'say, answer "NONE". Reply as JSON: {"answer": "..."}')


ANSWER_SYSTEM = "You answer a question from notes taken while reading a long text."


def answer_prompt(question: str, notes: str) -> str:
    return (f"Notes:\n{notes}\n\nQuestion: {question}\n\n"
            "Answer the question from the notes only, in one to three sentences. If the "
            'notes do not answer it, say what they do show. Reply as JSON: {"answer": "..."}')


def retry_prompt(error: str) -> str:
    return (f"That reply could not be used: {error}. Reply again with one JSON object only, "
            'like {"action": "search", "text": "some words", "chunks": []}.')
