"""The batch runner: questions and summaries from a JSONL file, answers to another.

Each input line is one item::

    {"custom_id": "q1", "target": "emma.txt", "question": "Who is Mr. Knightley?"}
    {"custom_id": "s1", "target": "corpus:books", "summary": {"length": "short"},
     "strategy": "auto", "options": {"map_tokens": 4000}}

``target`` is a document, a corpus or a file path (ingested first if new). Each item is a
normal run in the store, with a run id derived from the output file and the item, so a
batch run again finds its own runs: ids already in the output are skipped, runs cut off
mid-way (a killed batch) are resumed - a map-reduce from its checkpoint, a one-call run
from the response cache - and finished runs give their stored result without a call.
A killed batch loses at most the items in flight. A bad line (not JSON, missing fields)
becomes an error line in the output and the batch goes on.

Items run concurrently on one event loop and one model interface, whose semaphore caps
the calls in flight at the backend's capacity (or ``concurrency``, if lower) whatever each
strategy fans out to; as many items again are prepared meanwhile (retrieval, run rows),
so a slot that frees is taken at once. Output lines are written (and flushed) as items finish, in the
order they finish, keyed by ``custom_id``.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from app.errors import NotFound, TomesError
from app.events import Event, OnEvent, ignore
from pipelines import _dispatch as D
from pipelines import _runs
from pipelines.result import Result

KEYS = ("custom_id", "target", "question", "summary", "strategy", "options")
SUMMARY_KEYS = ("length", "style")
SUMMARY_STRATEGIES = ("auto", "mapreduce")
# Items doing what comes before their first model call (target, retrieval, run rows) at
# once: more share the cores and delay every first call; fewer idle on I/O waits.
PREPARING = 2
_NAMESPACE = uuid.UUID("6f1d2c4e-8a3b-5c7d-9e0f-1a2b3c4d5e6f")


@dataclass
class Item:
    line: int
    custom_id: str
    target: str
    question: str | None = None
    summary: dict[str, Any] | None = None
    strategy: str = "auto"
    options: dict[str, Any] = field(default_factory=dict)

    def spec(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in KEYS}


@dataclass
class BatchReport:
    input: str
    out: str
    total: int = 0  # items in the input, bad lines included
    done: int = 0  # finished by this run
    failed: int = 0  # failed in this run, bad lines included
    skipped: int = 0  # already in the output
    bad_lines: int = 0
    resumed: int = 0  # runs found cut off (or finished) and carried on
    calls: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    wall_s: float = 0.0
    concurrency: int = 1
    notes: list[str] = field(default_factory=list)
    # The output's record of every input id (this run's and those skipped), input order.
    records: list[dict[str, Any]] = field(default_factory=list, repr=False)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["tokens"] = self.tokens
        return out


# --- input ---------------------------------------------------------------------------


def _bad(number: int, cause: str, fix: str, custom_id: str | None = None) -> dict[str, Any]:
    return {"custom_id": custom_id or f"line-{number}", "status": "failed", "line": number,
            "error": {"cause": f"line {number}: {cause}", "fix": fix}}


def parse_line(number: int, line: str | dict[str, Any]) -> Item | dict[str, Any]:
    """An item, or the error record for a line that cannot be one."""
    from pipelines import STRATEGIES

    if isinstance(line, dict):
        data: Any = line
    else:
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            return _bad(number, f"is not JSON ({exc.msg} at column {exc.colno})",
                        "write one JSON object per line")
    if not isinstance(data, dict):
        return _bad(number, "is JSON but not an object", "write one JSON object per line")
    cid = data.get("custom_id")
    if not isinstance(cid, (str, int)) or isinstance(cid, bool) or not str(cid).strip():
        return _bad(number, "has no custom_id", 'give each line a unique "custom_id"')
    cid = str(cid)
    fix_keys = f"use the keys {', '.join(KEYS)}"
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        return _bad(number, f"has unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}",
                    fix_keys, cid)
    target = data.get("target")
    if not isinstance(target, (str, int)) or isinstance(target, bool) or not str(target).strip():
        return _bad(number, "has no target", 'name a document, a corpus or a file in "target"', cid)
    question, summary = data.get("question"), data.get("summary")
    if (question is None) == (summary is None):
        return _bad(number, "needs either a question or a summary" if question is None
                    else "has both a question and a summary",
                    'give "question": "..." or "summary": {} (one of them)', cid)
    if question is not None and (not isinstance(question, str) or not question.strip()):
        return _bad(number, "has an empty question", "ask a question in words", cid)
    if summary is not None:
        if not isinstance(summary, dict):
            return _bad(number, "has a summary that is not an object",
                        'give "summary": {"length": "short|medium|long", "style": "..."} or {}', cid)
        extra = sorted(set(summary) - set(SUMMARY_KEYS))
        if extra:
            return _bad(number, f"has summary key{'s' if len(extra) > 1 else ''} {', '.join(extra)}",
                        f"use {', '.join(SUMMARY_KEYS)}", cid)
    strategy = data.get("strategy") or "auto"
    if strategy not in STRATEGIES:
        return _bad(number, f"names the unknown strategy {strategy!r}",
                    f"use one of: {', '.join(STRATEGIES)}", cid)
    if summary is not None and strategy not in SUMMARY_STRATEGIES:
        return _bad(number, f"asks {strategy} for a summary; summaries are made by mapreduce",
                    'leave "strategy" out, or use "auto" or "mapreduce"', cid)
    options = data.get("options") or {}
    if not isinstance(options, dict):
        return _bad(number, "has options that are not an object", 'give "options": {"k": 8}', cid)
    return Item(line=number, custom_id=cid, target=str(target).strip(),
                question=question.strip() if question is not None else None,
                summary=summary, strategy=strategy, options=options)


def read_input(source: str | Path | Iterable[str | dict[str, Any]]) -> list[Item | dict[str, Any]]:
    """Items and error records, in input order; a repeated custom_id is an error."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        try:
            lines: Iterable[Any] = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise TomesError(f"cannot read {path} ({exc.strerror})",
                             "give the path of a JSONL file") from exc
        except UnicodeDecodeError as exc:
            raise TomesError(f"{path} is not UTF-8 text", "save the JSONL file as UTF-8") from exc
    else:
        lines = source
    out: list[Item | dict[str, Any]] = []
    first: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        if isinstance(line, str) and not line.strip():
            continue
        entry = parse_line(number, line)
        cid = entry.custom_id if isinstance(entry, Item) else entry["custom_id"]
        if cid in first:
            entry = _bad(number, f"repeats the custom_id {cid!r} of line {first[cid]}",
                         "give each line a unique custom_id")
        else:
            first[cid] = number
        out.append(entry)
    return out


