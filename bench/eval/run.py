"""The committed evaluation: a grid of tasks x strategies x lengths on one backend, into
bench/results/eval/ (cases.jsonl, summary.json, table.md, one PNG per task).

    .venv/bin/python bench/eval/run.py                      # what is committed (embedded, CPU)
    .venv/bin/python bench/eval/run.py --backend openai --tasks all \
        --strategies direct,rag,mapreduce,recursive,memory --lengths 4k,8k,16k,32k --n 10 \
        --out bench/results/eval-gpu                       # the issue's full grid, on a GPU

Run again with the same --out to carry on: finished cases are kept, cut-off runs resume.
Every figure comes from the command line and the seed (the tasks are seeded generators).
The runs go into the store of TOMES_HOME (default: $TMPDIR/tomes-<out name>-home, so a
measurement never mixes with a user's runs or their response cache).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

DEFAULTS = {"tasks": "niah_single_2,niah_books,aggregation,episodic",
            "strategies": "direct,rag,mapreduce,recursive,memory", "lengths": "2k,4k", "n": 2}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=DEFAULTS["tasks"], help="names or groups (ruler, niah, all)")
    parser.add_argument("--strategies", default=DEFAULTS["strategies"])
    parser.add_argument("--lengths", default=DEFAULTS["lengths"])
    parser.add_argument("--n", type=int, default=DEFAULTS["n"], help="cases per task and length")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default="embedded")
    parser.add_argument("--model", default=None)
    parser.add_argument("--base-url", default=None)
    parser.add_argument("--concurrency", type=int, default=None)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "eval"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    # Outside the repository: the store is not a result to commit.
    os.environ.setdefault("TOMES_HOME", str(Path(tempfile.gettempdir()) / f"tomes-{out.name}-home"))

    from app.api import Tomes

    tomes = Tomes(backend=args.backend, model=args.model, base_url=args.base_url)
    started = time.perf_counter()

    def progress(event) -> None:
        if event.stage == "eval":
            print(f"[{time.perf_counter() - started:7.0f}s] {event.done}/{event.total} "
                  f"{event.message}", flush=True)

    command = "python bench/eval/run.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    report = tomes.eval(args.tasks, strategies=args.strategies.split(","), lengths=args.lengths,
                        n=args.n, seed=args.seed, out=out, concurrency=args.concurrency,
                        on_event=progress, meta={"command": command.strip()})
    print((out / "table.md").read_text(encoding="utf-8"))
    print(f"{report.done} cases run ({report.failed} failed), {report.skipped} already done; "
          f"{report.elapsed_s:.0f} s; files: {', '.join(Path(f).name for f in report.files)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
