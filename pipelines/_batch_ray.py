"""Batches and ingestion on Ray: the same work as pipelines/batch.py and app/ingest, with
the items (or files) run as Ray tasks, and ingest's embedding as Ray Data ``map_batches``.

The driver reads the input, skips what the output already holds and alone writes the
output, exactly as the local batch does (``batch.arun`` with ``run_items``): only how
an item runs differs. Each task runs one item in a Ray worker with the driver's settings
(TOMES_HOME, TOMES_DATABASE_URL, backend, model, base URLs: ``worker_env``) against the
shared store and the model endpoints, and its record streams back as it finishes. A
killed batch is carried on like a local one: ids in the output are skipped, runs cut off
resume from their checkpoints in the store.

The store must be one every worker reaches: SQLite under TOMES_HOME works for a local
Ray (one machine); a cluster of several machines needs TOMES_DATABASE_URL (PostgreSQL),
and model servers they can all reach (not the in-process scripted fake).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from app.errors import TomesError
from app.settings import get_settings

INSTALL_FIX = "install it with `pip install 'tomes[scale]'` (or `pip install 'ray[data]'`)"
# Settings a worker needs that are not TOMES_* variables of the driver's environment.
_PASSED = ("home", "database_url", "index_root", "cache_root", "backend", "model", "base_url",
           "api_key_env", "concurrency", "request_timeout", "call_timeout", "embedder",
           "map_tokens", "grounding", "chunk_tokens", "chunk_overlap", "max_file_mb")


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise TomesError("--ray needs Ray, which is not installed", INSTALL_FIX) from None
    return ray


def worker_env() -> dict[str, str]:
    """The driver's settings (scoped overrides included) as the environment of a
    worker: TOMES_* variables, and the API key the settings name."""
    s = get_settings()
    env = {k: v for k, v in os.environ.items() if k.startswith("TOMES_")}
    for name in _PASSED:
        value = getattr(s, name)
        key = f"TOMES_{name.upper()}" if name != "cache_root" else "TOMES_CACHE_DIR"
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)
    env["TOMES_CACHE"] = "1" if s.cache else "0"
    if os.environ.get(s.api_key_env):
        env[s.api_key_env] = os.environ[s.api_key_env]
    return env


class Cluster:
    """Ray for one run: connected to ``address``, or a local one started for the run
    (and stopped after it) with ``num_cpus`` CPUs; an already initialised Ray is used
    as it is."""

    def __init__(self, address: str | None = None, num_cpus: int | None = None, *,
                 calls_models: bool = True) -> None:
        self.ray = import_ray()
        self.calls_models = calls_models
        self.address = address
        self.num_cpus = num_cpus
        self.started = False

    def __enter__(self) -> Cluster:
        ray = self.ray
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"log_to_driver": False, "include_dashboard": False}
            if self.address:
                ray.init(address=self.address, **kwargs)
            else:
                ray.init(num_cpus=self.num_cpus or os.cpu_count() or 1, **kwargs)
            self.started = True
        self._check_store()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.started:
            self.ray.shutdown()

    @property
    def cpus(self) -> int:
        return max(1, int(self.ray.cluster_resources().get("CPU", 1)))

    def _check_store(self) -> None:
        s = get_settings()
        hosts = {n.get("NodeManagerAddress") for n in self.ray.nodes() if n.get("Alive")}
        if len(hosts) > 1 and s.database_url is None:
            raise TomesError(
                f"the Ray cluster has {len(hosts)} machines and the store is SQLite under "
                f"{s.home}, which only this machine reaches",
                "set TOMES_DATABASE_URL=postgresql+psycopg://user@host/db (a PostgreSQL "
                "every machine reaches) and run again")
        if self.calls_models and s.backend == "scripted":
            raise TomesError(
                "the scripted backend lives in this process; Ray workers cannot call it",
                "point the batch at model servers the workers reach: TOMES_BACKEND=openai "
                "and TOMES_BASE_URL=http://host:8000/v1[,http://host2:8000/v1]")

    def task(self, fn: Callable[..., Any], **options: Any) -> Any:
        env = worker_env()
        return self.ray.remote(fn).options(runtime_env={"env_vars": env}, **options)


async def stream(refs: dict[Any, Any]) -> AsyncIterator[tuple[Any, Any, BaseException | None]]:
    """(key, result, error) for each object ref of ``refs`` (ref -> key) as it is ready."""
    waiting = {asyncio.wrap_future(ref.future()): key for ref, key in refs.items()}
    while waiting:
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        for future in done:
            key = waiting.pop(future)
            try:
                yield key, future.result(), None
            except Exception as exc:  # noqa: BLE001 - reported for its item, the rest go on
                yield key, None, exc


# --- batches ---------------------------------------------------------------------------


def _item_task(spec: dict[str, Any], line: int, out: str, base_dir: str, corpus: str,
               known: dict[str, int]) -> dict[str, Any]:
    """One item in a Ray worker: the local batch's runner, with file targets the driver
    already ingested given by document id (the file may not be on this machine)."""
    from pipelines import batch
    from serving.lm import get_lm

    item = batch.Item(line=line, **spec)
    key = (out, base_dir, corpus)
    runner = _runners.get(key)
    if runner is None:
        runner = _runners[key] = _KnownTargets(
            Path(out), get_lm(), Path(base_dir), lambda p: _ingest_one(p, corpus),
            lambda _e: None)
    runner.known = known
    global _loop
    if _loop is None or _loop.is_closed():
        # One loop for the worker's life, not one per item: the HTTP client and its open
        # connections (kept per loop) serve every item this worker runs.
        _loop = asyncio.new_event_loop()
    return _loop.run_until_complete(runner.run(item))


_loop: asyncio.AbstractEventLoop | None = None


_runners: dict[tuple[str, str, str], Any] = {}  # one per worker process and batch


def _ingest_one(path: Path, corpus: str) -> int:
    """A file the driver could not ingest: the local batch's ingest and error."""
    from app.ingest.service import document_of
    from serving.tokenizers import active_tokenizer

    return document_of(path, corpus, active_tokenizer())


