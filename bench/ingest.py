"""Ingest benchmark: every file of the sample data into a fresh store, without embedding
(the retrieval benchmark measures that). Prints documents, chunks, throughput, where the
time goes (read / chunk / store) and peak memory; writes bench/results/ingest.json.

    .venv/bin/python bench/ingest.py                    # the embedded model's tokenizer
    .venv/bin/python bench/ingest.py --backend scripted # approximate counting only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path,
                        default=Path(os.environ.get("TOMES_SHARED_DATA", ROOT.parent / "shared" / "data")))
    parser.add_argument("--backend", default="embedded", help="whose tokenizer counts (default: embedded)")
    parser.add_argument("--chunk-tokens", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ingest.json")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # The converted tokenizer is costly to rebuild and safe to share between runs.
    os.environ.setdefault("TOMES_CACHE_DIR", str(ROOT / "bench" / "results" / "cache"))

    from app.api import Tomes
    from app.ingest import service
    from app.ingest.readers import SUPPORTED_SUFFIXES
    from app.settings import override
    from serving.tokenizers import active_tokenizer

    files = sorted(p for p in args.data.rglob("*") if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES)
    total_bytes = sum(p.stat().st_size for p in files)

    with tempfile.TemporaryDirectory(prefix="tomes-bench-") as home, \
            override(home=home, backend=args.backend, chunk_tokens=args.chunk_tokens,
                     chunk_overlap=args.overlap):
        t0 = time.perf_counter()
        tokenizer = active_tokenizer()
        tokenizer_load_s = time.perf_counter() - t0
        tokenizer.count_many(["warm up"])

        # Time the stages by wrapping what the service calls.
        spent = {"read": 0.0, "chunk": 0.0}
        per_file: dict[str, dict] = {}

        def timed(stage, fn):
            def wrapper(*a, **kw):
                start = time.perf_counter()
                try:
                    return fn(*a, **kw)
                finally:
                    spent[stage] += time.perf_counter() - start
            return wrapper

        service.read_file = timed("read", service.read_file)
        service.chunk_text = timed("chunk", service.chunk_text)
        marks: list[tuple[float, str]] = []

        def on_event(event) -> None:
            if event.stage == "read":
                marks.append((time.perf_counter(), event.message))

        rss_before = _rss_mb()
        start = time.perf_counter()
        report = Tomes().ingest(files, "bench", embed=False, on_event=on_event)
        seconds = time.perf_counter() - start
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux

        for (t_a, name), (t_b, _) in zip(marks, marks[1:]):
            per_file[name] = {"seconds": round(t_b - t_a, 3)}
        docs = Tomes().documents("bench")
        for path in files:
            size = path.stat().st_size
            entry = per_file.setdefault(path.name, {})
            entry["mb"] = round(size / 2**20, 3)
            if entry.get("seconds"):
                entry["mb_per_s"] = round(size / 2**20 / entry["seconds"], 3)
        for d in docs:
            entry = per_file.get(Path(d["source"]).name, {})
            entry.update(chunks=d["chunks"], tokens=d["tokens"], chars=d["chars"], title=d["title"])

    figures = {
        "tokenizer": getattr(tokenizer, "name", type(tokenizer).__name__),
        "tokenizer_approximate": getattr(tokenizer, "name", "") == "approx",
        "tokenizer_load_s": round(tokenizer_load_s, 2),
        "chunk_tokens": args.chunk_tokens,
        "overlap": args.overlap,
        "files": len(files),
        "documents": len(report.added),
        "failed": [o.error for o in report.failed],
        "chunks": sum(d["chunks"] for d in docs),
        "tokens": sum(d["tokens"] for d in docs),
        "mb": round(total_bytes / 2**20, 2),
        "seconds": round(seconds, 2),
        "mb_per_s": round(total_bytes / 2**20 / seconds, 3),
        "read_s": round(spent["read"], 2),
        "chunk_s": round(spent["chunk"], 2),
        "store_s": round(seconds - spent["read"] - spent["chunk"], 2),
        "rss_before_mb": round(rss_before, 1),
        "peak_rss_mb": round(peak_rss, 1),
        "per_file": per_file,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "note": "2-core machine shared with other work: timings are indicative",
    }
    print(f"tokenizer      {figures['tokenizer']} (loaded in {figures['tokenizer_load_s']} s)")
    print(f"documents      {figures['documents']} of {figures['files']} files"
          + (f", {len(figures['failed'])} failed" if figures["failed"] else ""))
    print(f"chunks         {figures['chunks']:,} ({figures['tokens']:,} tokens, budget {args.chunk_tokens})")
    print(f"throughput     {figures['mb']} MB in {figures['seconds']} s = {figures['mb_per_s']} MB/s")
    print(f"  read         {figures['read_s']} s")
    print(f"  chunk        {figures['chunk_s']} s (token counting included)")
    print(f"  store        {figures['store_s']} s")
    print(f"peak memory    {figures['peak_rss_mb']} MB RSS (before ingest: {figures['rss_before_mb']} MB)")
    for name, entry in sorted(per_file.items()):
        print(f"  {name:34} {entry.get('mb', 0):6.2f} MB {entry.get('seconds', 0):6.2f} s "
              f"{entry.get('chunks', 0):5} chunks")
    for error in figures["failed"]:
        print(f"  failed: {error}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
