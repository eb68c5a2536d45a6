"""Reading a root model's reply: its code blocks and its FINAL marker.

Models mention the marker while planning ("when I know it I will call FINAL(answer)"),
quote it inside code, or give a variable's name instead of a value. Only a marker that
opens a line outside every code block is an answer; a bare name is resolved against the
REPL by the caller (``Final.name``), never taken as the answer text itself.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

# ```repl is the RLM convention; ```python and bare fences are what models write anyway.
_CODE_TAGS = ("", "repl", "python", "py", "python3")
# A marker opens a line (after list bullets, quote marks or bold stars), never mid-sentence.
_MARKER = re.compile(r"^[ \t>*_\-]*(FINAL_VAR|FINAL)[ \t]*\(", re.M)
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Words that stand for an answer in prompts and plans, not answers themselves.
PLACEHOLDERS = {
    "answer", "final_answer", "value", "result", "your_answer", "the_answer", "x", "var",
    "variable", "name", "variable_name", "...", "…", "", "none", "null", "todo",
}


@dataclass(frozen=True)
class Final:
    """A FINAL marker: ``expr`` (when set) is Python to evaluate in the REPL first - a
    variable's name, ``found[0]`` - and ``text`` what to use if that fails."""

    text: str
    expr: str | None = None
    placeholder: bool = False  # only a placeholder word: no answer unless it resolves
    var: bool = False  # FINAL_VAR: ``expr`` is a variable's name


def _fences(reply: str) -> list[tuple[str, str, int, int]]:
    """(tag, body, start, end) of each fenced block, paired in order; a block the model
    never closed runs to the end of the reply."""
    out, i = [], 0
    while (start := reply.find("```", i)) >= 0:
        newline = reply.find("\n", start)
        if newline < 0:
            out.append(("", "", start, len(reply)))
            break
        tag = reply[start + 3:newline].strip().lower()
        close = reply.find("```", newline + 1)
        end = len(reply) if close < 0 else close + 3
        out.append((tag, reply[newline + 1:close if close >= 0 else len(reply)], start, end))
        i = end
    return out


def code_blocks(reply: str) -> list[str]:
    """The code the reply asks to run, in order. A fence tagged with another language
    (```json, ```text) is shown, not run."""
    return [body.strip("\n") for tag, body, _, _ in _fences(reply or "")
            if tag in _CODE_TAGS and body.strip()]


def prose(reply: str) -> str:
    """The reply without its code blocks (where a FINAL may stand)."""
    reply = reply or ""
    parts, last = [], 0
    for _tag, _body, start, end in _fences(reply):
        parts.append(reply[last:start])
        last = end
    parts.append(reply[last:])
    return "\n".join(parts)


def find_final(reply: str) -> Final | None:
    """The last FINAL(...) / FINAL_VAR(...) that opens a line outside code, if any."""
    text = prose(reply)
    found: Final | None = None
    for m in _MARKER.finditer(text):
        inner = _balanced(text, m.end())
        if inner is None:
            continue
        found = _interpret(m.group(1), inner.strip()) or found
    return found


def _balanced(text: str, start: int) -> str | None:
    """The text up to the parenthesis that closes the one before ``start`` (quotes
    respected); a marker the model never closed runs to the end of its paragraph."""
    depth, quote, i = 1, "", start
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 1
            elif text.startswith(quote, i):
                i += len(quote) - 1
                quote = ""
        elif text.startswith(('"""', "'''"), i):
            quote = text[i:i + 3]
            i += 2
        elif ch in "\"'" and (i == start or not text[i - 1].isalnum()):
            quote = ch  # an apostrophe inside a word (it's) opens nothing
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return text[start:i]
        i += 1
    rest = text[start:]
    cut = rest.find("\n\n")
    rest = rest if cut < 0 else rest[:cut]
    return rest.rstrip().removesuffix(")") if rest.strip() else None


def _interpret(kind: str, inner: str) -> Final | None:
    literal = _literal(inner)
    if kind == "FINAL_VAR":
        name = literal if isinstance(literal, str) else inner
        name = name.strip().strip("'\"")
        return Final(text="", expr=name, placeholder=True, var=True) if _IDENT.match(name) else None
    if isinstance(literal, str):
        return Final(text=literal.strip(), placeholder=literal.strip().lower() in PLACEHOLDERS)
    if literal is not None and not isinstance(literal, (list, dict, tuple, set)):
        return Final(text=str(literal))
    if not inner.strip():
        return None
    # FINAL(answer), FINAL(found[0]): the value in the REPL if it evaluates there, else
    # the words themselves - unless they are only a placeholder.
    return Final(text=inner, expr=inner, placeholder=inner.lower() in PLACEHOLDERS)


def _literal(inner: str) -> object | None:
    try:
        return ast.literal_eval(inner)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        return None
