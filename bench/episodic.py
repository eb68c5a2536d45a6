"""Episodic memory against top-k chunk retrieval on an EpBench-style generated book.

    .venv/bin/python bench/episodic.py                 # scripted operator (ground truth)
    .venv/bin/python bench/episodic.py --real          # also the real embedded model

Scripted: the operator replies with the generator's ground truth for the chapters in its
passage, so what is measured is the reconciler and the query; both arms are read by the
same deterministic reader (below) through the same tokenizer (SmolLM2's), so the
difference is the context each gives. Retrieval: hybrid search (MiniLM + BM25, the
project's defaults), top k chunks in story order. Real: SmolLM2-135M builds the
workspace and answers in both arms, on a smaller book; its figures are what they are.

Prints a table and writes bench/results/episodic.json.
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
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.epbench_gen import Book, candidates, generate  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "episodic.json"


# --- the reader ---------------------------------------------------------------------------


def _words(text: str) -> set[str]:
    from memory._text import content_words

    return content_words(text)


def _units(context: str) -> list[str]:
    """Notes are lines; passages are sentences."""
    out: list[str] = []
    for line in context.splitlines():
        out += [s for s in re.split(r"(?<=[.!?])\s+", line) if s.strip()]
    return out


def read(context: str, question: str, kind: str, pool: list[str]) -> Any:
    """A deterministic extractive reader: the answer of the question's kind that sits in
    the context unit sharing the most words with the question (for the latest role, the
    last such unit; for an entity's places, every unit naming it)."""
    units = _units(context)
    person = re.search(r"(?:of|was|did) ([A-Z][a-z]+ [A-Z][a-z]+)", question)
    name = person.group(1) if person else ""
    if kind == "entity_places":
        found = {c for u in units if name and name in u for c in pool if c in u}
        return sorted(found)
    want = _words(question)
    best, best_score = None, -1
    for i, unit in enumerate(units):
        hits = [c for c in pool if c in unit and c not in question]
        if not hits:
            continue
        score = len(want & _words(unit))
        if kind == "latest_role" and name and name in unit:
            score += 100 + i  # the latest mention wins
        if score > best_score:
            best, best_score = hits[-1] if kind == "latest_role" else hits[0], score
    return best or ""


def score(kind: str, got: Any, q: dict[str, Any]) -> float:
    if kind == "entity_places":
        gold = set(q["answers"])
        got_set = set(got) if isinstance(got, list) else {c for c in gold if c.lower() in str(got).lower()}
        if not got_set or not gold:
            return 0.0
        tp = len(gold & got_set)
        if not tp:
            return 0.0
        p, r = tp / len(got_set), tp / len(gold)
        return 2 * p * r / (p + r)
    return float(q["answer"].lower() in str(got).lower())


# --- the arms -----------------------------------------------------------------------------


def operator_from_truth(book: Book):
    chapters = {c.number: c for c in book.chapters}

    def reply(request: Any) -> str:
        prompt = request.messages[-1]["content"]
        if prompt.startswith("Passage:"):
            merged: dict[str, list] = {"entities": [], "states": [], "events": [], "questions": []}
            for k in re.findall(r"## Chapter (\d+)", prompt):
                for key, items in chapters[int(k)].truth().items():
                    merged[key] += items
            return json.dumps(merged)
        return ""

    return reply


def run(book: Book, *, real: bool, k: int, home: Path) -> dict[str, Any]:
    os.environ["TOMES_HOME"] = str(home)
    from app import settings

    settings.reset()
    from app.api import Tomes
    from pipelines import episodic
    from retrieval import search
    from serving.backends.scripted import ScriptedBackend
    from serving.lm import LM, get_lm
    from serving.tokenizers import active_tokenizer

    path = home / "epbench.txt"
    path.write_text(book.text, encoding="utf-8")
    with settings.override(backend="embedded"):  # chunks counted in SmolLM2's tokens
        Tomes().ingest([path], "epbench", embed=True)
        tokenizer = active_tokenizer()
    doc = Tomes().documents("epbench")[0]["id"]
    chunks = {c["id"]: c for c in Tomes().document(doc)["chunks"]}
    kinds = {q["question"]: q for q in book.questions}

    if real:
        with settings.override(backend="embedded"):
            lm = get_lm()
    else:
        truth = operator_from_truth(book)

        def scripted(request: Any) -> str:
            prompt = request.messages[-1]["content"]
            if prompt.startswith("Passage:"):
                return truth(request)
            context, _, question = prompt.partition("\n\nQuestion: ")
            q = kinds[question.strip()]
            got = read(context.removeprefix("Notes:\n"), q["question"], q["kind"],
                       candidates(book, q["kind"]))
            text = ", ".join(got) if isinstance(got, list) else got
            return json.dumps({"answer": text or "unknown", "notes": []})

        lm = LM(ScriptedBackend(scripted, tokenizer=tokenizer, context_window=8192))

    started = time.perf_counter()
    built = episodic.build(doc, lm=lm)
    build_s = time.perf_counter() - started
    rows = []
    for q in book.questions:
        t0 = time.perf_counter()
        mem = episodic.ask(doc, q["question"], lm=lm)
        mem_s = time.perf_counter() - t0
        hits = search("epbench", q["question"], k)
        ordered = sorted(hits, key=lambda h: chunks[h.chunk_id]["ordinal"])
        context = "\n\n".join(chunks[h.chunk_id]["text"] for h in ordered)
        t0 = time.perf_counter()
        if real:
            rag_answer = _real_answer(lm, context, q["question"])
        else:
            got = read(context, q["question"], q["kind"], candidates(book, q["kind"]))
            rag_answer = got
        rag_s = time.perf_counter() - t0
        rows.append({
            "kind": q["kind"], "question": q["question"],
            "gold": q.get("answer", q.get("answers")),
            "memory": {"answer": mem.answer, "score": score(q["kind"], mem.answer, q),
                       "context_tokens": mem.details["context_tokens"], "seconds": round(mem_s, 2)},
            "retrieval": {"answer": rag_answer, "score": score(q["kind"], rag_answer, q),
                          "context_tokens": tokenizer.count(context), "seconds": round(rag_s, 2)},
        })
    return {"build": {"calls": built.calls, "cache_hits": built.cache_hits,
                      "prompt_tokens": built.prompt_tokens,
                      "completion_tokens": built.completion_tokens,
                      "seconds": round(build_s, 1), "chunks": len(chunks),
                      "stats": built.details["built"], "counts": built.details["counts"]},
            "questions": rows, "summary": _summary(rows)}


def _real_answer(lm: Any, context: str, question: str) -> str:
    """The retrieval arm with the real model: the same kind of prompt, passages as notes."""
    from memory import _prompts as MP
    from pipelines._structured import ParseError, parse_object

    messages = [{"role": "system", "content": MP.SYSTEM_ANSWER.replace("notes taken while "
                 "reading it. The notes are numbered", "passages of it")},
                {"role": "user", "content": f"Passages:\n{context}\n\nQuestion: {question}"}]
    response = lm.chat(messages, max_tokens=MP.ANSWER_MAX_TOKENS, json_schema=MP.ANSWER_SCHEMA,
                       node="bench-rag")
    try:
        return str(parse_object(response.text).get("answer", ""))
    except ParseError:
        return response.text


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for arm in ("memory", "retrieval"):
        n = len(rows)
        out[arm] = {
            "accuracy": round(sum(r[arm]["score"] for r in rows) / n, 3),
            "context_tokens_mean": round(sum(r[arm]["context_tokens"] for r in rows) / n, 1),
            "by_kind": {},
        }
        for kind in sorted({r["kind"] for r in rows}):
            sub = [r for r in rows if r["kind"] == kind]
            out[arm]["by_kind"][kind] = round(sum(r[arm]["score"] for r in sub) / len(sub), 3)
    out["token_ratio"] = round(out["memory"]["context_tokens_mean"]
                               / max(1.0, out["retrieval"]["context_tokens_mean"]), 3)
    return out


def _print(name: str, result: dict[str, Any]) -> None:
    b, s = result["build"], result["summary"]
    print(f"\n== {name}: {b['chunks']} chunks, build {b['calls']} calls "
          f"({b['prompt_tokens']:,} prompt + {b['completion_tokens']:,} completion tokens, "
          f"{b['seconds']} s)")
    print(f"{'':12} {'accuracy':>9} {'ctx tokens':>11}   by kind")
    for arm in ("memory", "retrieval"):
        kinds = "  ".join(f"{k}={v:.2f}" for k, v in s[arm]["by_kind"].items())
        print(f"{arm:12} {s[arm]['accuracy']:>9.3f} {s[arm]['context_tokens_mean']:>11.1f}   {kinds}")
    print(f"memory/retrieval context tokens: {s['token_ratio']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--chapters", type=int, default=40)
    parser.add_argument("-k", type=int, default=5, help="chunks the retrieval arm reads")
    parser.add_argument("--real", action="store_true", help="also run the real embedded model")
    parser.add_argument("--real-chapters", type=int, default=10)
    parser.add_argument("--real-questions", type=int, default=12)
    args = parser.parse_args()

    out: dict[str, Any] = {"seed": args.seed, "k": args.k}
    book = generate(seed=args.seed, chapters=args.chapters)
    with tempfile.TemporaryDirectory() as home:
        out["scripted"] = run(book, real=False, k=args.k, home=Path(home))
    out["scripted"]["book"] = {"chapters": args.chapters, "questions": len(book.questions)}
    _print("scripted operator", out["scripted"])
    if args.real:
        small = generate(seed=args.seed, chapters=args.real_chapters, filler=4)
        small.questions = small.questions[::max(1, len(small.questions) // args.real_questions)][:args.real_questions]
        with tempfile.TemporaryDirectory() as home:
            out["real"] = run(small, real=True, k=args.k, home=Path(home))
        out["real"]["book"] = {"chapters": args.real_chapters, "questions": len(small.questions)}
        _print("real embedded model (SmolLM2-135M)", out["real"])
    elif RESULTS.exists():
        old = json.loads(RESULTS.read_text())
        if "real" in old:
            out["real"] = old["real"]  # kept from the last --real run
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(f"\nwrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
