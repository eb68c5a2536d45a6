"""The evaluation runner: task x strategy x length x case, each case an ordinary run.

Every case's document is written under ``OUT/docs/`` and ingested into an eval corpus; the
question goes to each strategy through the batch runner (``pipelines.batch``), which
caps calls in flight at the backend's capacity, gives each case a run id derived from
the output folder and the case (so `tomes runs` and the UI show them), and on a second
start skips what finished and resumes what was cut off (``pipelines.resume``). As each
case finishes it is scored (RULER's string match) and its evidence reach read from the
call log, and one line is appended to ``OUT/cases.jsonl``, keyed
``task/strategy/length/seed/index``: a killed eval redoes nothing that finished.
``summary.json``, ``table.md`` and the plots are rebuilt from ``cases.jsonl`` at the end.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from app.errors import TomesError
from app.events import Event, OnEvent, ignore
from pipelines.evaluation import Case, generate, score, task_names
from pipelines.evaluation import reach as _reach

DEFAULT_STRATEGIES = ("direct", "rag", "mapreduce", "recursive", "memory")
SUMMARY_FIELDS = ("task", "strategy", "length", "n", "accuracy", "reach_any", "reach_final",
                  "calls", "prompt_tokens", "completion_tokens", "wall_s")


@dataclass
class EvalReport:
    out: str
    cases: int = 0  # grid cells x cases asked for
    done: int = 0  # finished by this run
    failed: int = 0  # finished by this run with an error (they count as wrong)
    skipped: int = 0  # already in cases.jsonl
    elapsed_s: float = 0.0
    summary: list[dict[str, Any]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_lengths(text: str | list[Any]) -> list[int]:
    """``"2k,4k,8192"`` -> [2048, 4096, 8192] (k is 1024, as RULER's lengths are)."""
    items = text if isinstance(text, list) else str(text).split(",")
    out = []
    for item in (str(i).strip().lower() for i in items):
        if not item:
            continue
        try:
            value = int(float(item[:-1]) * 1024) if item.endswith("k") else int(item)
        except ValueError:
            raise TomesError(f"{item!r} is not a length", "give tokens, e.g. --lengths 4k,8k,16k") from None
        if value < 256:
            raise TomesError(f"length {item} is too short", "use 256 tokens or more")
        out.append(value)
    if not out:
        raise TomesError("no length given", "give tokens, e.g. --lengths 4k,8k")
    return out


def case_key(task: str, strategy: str, length: int, seed: int, index: int) -> str:
    return f"{task}/{strategy}/{length}/{seed}/{index}"


def read_cases(path: Path) -> dict[str, dict[str, Any]]:
    """Lines already written, by key; a last line cut off by a kill is dropped."""
    if not path.exists():
        return {}
    raw = path.read_text(encoding="utf-8")
    out: dict[str, dict[str, Any]] = {}
    kept = []
    lines = raw.splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                continue
            raise TomesError(f"{path} line {i + 1} is not JSON",
                             "remove that line, or write the eval to a new --out folder") from None
        out[row["key"]] = row
        kept.append(line)
    if kept != [ln for ln in lines if ln.strip()] or (raw and not raw.endswith("\n")):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(ln + "\n" for ln in kept), encoding="utf-8")
        os.replace(tmp, path)
    return out


def case_line(case: Case, strategy: str, record: dict[str, Any]) -> dict[str, Any]:
    """One scored line of ``cases.jsonl`` from a batch record."""
    done = record.get("status") == "done"
    prediction = record.get("answer") if done else None
    reached = _reach.of_run(record.get("run_id"), case.evidence, case.answers, case.question)
    error = record.get("error")
    return {
        "key": case_key(case.task, strategy, case.length, case.seed, case.index),
        "task": case.task, "strategy": strategy, "length": case.length, "seed": case.seed,
        "index": case.index, "status": "done" if done else "failed",
        "question": case.question, "answers": case.answers, "metric": case.metric,
        "prediction": prediction, "score": score(prediction, case) if done else 0.0,
        **reached, "evidence": len(case.evidence), "doc_tokens": case.tokens,
        "kind": case.meta.get("kind"), "run_id": record.get("run_id"),
        "chosen": record.get("strategy"),
        "calls": int(record.get("calls") or 0), "cache_hits": int(record.get("cache_hits") or 0),
        "prompt_tokens": int(record.get("prompt_tokens") or 0),
        "completion_tokens": int(record.get("completion_tokens") or 0),
        "wall_s": float(record.get("wall_s") or 0.0),
        "error": (error.get("cause") if isinstance(error, dict) else error) if not done else None,
    }


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per task x strategy x length: mean accuracy (score/100) and reach (over
    cases that have evidence), total calls, tokens and wall time."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["task"], row["strategy"], row["length"]), []).append(row)
    out = []
    for (task, strategy, length), cases in sorted(groups.items()):
        def mean(key: str) -> float | None:
            values = [c[key] for c in cases if c.get(key) is not None]
            return round(sum(values) / len(values), 4) if values else None

        accuracy = round(sum(c["score"] for c in cases) / len(cases) / 100, 4)
        out.append({
            "task": task, "strategy": strategy, "length": length, "n": len(cases),
            "accuracy": accuracy, "reach_any": mean("reach_any"), "reach_final": mean("reach_final"),
            "calls": sum(c["calls"] for c in cases),
            "prompt_tokens": sum(c["prompt_tokens"] for c in cases),
            "completion_tokens": sum(c["completion_tokens"] for c in cases),
            "wall_s": round(sum(c["wall_s"] for c in cases), 2),
            "failed": sum(1 for c in cases if c["status"] != "done"),
            "doc_tokens": round(sum(c["doc_tokens"] for c in cases) / len(cases)),
        })
    return out


