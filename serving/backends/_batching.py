"""Gathering concurrent calls into batches for engines that generate a whole batch in
one call (transformers ``generate``, vLLM's ``LLM.chat``).

One worker thread takes the first waiting request, waits a few milliseconds for more
that can share its batch (same ``group`` key), runs the batch and hands each caller its
own response on the caller's event loop.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from serving.base import ChatRequest, ChatResponse


@dataclass
class _Job:
    request: ChatRequest
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[ChatResponse]


class BatchWorker:
    def __init__(
        self,
        run: Callable[[list[ChatRequest]], list[ChatResponse]],
        *,
        max_batch: int,
        window_s: float = 0.02,
        group: Callable[[ChatRequest], Hashable] = lambda _r: None,
        name: str = "tomes-batch",
    ) -> None:
        self._run_batch = run
        self.max_batch = max(1, max_batch)
        self.window_s = window_s
        self._group = group
        self._name = name
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.sizes: list[int] = []  # sizes of the batches run

    async def submit(self, request: ChatRequest) -> ChatResponse:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ChatResponse] = loop.create_future()
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
                self._thread.start()
        self._jobs.put(_Job(request, loop, future))
        return await future

    def stop(self, timeout: float = 60.0) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join(timeout=timeout)

    def _work(self) -> None:
        held: list[_Job] = []  # waiting jobs that did not fit the current batch's group
        while True:
            job = held.pop(0) if held else self._jobs.get()
            if job is None:
                return
            key = self._group(job.request)
            batch = [job]
            for j in [j for j in held if self._group(j.request) == key][: self.max_batch - 1]:
                held.remove(j)
                batch.append(j)
            deadline = time.monotonic() + self.window_s
            while len(batch) < self.max_batch:
                try:
                    nxt = self._jobs.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    self._jobs.put(None)  # stop after this batch
                    break
                (batch if self._group(nxt.request) == key else held).append(nxt)
            self._run(batch)

    def _run(self, batch: list[_Job]) -> None:
        self.sizes.append(len(batch))
        try:
            responses = self._run_batch([j.request for j in batch])
        except BaseException as exc:  # noqa: BLE001 - handed to every waiting caller
            for j in batch:
                j.loop.call_soon_threadsafe(_settle, j.future, None, exc)
            return
        for j, r in zip(batch, responses, strict=True):
            j.loop.call_soon_threadsafe(_settle, j.future, r, None)


def _settle(future: asyncio.Future[ChatResponse], value: ChatResponse | None,
            exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(value)  # type: ignore[arg-type]
