"""Batch benchmark: 50 questions over the shared books with the scripted model at a fixed
latency L and capacity C. The wall time against the floor 50·L/C (every call in flight
the moment a slot frees), the orchestration cost alone (L = 0), and the cost of a batch
run again: finished (0 model calls wanted) and interrupted half-way (only what was not
finished is asked again).

    .venv/bin/python bench/batch.py                      # L = 0.5, 1, 2 s; C = 8; 50 items (~1 min)
    .venv/bin/python bench/batch.py --embedder minilm    # real query embeddings per item
    .venv/bin/python bench/batch.py --latency 5          # one latency

Prints figures and writes bench/results/batch.json. The model is scripted, so only the
batch machinery is timed (retrieval, runs, call log, output); the machine's load average
is recorded beside the figures, which vary with the other work on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get("TOMES_SHARED_DATA", ROOT.parent / "shared" / "data"))
BOOKS = ["pride_and_prejudice.txt", "frankenstein.txt", "the_great_gatsby.txt"]


def log(msg: str) -> None:
    print(msg, flush=True)


def questions(docs: dict[int, str], n: int, seed: int = 7) -> list[dict]:
    """Factual-looking questions about a name in a random passage of each book in turn."""
    from app.api import Tomes

    rng = random.Random(seed)
    items = []
    chunks = {d: Tomes().document(d)["chunks"] for d in docs}
    used: set[str] = set()  # distinct questions: no item is another's cache hit
    for i in range(n):
        doc = list(docs)[i % len(docs)]
        name = None
        while name is None or name in used:
            words = re.findall(r"\b[A-Z][a-z]{3,}\b", rng.choice(chunks[doc])["text"])
            name = rng.choice(words) if words else None
        used.add(name)
        items.append({"custom_id": f"q{i:03d}", "target": doc,
                      "question": f"What does the text say about {name}?",
                      "strategy": "rag", "options": {"k": 4}})
    return items


def backend(latency: float, capacity: int):
    from serving.backends.scripted import ScriptedBackend

    return ScriptedBackend([json.dumps({"answer": "It says little.", "passages": [1]})],
                           latency=latency, capacity=capacity)


def timed_batch(items, out: Path, latency: float, capacity: int, **kwargs):
    from app.api import Tomes
    from serving.lm import LM

    b = backend(latency, capacity)
    started = time.perf_counter()
    # No response cache: every item's call is timed, whatever ran before it.
    report = Tomes().batch(items, out, lm=LM(b, cache=False), **kwargs)
    return report, time.perf_counter() - started, b


def interrupted(items, out: Path, latency: float, capacity: int, stop_after: int):
    """Run until ``stop_after`` items are written, then cancel it (a Ctrl-C): the
    batch's in-flight runs are marked interrupted."""
    from app.api import Tomes
    from serving.lm import LM

    b = backend(latency, capacity)

    async def main():
        task = asyncio.ensure_future(Tomes().abatch(items, out, lm=LM(b, cache=False)))
        while not task.done():
            await asyncio.sleep(0.02)
            if out.exists() and len(out.read_text().splitlines()) >= stop_after:
                task.cancel()
                break
        try:
            await task
        except asyncio.CancelledError:
            pass

    asyncio.run(main())
    return len(out.read_text().splitlines()), len(b.requests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=50)
    parser.add_argument("--latency", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    parser.add_argument("--capacity", type=int, default=8)
    parser.add_argument("--embedder", default="hash",
                        help="hash (default: ingest in seconds) or minilm (real query encoding "
                        "per item; embedding the books takes minutes)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "batch.json"))
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="tomes-bench-batch-"))
    os.environ.update(TOMES_HOME=str(home), TOMES_BACKEND="scripted", TOMES_EMBEDDER=args.embedder,
                      HF_HUB_OFFLINE="1")
    from app.api import Tomes

    t = Tomes()
    started = time.perf_counter()
    report = t.ingest([DATA / "books" / b for b in BOOKS], "bench")  # embedded and indexed
    docs = {o.document_id: Path(o.path).name for o in report.outcomes}
    log(f"ingested and indexed {len(docs)} books ({sum(o.chunks for o in report.outcomes)} chunks, "
        f"{args.embedder}) in {time.perf_counter() - started:.1f} s (not timed below)")
    items = questions(docs, args.items)
    C, n = args.capacity, args.items
    results: dict = {"items": n, "capacity": C, "strategy": "rag (k=4, one call per item)",
                     "embedder": args.embedder, "books": list(docs.values()),
                     "load_average": os.getloadavg(), "runs": []}

    # Orchestration alone: the same batch with calls that take no time.
    rep, wall0, b0 = timed_batch(items, home / "zero.jsonl", 0.0, C)
    assert rep.done == n and len(b0.requests) == n, rep.to_dict()
    results["overhead_s"] = round(wall0, 2)
    results["overhead_per_item_ms"] = round(1000 * wall0 / n, 1)
    log(f"L=0: {wall0:.2f} s for {n} items ({1000 * wall0 / n:.0f} ms each of batch machinery)")

    for L in args.latency:
        out = home / f"batch-{L}.jsonl"
        rep, wall, b = timed_batch(items, out, L, C)
        floor = n * L / C
        rounds = -(-n // C) * L  # whole rounds of C calls: what a batch of n cannot beat
        rerun, wall_again, b_again = timed_batch(items, out, L, C)
        entry = {"latency_s": L, "wall_s": round(wall, 2), "floor_s": round(floor, 2),
                 "ratio": round(wall / floor, 3), "whole_rounds_s": round(rounds, 2),
                 "calls": len(b.requests), "max_in_flight": b.max_in_flight,
                 "rerun_wall_s": round(wall_again, 2), "rerun_calls": len(b_again.requests),
                 "rerun_skipped": rerun.skipped, "done": rep.done, "failed": rep.failed}
        results["runs"].append(entry)
        log(f"L={L} s C={C}: wall {wall:.2f} s, floor 50·L/C = {floor:.2f} s -> {wall / floor:.2f}x "
            f"(whole rounds {rounds:.2f} s); {len(b.requests)} calls, at most {b.max_in_flight} in "
            f"flight; run again: {len(b_again.requests)} calls, {rerun.skipped} skipped, "
            f"{wall_again:.2f} s")

    # Interrupted half-way, then resumed: only the unfinished items ask the model again.
    L = args.latency[-1]
    out = home / "interrupted.jsonl"
    written, asked_before = interrupted(items, out, L, C, n // 2)
    rep, wall, b = timed_batch(items, out, L, C)
    results["interrupted"] = {
        "latency_s": L, "written_before_stop": written, "calls_before_stop": asked_before,
        "resume_calls": len(b.requests), "resume_skipped": rep.skipped,
        "resumed_runs": rep.resumed, "resume_wall_s": round(wall, 2),
        "unfinished": n - written,
        "redone_finished": max(0, len(b.requests) - (n - written)),
    }
    log(f"interrupted at {written}/{n} written ({asked_before} calls sent); resumed: "
        f"{len(b.requests)} calls for the {n - written} unfinished, {rep.skipped} skipped, "
        f"{rep.resumed} cut-off runs carried on, {wall:.2f} s")

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
