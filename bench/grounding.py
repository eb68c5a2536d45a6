"""Grounding, before and after, on the embedded model (issue 17).

For five chapters or essays from the shared books, summarize each with the records the
model writes (grounding "off", what tomes did before) and by selection ("select", the
default for the embedded model), and measure:

- record facts found in their source: each sentence of a map record judged against the
  chunks it was written from (pipelines/_grounding.support);
- summary sentences supported by the chunks the summary cites;
- proper names of the summary that occur in the source;
- calls, prompt and completion tokens, wall time.

Then the figures the README quotes: the demo's essay and a whole novel, summarized with
the defaults. Writes bench/results/grounding.json.

    .venv/bin/python bench/grounding.py              # everything (the novel takes long)
    .venv/bin/python bench/grounding.py --no-novel   # chapters and the essay only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BOOKS = ROOT.parent / "shared" / "data" / "books"
OUT = ROOT / "bench" / "results" / "grounding.json"
# (book, where the slice starts: a phrase near a chapter's beginning), ~9,000 characters each.
SLICES = [
    ("pride_and_prejudice.txt", "It is a truth universally acknowledged"),
    ("frankenstein.txt", "You will rejoice to hear"),
    ("emma.txt", "Emma Woodhouse, handsome, clever, and rich"),
    ("the_great_gatsby.txt", "In my younger and more vulnerable years"),
    ("little_women.txt", "Christmas won't be Christmas without any presents"),
]
SLICE_CHARS = 9000


def _slice(book: str, phrase: str) -> str:
    text = (BOOKS / book).read_text(encoding="utf-8")
    at = text.find(phrase)
    return text[at if at >= 0 else len(text) // 10:][:SLICE_CHARS]


def _summarize(tomes: Any, doc: int, grounding: str, **kw: Any) -> tuple[Any, list[dict], float]:
    """The result, the map records (caught on their way to the result) and the wall time."""
    from pipelines import mapreduce

    caught: dict[str, Any] = {}
    real = mapreduce._result

    def spy(job, run_id, final):
        caught["mapped"] = final.get("mapped", [])
        return real(job, run_id, final)

    mapreduce._result = spy
    try:
        started = time.perf_counter()
        result = tomes.summarize(doc, grounding=grounding, **kw)
        return result, caught.get("mapped", []), time.perf_counter() - started
    finally:
        mapreduce._result = real


def _measure(tomes: Any, doc: int, source: str, grounding: str) -> dict[str, Any]:
    from app.store import Chunk, session_scope
    from pipelines import _grounding as G

    result, records, wall = _summarize(tomes, doc, grounding, length="short", map_tokens=1024)
    with session_scope() as s:
        chunks = {c.id: c.text for c in s.query(Chunk).filter_by(document_id=doc)}
    judged = []
    for rec in records:
        if rec["no_info"]:
            continue
        text = rec["answer"] or rec["extracted"]
        judged += G.support(text, "\n".join(chunks[c] for c in rec["chunk_ids"] if c in chunks))
    unsupported = [j.sentence for j in judged if not j.supported]
    support = result.details.get("support") or {}
    names = G.names(result.answer)
    invented = G.invented_names(result.answer, source)
    return {
        "grounding": grounding,
        "record_sentences": len(judged),
        "record_facts_found": round(sum(j.supported for j in judged) / len(judged), 3) if judged else None,
        "summary_sentences": support.get("sentences", 0),
        "summary_supported": (round(support["supported"] / support["sentences"], 3)
                              if support.get("sentences") else None),
        "summary_names": len(names),
        "summary_names_found": round(1 - len(invented) / len(names), 3) if names else 1.0,
        "invented_names": invented,
        "calls": result.calls, "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens, "wall_s": round(wall, 1),
        "summary": result.answer[:600],
        # What the judge rejected, to read (and to re-judge when the checker changes).
        "unsupported_record_sentences": unsupported[:20],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-novel", action="store_true", help="skip the whole novel")
    parser.add_argument("--no-whole", action="store_true",
                        help="skip the essay and the novel (their rows are kept from the last run)")
    parser.add_argument("--slices", type=int, default=len(SLICES))
    parser.add_argument("--modes", nargs="+", default=["off", "select"], choices=["off", "select"],
                        help="measure only these; the others' rows are kept from the last run "
                             "(\"before\" does not change when the grounded path does)")
    args = parser.parse_args()
    earlier = json.loads(OUT.read_text()) if OUT.exists() else {}
    kept = {r["text"]: r for r in earlier.get("slices", [])}


    os.environ.setdefault("TOMES_CACHE_DIR", str(ROOT / "bench" / "results" / "cache"))
    from app.api import Tomes
    from app.settings import override

    figures: dict[str, Any] = {"model": "SmolLM2-135M-Instruct (embedded)", "slices": [], "whole": [],
                               "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                               "load_average_start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="tomes-grounding-") as home, \
            override(home=home, backend="embedded", embedder="hash", cache=False):
        tomes = Tomes()
        for book, phrase in SLICES[: args.slices]:
            source = _slice(book, phrase)
            path = Path(home) / f"slice_{book}"
            path.write_text(source, encoding="utf-8")
            doc = tomes.ingest([path], "slices", embed=False).added[0].document_id
            row = {"text": book, "chars": len(source)}
            for grounding in ("off", "select"):
                if grounding not in args.modes and grounding in kept.get(book, {}):
                    row[grounding] = {**kept[book][grounding], "kept_from_earlier_run": True}
                    continue
                row[grounding] = _measure(tomes, doc, source, grounding)
                print(book, grounding, {k: v for k, v in row[grounding].items() if k != "summary"},
                      flush=True)
            figures["slices"].append(row)

        wholes = [] if args.no_whole else [("a_modest_proposal.txt", "the demo's essay")]
        if not args.no_novel and not args.no_whole:
            wholes.append(("pride_and_prejudice.txt", "a whole novel"))
        measured = {book for book, _ in wholes}
        figures["whole"] += [{**w, "kept_from_earlier_run": True} for w in earlier.get("whole", [])
                             if w["text"] not in measured]
        for book, what in wholes:
            doc = tomes.ingest([BOOKS / book], "whole", embed=False).added[0].document_id
            result, _records, wall = _summarize(tomes, doc, "auto", length="short")
            info = tomes.document(doc, with_chunks=False)
            figures["whole"].append({
                "text": book, "what": what, "tokens": info["tokens"], "calls": result.calls,
                "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                "wall_s": round(wall, 1), "grounding": result.details["grounding"],
                "summary": result.answer[:800],
            })
            print(what, figures["whole"][-1], flush=True)

    def mean(key: str, grounding: str) -> float | None:
        values = [r[grounding][key] for r in figures["slices"] if r[grounding][key] is not None]
        return round(sum(values) / len(values), 3) if values else None

    def total(key: str, grounding: str) -> int:
        return sum(r[grounding][key] for r in figures["slices"])

    figures["summary"] = {
        g: {"record_facts_found": mean("record_facts_found", g),
            "summary_supported": mean("summary_supported", g),
            "summary_names_found": mean("summary_names_found", g),
            "calls": total("calls", g), "prompt_tokens": total("prompt_tokens", g),
            "wall_s": round(sum(r[g]["wall_s"] for r in figures["slices"]), 1)}
        for g in ("off", "select")
    }
    s = figures["summary"]
    figures["ratios"] = {k: round(s["select"][k] / s["off"][k], 2) if s["off"][k] else None
                         for k in ("calls", "prompt_tokens", "wall_s")}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    figures["load_average_end"] = os.getloadavg()
    if earlier.get("note"):
        figures["note"] = earlier["note"]
    OUT.write_text(json.dumps(figures, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    from rich.console import Console
    from rich.table import Table

    table = Table("", "record facts found", "summary sentences supported", "summary names found",
                  "calls", "prompt tokens", "wall s", title="grounding on 5 texts, embedded model")
    for g in ("off", "select"):
        row = s[g]
        table.add_row("before (off)" if g == "off" else "after (select)",
                      str(row["record_facts_found"]), str(row["summary_supported"]),
                      str(row["summary_names_found"]), str(row["calls"]), f"{row['prompt_tokens']:,}",
                      str(row["wall_s"]))
    Console().print(table)
    print("after/before:", figures["ratios"])
    for w in figures["whole"]:
        print(f"{w['what']}: {w['tokens']:,} tokens, {w['calls']} calls, {w['wall_s']} s")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
