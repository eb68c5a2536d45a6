"""Strategies on one book with the embedded model (SmolLM2-135M on the CPU): for each of
direct, rag, mapreduce and auto, ten questions about *A Modest Proposal* (about 4,700
tokens: it fits the 8,192-token window, so every strategy can run on it) - the calls,
prompt and completion tokens, wall time, and how many answers hold the expected word.

Each strategy's questions run as one batch (`Tomes.batch`, the backend's two parallel
slots). The response cache is on, so auto - which chooses direct for a book that fits -
is served from direct's calls; its figures are then what choosing cost, and its real
cost is the chosen strategy's (the JSON says which it chose and why).

    .venv/bin/python bench/strategies.py                       # ~10-20 min on 2 cores
    .venv/bin/python bench/strategies.py --questions 3 --strategies direct rag

Prints figures and writes bench/results/strategies.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get("TOMES_SHARED_DATA", ROOT.parent / "shared" / "data"))
BOOK = "a_modest_proposal.txt"

# (question, a pattern the right answer holds)
QUESTIONS = [
    ("At what age does the author propose that children be sold?", r"\byear|\bone\b|\b1\b"),
    ("How many children of poor parents are born annually?", r"hundred and twenty|120,?000"),
    ("How many of the children does the author reserve for breed?", r"twenty thousand|20,?000"),
    ("Who assured the author that a young healthy child is wholesome food?", r"american"),
    ("How much will a child weigh at a solar year, well nursed?", r"twenty.eight|\b28\b"),
    ("What price does the author think a gentleman would give for a good fat child?",
     r"ten shillings|\b10\b"),
    ("Which island does Psalmanazar, the native the author mentions, come from?", r"formosa"),
    ("What may the skin of the children be made into?", r"glove|boot"),
    ("Until what age can children seldom pick up a livelihood by stealing?", r"\bsix\b|\b6\b"),
    ("How old is the author's youngest child?", r"\bnine\b|\b9\b"),
]
STRATEGIES = ["direct", "rag", "mapreduce", "auto"]


def log(msg: str) -> None:
    print(msg, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=len(QUESTIONS))
    parser.add_argument("--strategies", nargs="+", default=STRATEGIES, choices=STRATEGIES)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "strategies.json"))
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="tomes-bench-strategies-"))
    os.environ.update(TOMES_HOME=str(home), HF_HUB_OFFLINE="1")
    from app.api import Tomes

    tomes = Tomes(backend="embedded")
    report = tomes.ingest([DATA / "books" / BOOK], "bench")
    doc = (report.added or report.skipped)[0].document_id
    info = tomes.document(doc, with_chunks=False)
    lm = tomes.lm()
    questions = QUESTIONS[: args.questions]
    results: dict = {"book": BOOK, "chunks": info["chunks"], "tokens": info["tokens"],
                     "model": lm.model, "window": lm.context_window, "slots": lm.capacity,
                     "questions": len(questions), "load_average_start": os.getloadavg(),
                     "strategies": {}}
    earlier = Path(args.out)
    if earlier.exists() and set(args.strategies) != set(STRATEGIES):
        # A run of some strategies keeps the others' earlier figures (each says when and
        # under what load it was measured).
        old = json.loads(earlier.read_text())
        results["strategies"] = {k: v for k, v in old.get("strategies", {}).items()
                                 if k not in args.strategies}
    log(f"{BOOK}: {info['chunks']} chunks, {info['tokens']:,} tokens; {lm.model}, "
        f"{lm.context_window:,}-token window, {lm.capacity} slots")
    for strategy in args.strategies:
        items = [{"custom_id": f"{strategy}-{i}", "target": doc, "question": q,
                  "strategy": strategy} for i, (q, _) in enumerate(questions)]
        started = time.perf_counter()
        batch = tomes.batch(items, home / f"{strategy}.jsonl")
        wall = time.perf_counter() - started
        records = [r for r in batch.records if r["status"] == "done"]
        right = sum(bool(re.search(pattern, r["answer"], re.I))
                    for r, (_, pattern) in zip(records, questions))
        chosen: dict[str, int] = {}
        for r in records:
            chosen[r["strategy"]] = chosen.get(r["strategy"], 0) + 1
        entry = {
            "done": batch.done, "failed": batch.failed, "calls": batch.calls,
            "cache_hits": batch.cache_hits, "prompt_tokens": batch.prompt_tokens,
            "completion_tokens": batch.completion_tokens, "wall_s": round(wall, 1),
            "wall_per_question_s": round(wall / max(1, len(questions)), 1),
            "answers_with_expected_word": right, "chosen": chosen,
            "why": sorted({r["why"] for r in records if r.get("why")}),
            "errors": [r["error"] for r in batch.records if r["status"] != "done"][:3],
            "answers": [r["answer"][:160] for r in records],
            "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "load_average": os.getloadavg(),
        }
        results["strategies"][strategy] = entry
        log(f"{strategy:>9}: {batch.calls} calls (+{batch.cache_hits} cached), "
            f"{batch.prompt_tokens:,} prompt + {batch.completion_tokens:,} completion tokens, "
            f"{wall:.0f} s ({wall / max(1, len(questions)):.0f} s a question), "
            f"{right}/{len(questions)} with the expected word"
            + (f"; chose {chosen}" if strategy == "auto" else "")
            + (f"; {batch.failed} failed: {entry['errors'][0]}" if batch.failed else ""))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        results["load_average_end"] = os.getloadavg()
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")  # after each: partial ok
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