def _known_targets_class() -> type:
    from pipelines.batch import _Runner

    class KnownTargets(_Runner):
        known: dict[str, int] = {}

        async def target(self, target: str) -> str:
            if target in self.known:
                return f"doc:{self.known[target]}"
            return await super().target(target)

    return KnownTargets


def _KnownTargets(*args: Any) -> Any:  # noqa: N802 - a class made on first use
    return _known_targets_class()(*args)


def _crash_record(item: Any, exc: BaseException) -> dict[str, Any]:
    record: dict[str, Any] = {"custom_id": item.custom_id, "status": "failed", "line": item.line,
                              "target": item.target, "run_id": None}
    record["question" if item.question is not None else "summary"] = (
        item.question if item.question is not None else item.summary)
    record["error"] = {"cause": f"the Ray task for this item failed: {type(exc).__name__}: "
                                f"{str(exc).splitlines()[0] if str(exc) else ''}",
                       "fix": "run the batch again to retry it (--retry-failed); the worker's "
                              "log is in the Ray session's logs"}
    return record


def items_runner(cluster: Cluster, *, corpus: str,
                 ingest_path: Callable[[Path], int] | None) -> Any:
    """``batch.arun``'s ``run_items`` on ``cluster``: twice as many items submitted as
    the cluster has CPUs (one runs per CPU, the next waits in Ray's queue)."""

    async def run_items(pending: list[Any], out: Path, base_dir: Path) -> AsyncIterator[dict[str, Any]]:
        known = await asyncio.to_thread(_ingest_files, pending, base_dir, ingest_path)
        task = cluster.task(_item_task, num_cpus=1, max_retries=2)
        queue = list(reversed(pending))
        limit = 2 * cluster.cpus
        in_flight: dict[asyncio.Future, Any] = {}

        def submit() -> None:
            while queue and len(in_flight) < limit:
                item = queue.pop()
                spec = {k: v for k, v in asdict(item).items() if k != "line"}
                ref = task.remote(spec, item.line, str(out), str(base_dir), corpus, known)
                in_flight[asyncio.wrap_future(ref.future())] = item

        submit()
        while in_flight:
            done, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                item = in_flight.pop(future)
                try:
                    record = future.result()
                except Exception as exc:  # noqa: BLE001 - a dead worker fails its item only
                    record = _crash_record(item, exc)
                yield record
            submit()

    return run_items


