"""Lenient JSON for replies from small models.

Small models wrap JSON in code fences, add prose around it, use single quotes, leave
trailing commas, or stop mid-string when they hit ``max_tokens``. ``parse_object``
recovers the first JSON object from all of those, or raises ``ParseError`` naming what
was wrong (the message goes back to the model in the one retry).
"""

from __future__ import annotations

import json
import re
from typing import Any


class ParseError(ValueError):
    pass


_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)(?:```|$)", re.S)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")
_BARE_KEY = re.compile(r"([{,]\s*)([A-Za-z_][A-Za-z0-9_]*)\s*:")


def parse_object(text: str) -> dict[str, Any]:
    """The first JSON object in ``text``, repaired where that is unambiguous."""
    if not text or not text.strip():
        raise ParseError("the reply was empty")
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    error = "no JSON object found (it must start with '{')"
    for candidate in candidates:
        start = candidate.find("{")
        if start < 0:
            continue
        body = candidate[start:]
        for attempt in (body, _repair(body), _close(_repair(body))):
            try:
                value, _ = json.JSONDecoder().raw_decode(attempt)
            except json.JSONDecodeError as exc:
                error = f"invalid JSON: {exc.msg} at character {exc.pos}"
                continue
            if isinstance(value, dict):
                return value
            error = "the reply was JSON but not an object"
    raise ParseError(error)


def _repair(body: str) -> str:
    body = _TRAILING_COMMA.sub(r"\1", body)
    if '"' not in body and "'" in body:
        body = body.replace("'", '"')
    elif re.search(r"[{,]\s*'", body):
        # Single-quoted keys and values mixed with apostrophes inside words: swap only
        # quotes that sit next to JSON punctuation.
        body = re.sub(r"(?<=[{,:\[]\s)'|(?<=[{,:\[])'|'(?=\s*[:,}\]])", '"', body)
    body = _BARE_KEY.sub(r'\1"\2":', body)
    return body


def _close(body: str) -> str:
    """Close a reply cut off mid-object (an open string, open brackets)."""
    stack: list[str] = []
    in_string = False
    escaped = False
    end = len(body)
    for i, ch in enumerate(body):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if ch == '"':
            in_string = True
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]":
            if stack:
                stack.pop()
            if not stack:
                end = i + 1
                break
    out = body[:end]
    if not stack:
        return out
    if in_string:
        out = out.rstrip("\\") + '"'
    out = re.sub(r",\s*$", "", out.rstrip())
    # A key left without a value: drop it rather than invent one.
    out = re.sub(r',?\s*"[^"]*"\s*:\s*$', "", out)
    return out + "".join(reversed(stack))


# The prompts show the reply's shape with placeholders ("<the answer>", "<why>"); small
# models copy them into the value ("<the answer>The author proposes ...").
_PLACEHOLDER = re.compile(r"</?(?:the [a-z][a-z ,'-]{0,70}|why|answer|label)>", re.IGNORECASE)


def text_field(value: Any, limit: int = 2000) -> str:
    """A string field as the model gave it; lists joined, None empty, long text cut,
    echoed placeholders of the prompt removed."""
    if value is None:
        return ""
    if isinstance(value, list):
        value = "; ".join(text_field(v) for v in value if v is not None)
    elif isinstance(value, dict):
        value = json.dumps(value, ensure_ascii=False)
    return " ".join(_PLACEHOLDER.sub(" ", str(value)).split())[:limit]


_WORDS = {"very high": 5, "high": 5, "medium": 3, "moderate": 3, "low": 1, "very low": 1, "none": 1}


def confidence(value: Any, default: float = 3.0) -> float:
    """A confidence on the 1-5 scale from whatever the model wrote (4, "4/5", 0.8, "high")."""
    if isinstance(value, bool):
        return default
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        text = str(value or "").strip().lower()
        if text in _WORDS:
            return float(_WORDS[text])
        m = re.search(r"-?\d+(?:\.\d+)?", text)
        if not m:
            return default
        number = float(m.group(0))
        if "%" in text:
            number /= 100
    if 0 < number < 1:
        number = 1 + 4 * number  # a 0-1 scale
    return float(min(5.0, max(1.0, number)))