# --- output --------------------------------------------------------------------------


def read_output(path: Path, *, drop_failed: bool = False) -> dict[str, dict[str, Any]]:
    """The records already written, by custom_id (the last one wins). A last line cut
    off by a kill is removed, and with ``drop_failed`` so are failed records (they run
    again): the file is rewritten, whole, only then."""
    if not path.exists():
        return {}
    raw = path.read_text(encoding="utf-8")
    records: dict[str, dict[str, Any]] = {}
    kept: list[str] = []
    changed = False
    lines = raw.splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1 and not raw.endswith("\n"):
                changed = True  # the line a kill cut off: its item runs again
                continue
            raise TomesError(f"{path} line {i + 1} is not JSON", "fix or remove that line, or "
                             "write the batch to a new --out file") from None
        if not isinstance(record, dict) or "custom_id" not in record:
            raise TomesError(f"{path} line {i + 1} is not a batch record",
                             "write the batch to a new --out file")
        if drop_failed and record.get("status") != "done":
            changed = True
            continue
        records[str(record["custom_id"])] = record
        kept.append(line)
    if changed:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        os.replace(tmp, path)
    elif raw and not raw.endswith("\n"):
        with path.open("a", encoding="utf-8") as f:
            f.write("\n")
    return records


def run_id_for(out: Path, item: Item) -> str:
    """The item's run id: the same output file and the same item find the same run."""
    key = json.dumps({"out": str(out.resolve()), "item": item.spec()}, sort_keys=True,
                     ensure_ascii=False, default=str)
    return str(uuid.uuid5(_NAMESPACE, key))


# --- running -------------------------------------------------------------------------


IngestPath = Callable[[Path], int]  # a file -> the id of its document (ingesting if new)
# Another way to run the pending items (pipelines/_batch_ray.py): given them, the output
# path and the base directory, it yields each item's record as it finishes; arun alone
# writes the output.
RunItems = Callable[[list[Item], Path, Path], AsyncIterator[dict[str, Any]]]