def _write_doc(folder: Path, case: Case) -> Path:
    path = folder / f"{case.task}-{case.length}-{case.seed}-{case.index}.txt"
    if not path.exists() or path.read_text(encoding="utf-8") != case.document:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(case.document, encoding="utf-8")
        os.replace(tmp, path)
    return path


def run(
    tasks: str | list[str], *, strategies: list[str] | tuple[str, ...] = DEFAULT_STRATEGIES,
    lengths: str | list[Any] = "4k", n: int = 3, seed: int = 0, out: str | Path,
    corpus: str = "eval", concurrency: int | None = None, tomes: Any = None, lm: Any = None,
    options: dict[str, dict[str, Any]] | None = None, on_event: OnEvent = ignore,
    plots: bool = True, meta: dict[str, Any] | None = None,
) -> EvalReport:
    """Run (or carry on) an evaluation grid into ``out``; returns what it did and the
    summary. ``options`` gives a strategy its options (``{"rag": {"k": 4}}``)."""
    from pipelines import STRATEGIES
    from pipelines.evaluation import report as _report

    started = time.perf_counter()
    names = task_names(tasks)
    sizes = parse_lengths(lengths)
    for s in strategies:
        if s not in STRATEGIES:
            raise TomesError(f"unknown strategy {s!r}", f"use some of: {', '.join(STRATEGIES)}")
    if n < 1:
        raise TomesError(f"--n {n} asks for no cases", "ask for 1 or more")
    if tomes is None:
        # The runner drives the API (ingest, batch) it sits below: app.api passes itself.
        raise TypeError("run() needs the Tomes object to run the cases through: "
                        "call Tomes().eval(...)")
    out = Path(out)
    docs = out / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    cases_path = out / "cases.jsonl"
    written = read_cases(cases_path)
    report = EvalReport(out=str(out))

    on_event(Event("eval-generate", 0, len(names) * len(sizes) * n, message="generating cases"))
    by_key: dict[str, tuple[Case, str]] = {}
    items: list[dict[str, Any]] = []
    targets: dict[str, list[dict[str, Any]]] = {}  # document file -> its items
    made = 0
    with _settings_of(tomes):
        for task in names:
            for length in sizes:
                for index in range(n):
                    case = generate(task, length, seed, index)
                    made += 1
                    on_event(Event("eval-generate", made, len(names) * len(sizes) * n,
                                   message=f"{task} {length}"))
                    path = None
                    for strategy in strategies:
                        key = case_key(task, strategy, length, seed, index)
                        report.cases += 1
                        if key in written:
                            report.skipped += 1
                            continue
                        path = path or _write_doc(docs, case)
                        by_key[key] = (case, strategy)
                        item = {"custom_id": key, "target": str(path.resolve()),
                                "question": case.question, "strategy": strategy}
                        targets.setdefault(str(path.resolve()), []).append(item)
                        if options and options.get(strategy):
                            item["options"] = dict(options[strategy])
                        items.append(item)

    if targets:
        # Ingested and embedded before any strategy runs: rag runs at once would each
        # embed the same new chunks (a search embeds what it lacks) and trip over one another.
        on_event(Event("eval-ingest", 0, len(targets), message="ingesting the cases' documents"))
        ingested = tomes.ingest(list(targets), corpus, embed=True)
        for outcome in ingested.outcomes:
            if outcome.document_id is None:
                raise TomesError(f"a case's document could not be ingested: {outcome.error}",
                                 "report this: generated documents should always ingest")
            for item in targets.get(str(Path(outcome.path).resolve()), []):
                item["target"] = f"doc:{outcome.document_id}"

    sink = cases_path.open("a", encoding="utf-8")

    def write(key: str, record: dict[str, Any]) -> None:
        if key in written or key not in by_key:
            return
        case, strategy = by_key[key]
        with _settings_of(tomes):
            line = case_line(case, strategy, record)
        sink.write(json.dumps(line, ensure_ascii=False, default=str) + "\n")
        sink.flush()  # what is written survives a kill
        written[key] = line
        report.done += 1
        report.failed += line["status"] != "done"

    def relay(event: Event) -> None:
        if event.stage == "batch":
            record = (event.data or {}).get("record")
            if record:
                write(str(record["custom_id"]), record)
            on_event(Event("eval", report.skipped + report.done, report.cases,
                           message=event.message, data=event.data))
        else:
            on_event(event)

    try:
        if items:
            batch = tomes.batch(items, out / "runs.jsonl", concurrency=concurrency,
                                corpus=corpus, on_event=relay, lm=lm)
            # A kill between the batch's line and ours: the batch skips it, we score it.
            for record in batch.records:
                write(str(record["custom_id"]), record)
    finally:
        sink.close()
    rows = list(written.values())
    report.summary = summarize(rows)
    report.elapsed_s = round(time.perf_counter() - started, 2)
    with _settings_of(tomes) as s:
        info = {"backend": s.backend, "model": s.model, "seed": seed, "tasks": names,
                "strategies": list(strategies), "lengths": sizes, "n": n, **(meta or {})}
    report.files = _report.write(out, report.summary, info, elapsed_s=report.elapsed_s,
                                 plots=plots)
    return report


def _settings_of(tomes: Any):
    from app import settings

    return settings.override(**getattr(tomes, "_changes", {}))