def _ingest_files(pending: list[Any], base_dir: Path,
                  ingest_path: Callable[[Path], int] | None) -> dict[str, int]:
    """File targets, ingested once on the driver before the items go out: two workers
    must not ingest one new file at once, and a cluster's workers may not have it."""
    from pipelines import STRATEGIES
    from pipelines import _dispatch as D
    from pipelines.batch import _Runner

    if ingest_path is None:
        return {}
    finder = _Runner(Path("."), None, base_dir, None, lambda _e: None)
    known: dict[str, int] = {}
    for item in pending:
        if item.target in known:
            continue
        path = finder._file(item.target)
        if path is None:
            continue
        if item.summary is None:  # the local batch checks options before it ingests
            try:
                from pipelines import strategy_module

                if item.strategy in STRATEGIES:
                    D.check_options(item.strategy, strategy_module(item.strategy), item.options)
            except TomesError:
                continue
        try:
            known[item.target] = ingest_path(path)
        except TomesError:
            continue  # the item's worker reports it, as the local batch would
    return known


async def arun_batch(source: Any, out: str | Path, *, address: str | None = None,
                     num_cpus: int | None = None, corpus: str = "default",
                     ingest_path: Callable[[Path], int] | None = None, **kwargs: Any) -> Any:
    """``batch.arun`` with the items as Ray tasks; same output, resume and bad lines."""
    from pipelines import batch

    with Cluster(address, num_cpus) as cluster:
        report = await batch.arun(source, out, ingest_path=ingest_path,
                                  run_items=items_runner(cluster, corpus=corpus,
                                                         ingest_path=ingest_path),
                                  workers=cluster.cpus, **kwargs)
        report.notes.append(f"ran on Ray ({address or 'a local cluster'}, {cluster.cpus} CPUs)")
    return report


# --- ingestion -------------------------------------------------------------------------


def _ingest_task(path: str, corpus: str) -> dict[str, Any]:
    from app.errors import IngestError
    from app.ingest.service import Outcome, ingest_file
    from serving.tokenizers import active_tokenizer

    try:
        outcome = ingest_file(Path(path), corpus, active_tokenizer())
    except IngestError as exc:
        outcome = Outcome(path, "failed", error=str(exc))
    return asdict(outcome)


def ingest(paths: list[Path], corpus: str, *, address: str | None = None,
           num_cpus: int | None = None, on_event: Any = None, embed: bool = False) -> Any:
    """Files read, chunked and stored as Ray tasks (one per file), then (``embed``) the
    chunks without vectors encoded on the same Ray by ``encoder``; the driver writes the
    index (``retrieval.sync.sync_corpus``)."""
    from app.events import Event
    from app.ingest.service import IngestReport, Outcome, corpus_id, expand
    from app.store import session_scope

    files, missing = expand([Path(p) for p in paths])
    report = IngestReport(corpus=corpus, outcomes=list(missing))
    with session_scope() as s:  # made once here: tasks racing to create it would collide
        corpus_id(s, corpus)
    with Cluster(address, num_cpus, calls_models=False) as cluster:
        task = cluster.task(_ingest_task, num_cpus=1, max_retries=1)
        # Absolute paths: a worker's working directory is not the driver's.
        refs = {task.remote(str(f.resolve()), corpus): f for f in files}

        async def gather() -> list[Any]:
            out = []
            async for path, result, error in stream(refs):
                if error is not None:
                    result = asdict(Outcome(str(path), "failed",
                                            error=f"{path}: the Ray task failed ({type(error).__name__})"))
                result["path"] = str(path)  # as the local ingest names it
                out.append(Outcome(**result))
                if on_event is not None:
                    on_event(Event("read", len(out), len(files), message=Path(path).name))
            return out

        from serving.lm import run_sync

        done = run_sync(gather())
        order = {str(f): i for i, f in enumerate(files)}
        report.outcomes.extend(sorted(done, key=lambda o: order.get(o.path, len(order))))
        if embed:
            from app.events import ignore
            from retrieval.sync import sync_corpus

            report.embedded = sync_corpus(corpus, on_event=on_event or ignore,
                                          encoder=encoder(cluster))
    return report


# --- embedding -------------------------------------------------------------------------