class _Runner:
    def __init__(self, out: Path, lm: Any, base_dir: Path, ingest_path: IngestPath | None,
                 on_event: OnEvent) -> None:
        self.out = out
        self.lm = lm
        self.base_dir = base_dir
        self.ingest_path = ingest_path
        self.on_event = on_event
        self._ingest_lock = asyncio.Lock()
        self._ingested: dict[Path, int] = {}
        self.environments: Any = {}  # what ``Environment.sharing`` shares among the items

    def _file(self, target: str) -> Path | None:
        path = Path(target).expanduser()
        candidates = [path] if path.is_absolute() else [Path.cwd() / path, self.base_dir / path]
        return next((p.resolve() for p in candidates if p.is_file()), None)

    async def target(self, target: str) -> str:
        path = self._file(target)
        if path is None:
            return target
        if self.ingest_path is None:
            raise TomesError(f"{target} is a file, and this batch cannot ingest files",
                             "ingest it first (`tomes ingest PATH`) and name the document")
        async with self._ingest_lock:  # one ingest at a time: one file is read once
            if path not in self._ingested:
                self._ingested[path] = await asyncio.to_thread(self.ingest_path, path)
                self.environments.clear()  # a corpus target may hold one more document
        return f"doc:{self._ingested[path]}"

    async def result(self, item: Item, run_id: str) -> tuple[Result, bool]:
        """(the item's result, whether its run existed and was carried on)."""
        try:
            await asyncio.to_thread(_runs.load_run, run_id)
        except NotFound:
            pass
        else:
            return await D.aresume(run_id, lm=self.lm), True
        # Options are checked before a file is ingested for an item that cannot run.
        if item.summary is None:
            from pipelines import strategy_module

            D.check_options(item.strategy, strategy_module(item.strategy), item.options)
        target = await self.target(item.target)
        if item.summary is not None:
            from pipelines import auto

            summary = {"length": item.summary.get("length") or "medium",
                       "style": item.summary.get("style")}
            run = auto.asummarize if item.strategy == "auto" else D.asummarize
            return await run(target, run_id=run_id, lm=self.lm, **summary, **item.options), False
        return await D.aask(item.strategy, target, item.question or "", run_id=run_id,
                            lm=self.lm, **item.options), False

    async def run(self, item: Item) -> dict[str, Any]:
        started = time.perf_counter()
        run_id = run_id_for(self.out, item)
        record: dict[str, Any] = {"custom_id": item.custom_id, "status": "failed",
                                  "line": item.line, "target": item.target}
        record["question" if item.question is not None else "summary"] = (
            item.question if item.question is not None else item.summary)
        token = _runs.run_notes.set({**(_runs.run_notes.get() or {}),
                                     "batch": {"out": str(self.out), "custom_id": item.custom_id}})
        try:
            result, resumed = await self.result(item, run_id)
        except TomesError as exc:
            record["run_id"] = run_id if _exists(run_id) else None
            again = "run the batch again with --retry-failed" + (
                " (the run's finished work is kept)" if record["run_id"] else "")
            record["error"] = {"cause": exc.cause,
                               "fix": f"{exc.fix}; or {again}" if exc.fix else again}
        except Exception as exc:  # noqa: BLE001 - one item's crash must not stop the batch
            record["error"] = {"cause": f"{type(exc).__name__}: {exc}",
                               "fix": "run the batch again to retry it (--retry-failed); "
                                      "please report this"}
            record["run_id"] = run_id if _exists(run_id) else None
        else:
            record.update(_done(result, item, resumed))
        finally:
            _runs.run_notes.reset(token)
        record["wall_s"] = round(time.perf_counter() - started, 3)
        return record


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _exists(run_id: str) -> bool:
    try:
        _runs.load_run(run_id)
    except TomesError:
        return False
    return True


def _done(result: Result, item: Item, resumed: bool) -> dict[str, Any]:
    strategy = result.details.get("strategy") or result.pipeline
    why = result.details.get("why") or (f"named by the item ({item.strategy})"
                                        if item.strategy != "auto" else "")
    return {
        "status": "done", "answer": result.answer,
        "provenance": [asdict(p) for p in result.provenance],
        "strategy": strategy, "why": why, "run_id": result.run_id, "resumed": resumed,
        "calls": result.calls, "cache_hits": result.cache_hits,
        "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
        "tokens": result.tokens, "fallbacks": list(result.details.get("fallbacks") or []),
    }


