"""Retrieval benchmark: embedding throughput, keyword rebuild time, search latency at
10k/100k chunks, approximate-index recall, peak memory, and a needle test.

    .venv/bin/python bench/retrieval.py --books 1 --scales 10000      # quick (~2 min)
    .venv/bin/python bench/retrieval.py                              # default (~10 min)
    .venv/bin/python bench/retrieval.py --full                       # all of shared/data

Prints figures and writes them to bench/results/retrieval.json. Timings on a shared
2-core machine vary with the other work on it; the JSON records the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get("TOMES_SHARED_DATA", ROOT.parent / "shared" / "data"))

from bench.needles import NEEDLES, PARAPHRASES, plant  # noqa: E402

PLANTED = NEEDLES + PARAPHRASES

DEFAULT_BOOKS = ["pride_and_prejudice.txt", "frankenstein.txt", "cape_cod.txt", "the_great_gatsby.txt"]


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def log(msg: str) -> None:
    print(msg, flush=True)


# --- real data: embedding throughput, keyword rebuild, needles, recall on real vectors --


def bench_real(args, out: dict) -> None:
    import retrieval
    from app import settings
    from app.api import Tomes
    from retrieval import store_state
    from retrieval.dense import DenseIndex
    from retrieval.embedders import get_embedder
    from retrieval.files import corpus_dir
    from retrieval.keyword import KeywordIndex
    from retrieval.sync import DENSE_FILE

    books_dir = DATA / "books"
    if args.full:
        names = sorted(p.name for p in books_dir.glob("*.txt"))
    else:
        names = DEFAULT_BOOKS[: args.books]
    planted_into = names[: min(4, len(names))]
    rng = random.Random(11)
    work = Path(tempfile.mkdtemp(prefix="tomes-bench-books-"))
    paths = []
    for i, name in enumerate(names):
        text = (books_dir / name).read_text(encoding="utf-8-sig", errors="replace")
        if name in planted_into:
            text = plant(text, [n for j, (n, _) in enumerate(PLANTED) if j % len(planted_into) == i], rng)
        (work / name).write_text(text, encoding="utf-8")
        paths.append(work / name)
    if args.full:
        paths += sorted(p for p in (DATA / "docs").iterdir() if p.is_file())
    chars = sum(p.stat().st_size for p in paths)

    tomes = Tomes(embedder="minilm")
    t = time.perf_counter()
    report = tomes.ingest(paths, "bench", embed=False)
    ingest_s = time.perf_counter() - t
    n_chunks = sum(o.chunks for o in report.added)
    log(f"ingested {len(report.added)} files, {chars/1e6:.1f} MB, {n_chunks} chunks in {ingest_s:.1f}s "
        f"(failed: {[o.path for o in report.failed]})")

    with settings.override(embedder="minilm"):
        t = time.perf_counter()
        emb = get_embedder()
        load_s = time.perf_counter() - t
        # Estimate first: the CPU is shared, and the full set takes a while.
        sample = [c["text"] for c in tomes.document(report.added[0].document_id)["chunks"][:16]]
        t = time.perf_counter()
        windows = [w for s in sample for w in emb.windows(s)]
        emb.encode(windows)
        rate = len(sample) / (time.perf_counter() - t)
        log(f"model loaded in {load_s:.1f}s; calibration {rate:.1f} chunks/s -> "
            f"estimated {n_chunks / rate / 60:.1f} min to embed {n_chunks} chunks")

        last = [0.0]

        def on_event(e):
            if e.stage == "embed" and e.total and time.perf_counter() - last[0] > 30:
                last[0] = time.perf_counter()
                log(f"  embed {e.done}/{e.total}")

        t = time.perf_counter()
        embedded = retrieval.sync_corpus("bench", on_event=on_event)
        embed_s = time.perf_counter() - t
        status = retrieval.status("bench")
        out["embedding"] = {
            "model": emb.model_id, "files": len(report.added), "mb": round(chars / 1e6, 2),
            "chunks": embedded, "vectors": status["vectors"],
            "seconds": round(embed_s, 1), "chunks_per_s": round(embedded / embed_s, 2),
            "vectors_per_s": round(status["vectors"] / embed_s, 2), "model_load_s": round(load_s, 2),
            "ingest_s_without_embedding": round(ingest_s, 1),
            "chunk_tokens": settings.get_settings().chunk_tokens, "peak_rss_mb": round(peak_mb()),
        }
        log(f"embedded {embedded} chunks ({status['vectors']} vectors) in {embed_s:.1f}s: "
            f"{embedded / embed_s:.1f} chunks/s")

        cid = store_state.corpus_id("bench")
        ids, hashes, texts = store_state.corpus_texts(cid)
        t = time.perf_counter()
        KeywordIndex.build(ids, hashes, texts)
        out["keyword_rebuild_real"] = {"chunks": len(texts), "seconds": round(time.perf_counter() - t, 3)}
        log(f"keyword rebuild: {len(texts)} chunks in {out['keyword_rebuild_real']['seconds']}s")

        # Needles: top-5 (and top-1) hit rate per mode, for questions that keep the
        # fact's names and for pure paraphrases; end-to-end query latency.
        rates, latencies = {}, {}
        # "hybrid" fuses by reciprocal rank (the default), "hybrid_score" by relative score.
        for name in ("dense", "keyword", "hybrid", "hybrid_score"):
            mode, fusion = name.split("_")[0], ("score" if name.endswith("_score") else "rrf")
            rates[name] = {}
            lat = []
            for label, planted in (("", NEEDLES), ("paraphrase_", PARAPHRASES)):
                top5 = top1 = 0
                for needle, question in planted:
                    t = time.perf_counter()
                    with settings.override(fusion=fusion):
                        hits = retrieval.search("bench", question, k=5, mode=mode)
                    lat.append((time.perf_counter() - t) * 1000)
                    ok = [needle[:60] in h.text or needle[-60:] in h.text for h in hits]
                    top5 += any(ok)
                    top1 += bool(ok and ok[0])
                rates[name][f"{label}top5"] = top5 / len(planted)
                rates[name][f"{label}top1"] = top1 / len(planted)
            latencies[name] = {"p50_ms": round(pct(lat, 0.5), 1), "p95_ms": round(pct(lat, 0.95), 1)}
        out["needles"] = {"needles": len(NEEDLES), "paraphrases": len(PARAPHRASES),
                          "books_planted": planted_into, "corpus_chunks": len(texts),
                          "hit_rate": rates}
        out["search_latency_real"] = {"chunks": len(texts), **latencies}
        log("needles (top5/top1): " + ", ".join(f"{m} {r['top5']:.2f}/{r['top1']:.2f}" for m, r in rates.items()))
        log("paraphrases (top5/top1): " + ", ".join(
            f"{m} {r['paraphrase_top5']:.2f}/{r['paraphrase_top1']:.2f}" for m, r in rates.items()))
        log(f"end-to-end search latency at {len(texts)} chunks: {latencies}")

        # Approximate index on real embeddings (forced IVF at this size) vs exact.
        dense = DenseIndex.load(corpus_dir(cid, "bench") / DENSE_FILE, "bench")
        vectors, vec_ids = dense._all_vectors()
        queries = emb.encode([q for _, q in NEEDLES]
                             + random.Random(3).sample([t[:500] for t in texts], min(180, len(texts))))
        out["ivf_recall_real"] = ivf_recall(vectors, vec_ids, queries, [4, 8, 16, 32, 64])
        log(f"IVF recall@10 on real vectors ({len(vectors)}): {out['ivf_recall_real']['by_nprobe']}")


def ivf_recall(vectors, ids, queries, nprobes, k: int = 10) -> dict:
    """recall@k (in chunks) of IVF against the exact index, and per-query latency."""
    import numpy as np

    from retrieval.dense import DenseIndex, _trained_ivf

    exact = DenseIndex.new("m", vectors.shape[1])
    exact.add(vectors, ids, np.zeros(len(ids), np.int64))
    t = time.perf_counter()
    approx = DenseIndex(_trained_ivf(vectors, vectors.shape[1]), np.zeros(0, np.int64),
                        np.zeros(0, np.int64), "m", vectors.shape[1], "ivf", len(vectors))
    approx.add(vectors, ids, np.zeros(len(ids), np.int64))
    build_s = time.perf_counter() - t
    truth = [{c for c, _ in exact.search(q, k)} for q in queries]
    by_nprobe = {}
    for nprobe in nprobes:
        lat, found = [], 0
        for q, want in zip(queries, truth):
            t = time.perf_counter()
            got = approx.search(q, k, nprobe=nprobe)
            lat.append((time.perf_counter() - t) * 1000)
            found += len(want & {c for c, _ in got})
        by_nprobe[nprobe] = {"recall": round(found / sum(len(w) for w in truth), 4),
                             "p50_ms": round(pct(lat, 0.5), 3), "p95_ms": round(pct(lat, 0.95), 3)}
    nlist = approx.index.nlist if hasattr(approx.index, "nlist") else None
    return {"vectors": len(vectors), "nlist": nlist, "build_s": round(build_s, 2), "by_nprobe": by_nprobe}


# --- synthetic scale: latency, recall, keyword rebuild, end to end ------------------------


def clustered_vectors(n: int, dim: int, rng, clusters: int = 500):
    """Normalized vectors around random topic centres: closer to real embeddings than
    uniform noise (which is the worst case for any approximate index)."""
    import numpy as np

    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    x = centres[rng.integers(0, clusters, size=n)] + 0.9 * rng.normal(size=(n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def bench_scale(n: int, args, out: dict) -> None:
    import numpy as np
    from sqlalchemy import insert

    import retrieval
    from app import settings
    from app.store import Chunk, Corpus, Document, session_scope
    from retrieval.dense import DenseIndex
    from retrieval.embedders import get_embedder
    from retrieval.files import corpus_dir
    from retrieval.sync import DENSE_FILE

    dim = 384
    rng = np.random.default_rng(n)
    log(f"--- {n} chunks (synthetic) ---")
    vectors = clustered_vectors(n, dim, rng)
    queries = vectors[rng.choice(n, 200, replace=False)] + 0.3 * rng.normal(size=(200, dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    ids = np.arange(1, n + 1, dtype=np.int64)
    result: dict = {"chunks": n}

    exact = DenseIndex.new("m", dim)
    t = time.perf_counter()
    exact.add(vectors, ids, np.zeros(n, np.int64))
    result["flat_build_s"] = round(time.perf_counter() - t, 2)
    lat = []
    for q in queries:
        t = time.perf_counter()
        exact.search(q, 10)
        lat.append((time.perf_counter() - t) * 1000)
    result["flat_search"] = {"p50_ms": round(pct(lat, 0.5), 2), "p95_ms": round(pct(lat, 0.95), 2)}
    log(f"exact: p50 {result['flat_search']['p50_ms']} ms, p95 {result['flat_search']['p95_ms']} ms")
    result["ivf"] = ivf_recall(vectors, ids, queries, [4, 8, 16, 32, 64])
    log(f"IVF (nlist {result['ivf']['nlist']}, built in {result['ivf']['build_s']}s): "
        + ", ".join(f"nprobe {p}: recall {v['recall']:.3f}, p50 {v['p50_ms']} ms"
                    for p, v in result["ivf"]["by_nprobe"].items()))

    if args.e2e:
        # The whole path: store state check, query embedding, both indexes, fusion, rows.
        words = (DATA / "books" / "emma.txt").read_text(encoding="utf-8-sig").split()
        texts = [" ".join(words[j : j + 120]) for j in rng.integers(0, len(words) - 120, size=n)]
        corpus = f"synthetic-{n}"
        with session_scope() as s:
            corpus_row = Corpus(name=corpus)
            s.add(corpus_row)
            s.flush()
            doc = Document(corpus_id=corpus_row.id, title=corpus, source="synthetic", format="txt",
                           text="", content_hash=f"synthetic-{n}")
            s.add(doc)
            s.flush()
            cid, doc_id = corpus_row.id, doc.id
        hashes = [f"{j:064x}" for j in range(n)]
        with session_scope() as s:
            s.execute(insert(Chunk), [
                {"document_id": doc_id, "ordinal": j, "start": 0, "end": 0, "text": texts[j],
                 "n_tokens": 150, "content_hash": hashes[j]} for j in range(n)
            ])
        chunk_ids, chunk_fps = retrieval.store_state.chunk_state(cid)
        model = get_embedder("minilm")
        dense = DenseIndex.new(model.model_id, dim)
        dense.add(vectors, chunk_ids, chunk_fps)
        dense.rebalance(settings.get_settings().ann_threshold)
        dense.save(corpus_dir(cid, corpus) / DENSE_FILE)
        t = time.perf_counter()
        retrieval.sync_corpus(corpus, embed_missing=False)  # builds the keyword index
        result["keyword_rebuild_s"] = round(time.perf_counter() - t, 2)
        log(f"keyword rebuild (sync) of {n} chunks: {result['keyword_rebuild_s']}s")
        qtexts = [q for _, q in NEEDLES] * 3
        with settings.override(embedder="minilm"):
            retrieval.search(corpus, "warm up", k=10)
            for mode in ("dense", "keyword", "hybrid"):
                lat = []
                for q in qtexts:
                    t = time.perf_counter()
                    retrieval.search(corpus, q, k=10, mode=mode)
                    lat.append((time.perf_counter() - t) * 1000)
                result[f"e2e_{mode}"] = {"p50_ms": round(pct(lat, 0.5), 1), "p95_ms": round(pct(lat, 0.95), 1)}
            t = time.perf_counter()
            for _ in range(5):
                retrieval.store_state.chunk_state(cid)
            result["store_state_check_ms"] = round((time.perf_counter() - t) / 5 * 1000, 1)
        result["dense_kind"] = dense.kind
        log(f"end-to-end ({dense.kind}): " + ", ".join(
            f"{m} p50 {result[f'e2e_{m}']['p50_ms']} / p95 {result[f'e2e_{m}']['p95_ms']} ms"
            for m in ("dense", "keyword", "hybrid")) + f"; store check {result['store_state_check_ms']} ms")
    result["peak_rss_mb"] = round(peak_mb())
    out.setdefault("scale", {})[str(n)] = result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--books", type=int, default=4, help="books to ingest (needles go into up to 4)")
    ap.add_argument("--full", action="store_true", help="every book and document in shared/data")
    ap.add_argument("--scales", type=int, nargs="*", default=[10_000, 100_000])
    ap.add_argument("--no-real", action="store_true", help="skip the real-data part")
    ap.add_argument("--no-e2e", dest="e2e", action="store_false", help="skip end-to-end at scale")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "retrieval.json")
    args = ap.parse_args()

    os.environ["TOMES_HOME"] = tempfile.mkdtemp(prefix="tomes-bench-")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOMES_BACKEND", "scripted")  # no chat model is needed here
    out: dict = {"load_avg_start": os.getloadavg(), "cpus": os.cpu_count(),
                 "note": "2-core machine shared with other work; timings are indicative"}
    t0 = time.perf_counter()
    if not args.no_real:
        bench_real(args, out)
    for n in args.scales:
        bench_scale(n, args, out)
    out["peak_rss_mb"] = round(peak_mb())
    out["load_avg_end"] = os.getloadavg()
    out["total_s"] = round(time.perf_counter() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    log(f"peak RSS {out['peak_rss_mb']} MB; total {out['total_s']}s; wrote {args.out}")


if __name__ == "__main__":
    main()
