"""Sandbox benchmark: what running model code out of process costs. Start-up (empty, and
with a whole book as ``context``), per-block overhead of a trivial block, one handler
round trip, a restart after a kill, and 64 handler calls in one block; medians over
repeats. Writes bench/results/sandbox.json.

    .venv/bin/python bench/sandbox.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines._sandbox import Sandbox, SandboxLimits  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "books"


def _median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 3)


def _book() -> str:
    books = sorted(SHARED.glob("*.txt"), key=lambda p: p.stat().st_size)
    if not books:
        return "It was a dark and stormy night. " * 100_000
    text = books[-1].read_text(encoding="utf-8", errors="replace")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "sandbox.json")
    args = parser.parse_args()
    limits = SandboxLimits()
    book = _book()
    results: dict[str, object] = {"machine": platform.platform(), "python": sys.version.split()[0],
                                  "repeats": args.repeats, "book_chars": len(book)}

    starts, starts_book = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        sb = Sandbox(limits=limits)
        starts.append(time.perf_counter() - t)
        sb.close()
        t = time.perf_counter()
        sb = Sandbox(limits=limits, variables={"context": book})
        starts_book.append(time.perf_counter() - t)
        sb.close()
    results["startup_ms"] = _median_ms(starts)
    results["startup_with_book_ms"] = _median_ms(starts_book)

    calls = 0

    def llm_query(prompt: str) -> str:
        nonlocal calls
        calls += 1
        return prompt.upper()

    with Sandbox({"llm_query": llm_query}, limits=limits, variables={"context": book}) as sb:
        results["layers"] = sb.layers
        sb.run("x = 0")
        trivial, call, many, slice_ = [], [], [], []
        for _ in range(args.repeats * 5):
            t = time.perf_counter()
            sb.run("x += 1")
            trivial.append(time.perf_counter() - t)
            t = time.perf_counter()
            sb.run("r = llm_query('hi')")
            call.append(time.perf_counter() - t)
        for _ in range(args.repeats):
            t = time.perf_counter()
            sb.run("rs = [llm_query(str(i)) for i in range(64)]")
            many.append(time.perf_counter() - t)
            t = time.perf_counter()
            sb.run("part = context[:200_000]\nprint(len(part))")
            slice_.append(time.perf_counter() - t)
        results["block_overhead_ms"] = _median_ms(trivial)
        results["block_with_one_call_ms"] = _median_ms(call)
        results["handler_round_trip_ms"] = round(results["block_with_one_call_ms"]
                                                 - results["block_overhead_ms"], 3)
        results["block_with_64_calls_ms"] = _median_ms(many)
        results["block_slicing_200k_chars_of_book_ms"] = _median_ms(slice_)

        restarts = []
        for _ in range(max(3, args.repeats // 4)):
            t = time.perf_counter()
            ex = sb.run("import os\nos._exit(1)")
            restarts.append(time.perf_counter() - t)
            assert ex.restarted
        results["restart_with_book_ms"] = _median_ms(restarts)

    for key, value in results.items():
        if key != "layers":
            print(f"{key:40s} {value}")
    print(f"{'layers':40s} {', '.join(k for k, v in results['layers'].items() if v is True)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