class _Encode:
    """``map_batches``'s callable: one per actor, which loads the configured embedder
    once (the driver's settings, from ``worker_env``) and, per batch of chunk ids, reads
    their texts from the shared store, cuts them into windows and encodes them."""

    def __init__(self, model: str, dim: int, batch: int) -> None:
        from retrieval.embedders import get_embedder

        self.embedder = get_embedder()
        self.batch = batch
        if (self.embedder.model_id, self.embedder.dim) != (model, dim):
            # Vectors of two models in one index would rank nonsense, silently.
            raise TomesError(
                f"a Ray worker's embedder is {self.embedder.model_id} ({self.embedder.dim} "
                f"dims) but the driver's is {model} ({dim} dims)",
                "give every machine of the cluster the same embedding model (TOMES_EMBEDDER "
                "naming a model each can load), or ingest without --ray")

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        from retrieval import store_state
        from retrieval.sync import encode_rows

        ids = batch["data"]
        part = encode_rows(self.embedder, store_state.chunk_texts(ids), len(ids),
                           batch=self.batch)
        rows = len(part.owners)
        if rows == 0:
            # One placeholder row (owner -1) still tells the driver these ids were read.
            return {"owner": np.array([-1], np.int64), "fingerprint": np.zeros(1, np.int64),
                    "vector": np.zeros((1, self.embedder.dim), np.float32),
                    "read": np.array([len(ids)], np.int64), "first": np.zeros(1, np.int8)}
        read = np.zeros(rows, np.int64)
        read[0] = len(ids)
        first = np.ones(rows, np.int8)  # a chunk's first window counts the chunk
        first[1:] = part.owners[1:] != part.owners[:-1]
        return {"owner": part.owners, "fingerprint": part.fingerprints, "vector": part.vectors,
                "read": read, "first": first}


def _worker_error(exc: BaseException) -> TomesError:
    """A failed embedding worker as cause and fix: Ray wraps the worker's exception (a
    TomesError included) in its own, whose message ends with the original's last line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    last = lines[-1] if lines else type(exc).__name__
    return TomesError(
        f"embedding on Ray failed: {last}",
        "what was embedded before is kept; fix the cause and run the ingest again (the "
        "worker's traceback is in the Ray session's logs)")


@contextmanager
def _quiet_ray_data(ray: Any) -> Iterator[None]:
    """Library code never prints: no Ray Data progress or run logs on the terminal while
    the block runs (its log files keep them), the caller's settings back after."""
    import logging

    context = ray.data.DataContext.get_current()
    quiet = {"enable_progress_bars": False, "print_on_execution_start": False,
             "enable_auto_log_stats": False}
    saved = {k: getattr(context, k) for k in quiet}
    consoles = [h for h in logging.getLogger("ray.data").handlers
                if not isinstance(h, logging.FileHandler) and "File" not in type(h).__name__]
    levels = [h.level for h in consoles]
    try:
        for k, v in quiet.items():
            setattr(context, k, v)
        for h in consoles:
            h.setLevel(logging.ERROR)
        yield
    finally:
        for k, v in saved.items():
            setattr(context, k, v)
        for h, level in zip(consoles, levels):
            h.setLevel(level)


def encoder(cluster: Cluster) -> Any:
    """A ``retrieval.sync`` encoder on ``cluster``: the missing ids as a Ray dataset, one
    block per batch (the unit an actor takes, so the batches spread over the actors),
    ``map_batches`` over an actor per CPU, the vectors streamed back as they come."""

    def encode(missing: Any, embedder: Any, batch: int) -> Any:
        import numpy as np

        from retrieval.sync import Encoded

        ray = cluster.ray
        blocks = [missing[i : i + batch] for i in range(0, len(missing), batch)]
        with _quiet_ray_data(ray):  # a dataset keeps the context it was made under
            # Column "data", as from_numpy names it: no renaming step, which would be a
            # Ray task needing a CPU the actors already hold (it deadlocks a small Ray).
            vectors = ray.data.from_numpy(blocks).map_batches(
                _Encode, fn_constructor_kwargs={"model": embedder.model_id,
                                                "dim": embedder.dim, "batch": batch},
                compute=ray.data.ActorPoolStrategy(size=max(1, min(cluster.cpus, len(blocks)))),
                batch_size=batch, num_cpus=1, batch_format="numpy",
                runtime_env={"env_vars": worker_env()})
            try:
                for out in vectors.iter_batches(batch_size=None, batch_format="numpy"):
                    keep = out["owner"] >= 0
                    yield Encoded(read=int(out["read"].sum()),
                                  chunks=int(out["first"][keep].sum()),
                                  vectors=np.asarray(out["vector"][keep], np.float32),
                                  owners=out["owner"][keep],
                                  fingerprints=out["fingerprint"][keep])
            except ray.exceptions.RayError as exc:
                raise _worker_error(exc) from exc

    return encode
