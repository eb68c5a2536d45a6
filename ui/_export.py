"""An answer with its provenance as files to download: Markdown to read, JSON to keep."""

from __future__ import annotations

import json
from typing import Any


def as_json(result: dict[str, Any], about: dict[str, Any]) -> str:
    """``about``: what was asked of what (question, target, task), beside the result."""
    return json.dumps({**about, "result": result}, indent=2, ensure_ascii=False, default=str)


def as_markdown(result: dict[str, Any], about: dict[str, Any]) -> str:
    lines = [f"# {about.get('task', 'Answer').capitalize()}: {about.get('target_title') or result.get('details', {}).get('target', '')}", ""]
    if about.get("question"):
        lines += [f"**Question:** {about['question']}", ""]
    lines += ["## Answer", "", result.get("answer", "").strip(), ""]
    confidence = (result.get("details") or {}).get("confidence")
    if confidence is not None:
        lines += [f"Confidence: {confidence}", ""]
    lines += [
        f"_{result.get('pipeline', '')} · run {result.get('run_id', '')} · {result.get('calls', 0)} model calls · "
        f"{result.get('prompt_tokens', 0) + result.get('completion_tokens', 0):,} tokens_",
        "", "## Provenance", "",
    ]
    provenance = result.get("provenance") or []
    if not provenance:
        lines.append("(none recorded)")
    for i, p in enumerate(provenance, 1):
        page = f", page {p['page']}" if p.get("page") else ""
        lines.append(f"{i}. **{p['title']}**, chunk {p['chunk_id']} (characters {p['start']}–{p['end']}{page})")
        quote = " ".join(str(p.get("quote") or "").split())
        if quote:
            lines.append(f"   > {quote}")
    return "\n".join(lines).rstrip() + "\n"
