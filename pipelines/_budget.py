"""Token budgets: splitting text, cutting notes and grouping them so that no prompt
overflows the model's window."""

from __future__ import annotations

import math
from collections.abc import Callable

from pipelines._records import Record


def split(text: str, budget: int, count: Callable[[str], int]) -> list[tuple[int, int]]:
    """Spans of ``text`` that each fit ``budget`` tokens, cut at whitespace."""
    if count(text) <= budget or len(text) < 2:
        return [(0, len(text))]
    parts = max(2, math.ceil(count(text) / budget))
    step = len(text) / parts
    cuts = [0]
    for i in range(1, parts):
        target = int(i * step)
        space = text.rfind(" ", cuts[-1] + 1, target + 1)
        cut = space if space > cuts[-1] else target
        cuts.append(cut)
    cuts.append(len(text))
    spans: list[tuple[int, int]] = []
    for a, b in zip(cuts, cuts[1:]):
        if b <= a:
            continue
        sub = split(text[a:b], budget, count)
        spans += [(a + s, a + e) for s, e in sub]
    return spans


def truncate(text: str, budget: int, count: Callable[[str], int]) -> str:
    if count(text) <= budget:
        return text
    keep = len(text)
    while keep > 0:
        keep = int(keep * 0.85)
        cut = text[:keep].rstrip() + " …"
        if count(cut) <= budget:
            return cut
    return ""


def fit_note(note: Record, budget: int, render: Callable[[Record, int], str],
         count: Callable[[str], int]) -> Record:
    """A note no bigger than ``budget`` tokens when rendered: long fields are cut."""
    if count(render(note, 1)) <= budget:
        return note
    fitted = dict(note)
    share = max(8, budget // 3)
    for key in ("rationale", "extracted", "answer"):
        fitted[key] = truncate(fitted[key], share, count)
    if count(render(fitted, 1)) > budget:  # type: ignore[arg-type]
        fitted["rationale"] = ""
        fitted["extracted"] = truncate(fitted["extracted"], budget // 4, count)
        fitted["answer"] = truncate(fitted["answer"], budget // 2, count)
    return fitted  # type: ignore[return-value]


def group_notes(notes: list[Record], tokens: list[int], budget: int) -> list[list[Record]]:
    groups: list[list[Record]] = []
    current: list[Record] = []
    used = 0
    for note, n in zip(notes, tokens):
        if current and used + n > budget:
            groups.append(current)
            current, used = [], 0
        current.append(note)
        used += n
    if current:
        groups.append(current)
    return groups


def keep_within(notes: list[Record], budget: int, render: Callable[[Record, int], str],
                 count: Callable[[str], int]) -> list[Record]:
    """The notes that fit the reduce prompt, in priority order (after MAX_LEVELS)."""
    kept: list[Record] = []
    used = 0
    for i, note in enumerate(notes):
        note = fit_note(note, budget, render, count)
        n = count(render(note, i + 1)) + 1
        if kept and used + n > budget:
            break
        kept.append(note)
        used += n
    return kept
