"""Evidence reach: whether the text an answer rests on got to the model, read from the
call log - independent of what the model made of it.

``reach_any``: the share of evidence spans found in at least one prompt of the run.
``reach_final``: the share found in the final call's prompt (the one whose reply became
the answer: the reduce, the last controller step, the only call); a span also counts as
reached when the final prompt carries every reference answer (a map record that already
holds the fact) - unless the answer is too short to tell apart from other text (< 4
characters: counts, small numbers) or the question itself contains it.

Text is compared normalized (lowercase, runs of anything but letters and digits become
one space), so numbering, line breaks and quoting added by a prompt do not hide a span.
"""

from __future__ import annotations

import json
import re
from typing import Any

_NON_WORD = re.compile(r"[^0-9a-z]+")


def normalize(text: str) -> str:
    return " " + _NON_WORD.sub(" ", text.lower()).strip() + " "


def prompts_of(run_id: str) -> list[str]:
    """The prompts (all messages joined) of a run's model calls, in call order; steps
    and failed calls are left out."""
    from sqlalchemy import select

    from app.store import Call, session_scope
    from serving.calllog import STEP

    with session_scope() as s:
        rows = s.execute(select(Call.messages, Call.error).where(
            Call.run_id == run_id, Call.backend != STEP).order_by(Call.id)).all()
    out = []
    for messages, error in rows:
        if error:
            continue
        if isinstance(messages, str):
            messages = json.loads(messages)
        out.append("\n".join(str(m.get("content", "")) for m in messages or []))
    return out


def measure(prompts: list[str], evidence: list[str], answers: list[str] | None = None,
            question: str = "") -> dict[str, Any]:
    """``reach_any`` and ``reach_final`` (None when there is no evidence span or no call)."""
    if not evidence or not prompts:
        return {"reach_any": None, "reach_final": None}
    spans = [normalize(e) for e in evidence if e.strip()]
    seen = [normalize(p) for p in prompts]
    final = seen[-1]
    any_hits = sum(1 for s in spans if any(s in p for p in seen))
    refs = [normalize(a) for a in answers or [] if a.strip()]
    carried = bool(refs) and all(
        len(r.strip()) >= 4 and r not in normalize(question) and r in final for r in refs)
    final_hits = len(spans) if carried else sum(1 for s in spans if s in final)
    return {"reach_any": round(any_hits / len(spans), 4),
            "reach_final": round(final_hits / len(spans), 4)}


def of_run(run_id: str | None, evidence: list[str], answers: list[str] | None = None,
           question: str = "") -> dict[str, Any]:
    if not run_id:
        return {"reach_any": None, "reach_final": None}
    return measure(prompts_of(run_id), evidence, answers, question)
