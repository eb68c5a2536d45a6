"""Prefix reuse: three questions over the same book's packs on the embedded model.

Map prompts put the piece's text first and the question after it, so a second question
over the same document sends the server a prompt whose long head it has already
processed: llama.cpp's slots (and its host-memory prompt cache) and vLLM's automatic
prefix caching skip it. The first question runs on a freshly loaded engine (cold cache);
the next two reuse what the first left. Reported per question: wall time, prompt tokens,
cached prompt tokens (the server's usage.prompt_tokens_details.cached_tokens, as the run
totals carry them) and the ratio to the first question's wall.

With ``--control`` the same three questions run again on a fresh engine with the old
prompt order (question first), side by side.

    .venv/bin/python bench/prefix_cache.py                 # ~10-20 min on 2 shared cores
    .venv/bin/python bench/prefix_cache.py --chars 20000   # a shorter slice
Writes bench/results/prefix_cache.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DATA = ROOT.parent / "shared" / "data"
DEFAULT_DOC = DATA / "books" / "the_great_gatsby.txt"
QUESTIONS = (
    "Who is Nick Carraway's cousin?",
    "Where does Gatsby live?",
    "What does Tom Buchanan do when he meets Nick?",
)


def ingest_slice(text: str, name: str) -> int:
    from app.api import Tomes

    path = Path(tempfile.mkdtemp()) / f"{name}.txt"
    path.write_text(text, encoding="utf-8")
    report = Tomes().ingest([path], "bench-prefix", embed=False)
    if report.failed:
        raise SystemExit(report.failed[0].error)
    return (report.added or report.skipped)[0].document_id


@contextmanager
def question_first() -> Any:
    """The prompt order before issue #16 (the question ahead of the text), for --control."""
    from pipelines import _extractive as X

    original = X.select_prompt

    def old(mode: str, numbered: str, question: str | None, most: int, part: str = "") -> str:
        prompt = original(mode, numbered, question, most, part)
        if mode != "qa":
            return prompt
        head, _, rest = prompt.partition(f"\n\nQuestion: {question}\n\n")
        return f"Question: {question}\n\n{head}\n\n{rest}"

    X.select_prompt = old
    try:
        yield
    finally:
        X.select_prompt = original


def run_questions(doc: int, label: str) -> dict[str, Any]:
    from pipelines import mapreduce
    from serving import registry
    from serving.lm import LM

    backend = registry.create("embedded")  # a fresh engine: the first question is cold
    backend.load()
    lm = LM(backend, cache=False)  # the response cache would hide the engine's own
    rows = []
    for q in QUESTIONS:
        started = time.perf_counter()
        result = mapreduce.ask(doc, q, lm=lm)
        wall = time.perf_counter() - started
        rows.append({
            "question": q, "wall_s": round(wall, 2), "calls": result.calls,
            "pieces": result.details.get("pieces"), "direct": result.details.get("direct"),
            "prompt_tokens": result.prompt_tokens, "cached_tokens": result.cached_tokens,
            "cached_share": round(result.cached_tokens / max(1, result.prompt_tokens), 3),
            "completion_tokens": result.completion_tokens,
            "answer": " ".join(result.answer.split())[:200],
        })
        print(f"  [{label}] {q!r}: {wall:.1f}s, {result.calls} calls, "
              f"{result.cached_tokens}/{result.prompt_tokens} prompt tokens cached", flush=True)
    first = rows[0]["wall_s"]
    for r in rows:
        r["wall_vs_first"] = round(r["wall_s"] / first, 2) if first else None
    backend.close()
    return {"order": label, "slots": backend.capacity, "threads": backend.threads, "rows": rows,
            "goal_met": all(r["wall_vs_first"] <= 0.5 for r in rows[1:])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--doc", type=Path, default=DEFAULT_DOC)
    ap.add_argument("--chars", type=int, default=36000,
                    help="the slice of the book read (from its start)")
    ap.add_argument("--control", action="store_true",
                    help="also run the question-first prompt order on a fresh engine")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "prefix_cache.json")
    args = ap.parse_args()

    os.environ["TOMES_HOME"] = tempfile.mkdtemp(prefix="tomes-bench-")
    os.environ["TOMES_BACKEND"] = "embedded"
    from app import settings

    settings.reset()
    text = args.doc.read_text(encoding="utf-8-sig")[: args.chars]
    doc = ingest_slice(text, f"{args.doc.stem}-{args.chars}")
    results: dict[str, Any] = {
        "document": args.doc.name, "chars": len(text), "questions": list(QUESTIONS),
        "note": "embedded SmolLM2-135M on 2 shared CPU cores; other jobs may run at the same time",
        "load_avg_start": [round(x, 2) for x in os.getloadavg()],
        "suites": [run_questions(doc, "text first (tomes)")],
    }
    if args.control:
        with question_first():
            results["suites"].append(run_questions(doc, "question first (control)"))
    results["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    for s in results["suites"]:
        walls = ", ".join(f"{r['wall_s']}s ({r['wall_vs_first']}x)" for r in s["rows"])
        cached = ", ".join(f"{r['cached_tokens']}/{r['prompt_tokens']}" for r in s["rows"])
        print(f"{s['order']}: wall {walls}; cached/prompt tokens {cached}; goal met: {s['goal_met']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
