"""What keeping embedding progress costs (issue 9): a sync journals each batch as it is
embedded (retrieval/_journal.py) instead of rewriting the dense index file.

Embeds the same 512 chunks (batches of 32) into indexes that already hold 0, 10k and 65k
vectors (0, ~15 MB, ~100 MB at 384 dims) three ways, side by side in one run:
  none     no saves until the end (what the 60 s interval meant for the first minute:
           a kill lost it all);
  journal  what sync does now (append each batch, ~50 KB + fsync);
  rewrite  rewrite the index file after every batch (the obvious way).
The embedder is the hash embedder plus a fixed sleep per batch standing in for a real
model's compute (--batch-seconds; MiniLM on these 2 cores: ~0.5 s per 32 chunks).
Prints each policy's time and its ratio to "none"; writes bench/results/embed_saves.json.

    .venv/bin/python bench/embed_saves.py [--batch-seconds 0.5] [--chunks 512]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-seconds", type=float, default=0.5)
    parser.add_argument("--chunks", type=int, default=512)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "embed_saves.json")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="tomes-embed-saves-"))
    os.environ.update(TOMES_HOME=str(home), TOMES_EMBEDDER="hash", TOMES_BACKEND="scripted",
                      TOMES_CACHE_DIR=str(home / "cache"), HF_HUB_OFFLINE="1")
    import numpy as np

    from app import settings
    from app.api import Tomes
    from app.events import ignore
    from retrieval import _journal, store_state, sync
    from retrieval.dense import DenseIndex
    from retrieval.embedders import HashEmbedder

    class Timed(HashEmbedder):
        def __init__(self) -> None:
            super().__init__(dim=384)

        def encode(self, texts, *, batch_size=32):
            time.sleep(args.batch_seconds)
            return super().encode(texts, batch_size=batch_size)

    settings.reset()
    book = home / "book.txt"
    book.write_text("\n\n".join(f"Note {i}: " + "the mill and the river and the valley " * 5
                                for i in range(args.chunks)))
    with settings.override(chunk_tokens=60):
        Tomes().ingest([book], "c", embed=False)
    cid = store_state.corpus_id("c")
    ids, _ = store_state.chunk_state(cid)
    ids = ids[: args.chunks]
    embedder = Timed()
    rng = np.random.default_rng(1)
    policies = {
        "none": dict(CHECKPOINT_SECONDS=float("inf"), JOURNAL_RATIO=float("inf")),
        "journal": dict(CHECKPOINT_SECONDS=sync.CHECKPOINT_SECONDS, JOURNAL_RATIO=sync.JOURNAL_RATIO),
        "rewrite": dict(CHECKPOINT_SECONDS=0.0, REWRITE_RATIO=0.0, JOURNAL_RATIO=float("inf")),
    }
    saved = {k: getattr(sync, k) for k in ("CHECKPOINT_SECONDS", "JOURNAL_RATIO", "REWRITE_RATIO")}
    rows = []
    for base in (0, 10_000, 65_000):
        vectors = rng.random((base, 384), dtype=np.float32)
        row = {"base_vectors": base}
        for name, knobs in policies.items():
            path = home / f"dense-{base}-{name}.npz"
            dense = DenseIndex.new(embedder.model_id, embedder.dim)
            dense.add(vectors, -1 - np.arange(base), np.zeros(base, np.int64))  # ids no chunk has
            dense.save(path)
            row["file_mb"] = round(path.stat().st_size / 1e6, 1)
            for k, v in {**saved, **knobs}.items():
                setattr(sync, k, v)
            journal = _journal.Journal(path)
            started = time.perf_counter()
            sync._embed(dense, embedder, ids, path, "c", ignore, journal, batch=32)
            row[f"{name}_s"] = round(time.perf_counter() - started, 2)
            row[f"{name}_journal_kb"] = round(journal.path.stat().st_size / 1e3, 1) if journal.exists() else 0
            journal.discard()
        for k, v in saved.items():
            setattr(sync, k, v)
        row["journal_vs_none"] = round(row["journal_s"] / row["none_s"], 3)
        row["rewrite_vs_none"] = round(row["rewrite_s"] / row["none_s"], 3)
        rows.append(row)
        print(f"{base:>6,} vectors ({row['file_mb']:>5} MB): none {row['none_s']:.2f} s, "
              f"journal {row['journal_s']:.2f} s (x{row['journal_vs_none']}), "
              f"rewrite every batch {row['rewrite_s']:.2f} s (x{row['rewrite_vs_none']})")
    result = {"machine": platform.platform(), "cpus": os.cpu_count(),
              "load_average": round(os.getloadavg()[0], 2), "chunks": len(ids), "batch": 32,
              "batch_seconds": args.batch_seconds, "journal_ratio": sync.JOURNAL_RATIO,
              "rewrite_ratio": sync.REWRITE_RATIO, "checkpoint_seconds": sync.CHECKPOINT_SECONDS,
              "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