async def arun(
    source: str | Path | Iterable[str | dict[str, Any]], out: str | Path, *,
    concurrency: int | None = None, retry_failed: bool = False, on_event: OnEvent = ignore,
    lm: Any = None, ingest_path: IngestPath | None = None, base_dir: str | Path | None = None,
    run_items: RunItems | None = None, workers: int | None = None,
) -> BatchReport:
    """Run a batch; ``source`` is a JSONL path or the lines (text or dicts) themselves.
    ``ingest_path`` stores a file target (the API passes its ingest); relative file
    targets are found from the working directory, then from ``base_dir`` (default: the
    input file's directory). ``run_items`` runs the items elsewhere (Ray), ``workers`` of
    them at once."""
    from serving.lm import get_lm

    started = time.perf_counter()
    out = Path(out)
    entries = read_input(source)
    if base_dir is None:
        base_dir = Path(source).parent if isinstance(source, (str, Path)) else Path.cwd()
    lm = lm or get_lm()
    capacity = max(1, int(lm.capacity))
    if concurrency is not None and concurrency < 1:
        raise TomesError(f"concurrency is {concurrency}", "use 1 or more")
    if workers is None:
        workers = min(concurrency or capacity, capacity)
    if run_items is None and workers < capacity:  # the same model, its calls held to what was asked for
        from serving.lm import LM

        lm = LM(lm.backend, cache=lm.cache, concurrency=workers, db_path=lm.db_path)
    label = str(source) if isinstance(source, (str, Path)) else "<items>"
    report = BatchReport(input=label, out=str(out), total=len(entries), concurrency=workers)
    if run_items is None and concurrency and concurrency > capacity:
        report.notes.append(f"concurrency {concurrency} is more than the backend's capacity "
                            f"({capacity}); {capacity} items run at once")
    out.parent.mkdir(parents=True, exist_ok=True)
    written = read_output(out, drop_failed=retry_failed)
    pending: list[Item] = []
    with out.open("a", encoding="utf-8") as sink:

        def write(record: dict[str, Any]) -> None:
            sink.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
            sink.flush()  # what is written survives a kill of this process
            written[str(record["custom_id"])] = record

        for entry in entries:
            cid = entry.custom_id if isinstance(entry, Item) else entry["custom_id"]
            if cid in written:
                report.skipped += 1
            elif isinstance(entry, Item):
                pending.append(entry)
            else:
                report.bad_lines += 1
                report.failed += 1
                write(entry)
        from pipelines.environment import sharing

        runner = _Runner(out, lm, Path(base_dir), ingest_path, on_event)
        total = len(pending)
        finished = 0
        on_event(Event("batch", 0, total, message=f"{report.skipped} already done"
                       if report.skipped else "starting",
                       data={"done": 0, "failed": 0, "skipped": report.skipped}))
        queue = list(reversed(pending))

        def tally(record: dict[str, Any]) -> None:
            nonlocal finished
            write(record)
            finished += 1
            if record["status"] == "done":
                report.done += 1
                report.resumed += bool(record.get("resumed"))
                for key in ("calls", "cache_hits", "prompt_tokens", "completion_tokens"):
                    setattr(report, key, getattr(report, key) + int(record.get(key) or 0))
            else:
                report.failed += 1
            on_event(Event("batch", finished, total,
                           message=f"{record['custom_id']} {record['status']}",
                           data={"done": report.done, "failed": report.failed - report.bad_lines,
                                 "skipped": report.skipped, "record": record}))

        from serving.lm import current_queued

        preparing = asyncio.Semaphore(PREPARING)
        loop = asyncio.get_running_loop()

        async def worker() -> None:
            while queue:
                item = queue.pop()
                await preparing.acquire()
                held = [True]  # popped once (atomically): the slot is given back once

                def queued() -> None:  # the item's set-up is over: the next one's begins
                    try:
                        held.pop()
                    except IndexError:
                        return
                    # A resumed run may call the model from a worker thread's own loop.
                    if _running_loop() is loop:
                        preparing.release()
                    else:
                        loop.call_soon_threadsafe(preparing.release)

                token = current_queued.set(queued)
                try:
                    tally(await runner.run(item))
                finally:
                    current_queued.reset(token)
                    queued()

        if run_items is not None:
            async for record in run_items(pending, out, Path(base_dir)):
                tally(record)
        else:
            # Twice as many items as calls at once: while ``workers`` items wait on the
            # model, as many more do what comes before their call (target, retrieval, the
            # run row), so a freed slot is taken at once instead of after the next item's
            # set-up. Items about one target read it from the store once.
            with sharing() as runner.environments:
                await asyncio.gather(*(worker() for _ in range(min(2 * workers, total))))
    ids = [e.custom_id if isinstance(e, Item) else e["custom_id"] for e in entries]
    report.records = [written[i] for i in ids if i in written]
    report.wall_s = round(time.perf_counter() - started, 3)
    return report


def run(source: str | Path | Iterable[str | dict[str, Any]], out: str | Path,
        **kwargs: Any) -> BatchReport:
    from serving.lm import run_sync

    return run_sync(arun(source, out, **kwargs))
