"""A short story for the memory tests: a man who changes his name, moves and changes
roles, and the operator replies a model would give for each chapter (keyed by a phrase
that only that chapter has)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CHAPTERS = [
    "# One\n\nTom Brown worked as a clerk in London. On 12 March 1850 Tom Brown met "
    "Mary Shaw at the harbour office in London.",
    "# Two\n\nTwo days later Tom Brown sailed to Dover. In Dover he found work on the docks "
    "as a porter.",
    "# Three\n\nBy 1852 Tom Brown had taken the name Captain Blake. Captain Blake commanded "
    "the ship Albatross. On 4 June 1852 Mary Shaw came to Dover and saw the Albatross burn "
    "in the harbour.",
    "# Four\n\nThat evening Blake was arrested for the fire and taken to the prison in "
    "Canterbury. Who had set the fire, nobody knew.",
]

REPLIES: dict[str, dict[str, Any]] = {
    "worked as a clerk": {
        "entities": [{"name": "Tom Brown", "kind": "person"}, {"name": "London", "kind": "place"},
                     {"name": "Mary Shaw", "kind": "person"}],
        "states": [{"entity": "Tom Brown", "role": "clerk", "state": ""}],
        "events": [{"actors": ["Tom Brown", "Mary Shaw"], "action": "met at the harbour office",
                    "time": "12 March 1850", "place": "London"}],
        "questions": [],
    },
    "sailed to Dover": {
        "entities": [{"name": "Tom Brown", "kind": "person"}, {"name": "Dover", "kind": "place"}],
        "states": [{"entity": "Tom Brown", "role": "porter", "state": "works on the docks"}],
        "events": [{"actors": ["Tom Brown"], "action": "sailed to Dover", "time": "Two days later",
                    "place": "Dover"}],
        "questions": [],
    },
    "taken the name": {
        "entities": [{"name": "Captain Blake", "kind": "person", "aliases": ["Tom Brown"]},
                     {"name": "Mary Shaw", "kind": "person"},
                     {"name": "Albatross", "kind": "object"}],
        "states": [{"entity": "Captain Blake", "role": "captain of the Albatross", "state": ""}],
        "events": [{"actors": ["Captain Blake"], "action": "commanded the ship Albatross",
                    "time": "1852", "place": ""},
                   {"actors": ["Mary Shaw"], "action": "saw the Albatross burn in the harbour",
                    "time": "4 June 1852", "place": "Dover"}],
        "questions": [],
    },
    "arrested for the fire": {
        "entities": [{"name": "Blake", "kind": "person"}, {"name": "Canterbury", "kind": "place"}],
        "states": [{"entity": "Blake", "role": "", "state": "in prison"}],
        "events": [{"actors": ["Blake"], "action": "was arrested for the fire and taken to prison",
                    "time": "That evening", "place": "Canterbury"}],
        "questions": [{"question": "Who set the fire on the Albatross?", "answer": ""}],
    },
}

SECOND_STORY = [
    "# Later\n\nIn 1860 Mary Shaw opened a school in Canterbury. Captain Blake, free again, "
    "visited the school.",
    "# Last\n\nIn 1861 Mary Shaw told the town that the harbour master had set the fire on "
    "the Albatross.",
]

SECOND_REPLIES: dict[str, dict[str, Any]] = {
    "opened a school": {
        "entities": [{"name": "Mary Shaw", "kind": "person"}, {"name": "Captain Blake", "kind": "person"},
                     {"name": "Canterbury", "kind": "place"}],
        "states": [{"entity": "Mary Shaw", "role": "schoolmistress", "state": ""}],
        "events": [{"actors": ["Mary Shaw"], "action": "opened a school", "time": "1860",
                    "place": "Canterbury"},
                   {"actors": ["Captain Blake"], "action": "visited the school", "time": "",
                    "place": ""}],
        "questions": [],
    },
    "harbour master had set": {
        "entities": [{"name": "Mary Shaw", "kind": "person"}],
        "states": [],
        "events": [{"actors": ["Mary Shaw"], "action": "told the town who set the fire",
                    "time": "In 1861", "place": ""}],
        "questions": [{"question": "Who set the fire on the Albatross?",
                       "answer": "the harbour master"}],
    },
}


def write(path: Path, chapters: list[str]) -> Path:
    path.write_text("\n\n".join(chapters) + "\n", encoding="utf-8")
    return path


def operator_reply(replies: dict[str, dict[str, Any]]):
    """A reply function for ScriptedBackend: the operator's JSON for the chapter in the
    prompt; anything else (answers, verification) is left to ``other``."""

    def reply(request: Any, other: Any = None) -> Any:
        prompt = request.messages[-1]["content"]
        for phrase, reply in replies.items():
            if phrase in prompt and prompt.startswith("Passage:"):
                return json.dumps(reply)
        if other is not None:
            return other(request)
        return json.dumps({"entities": [], "states": [], "events": [], "questions": []})

    return reply
