"""Code mode: the root model programs against the input in a sandboxed REPL.

Each reply's ```repl blocks run in ``pipelines._sandbox`` (a separate, locked-down
process; never this one). The sandbox calls back for ``llm_query``,
``llm_query_batched``, ``rlm_query``, ``search`` and ``grep``: the loop watches the
sandbox's pipe (``Sandbox.arun``) and awaits those handlers itself, so sub-calls share
the run's LM (its capacity, cache and call log) and nest under the iteration's call,
with no thread between the block and the model. Every handler call and its result is recorded with the block, so a
resumed run rebuilds the REPL by running the finished iterations' blocks again with
each call answered from that record instead of the model.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from app.errors import TomesError
from pipelines import _recursive_prompts as P
from pipelines._final import Final, code_blocks, find_final
from pipelines._recursive_run import Controller, LimitReached, Trace, run_child

CPU_SECONDS = 10.0  # per block
BLOCK_SECONDS = 120.0  # per block, the block's own code (sub-calls not counted)
MEMORY_MB = 1024
REPLY_CHARS = 6000  # of an earlier reply, when it is shown again
SUB_MAX_TOKENS = 1024


class CodeController(Controller):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sandbox: Any = None
        self._calls: list[dict[str, Any]] = []
        self._replay: list[dict[str, Any]] | None = None
        self._diverged = 0
        self._trace: Trace | None = None
        self._call_id: int | None = None
        self._system: str | None = None

    # --- the sandbox ---------------------------------------------------------------------

    async def _ensure_sandbox(self, trace: Trace) -> None:
        if self.sandbox is not None:
            return
        from pipelines._sandbox import Sandbox, SandboxLimits

        seconds = self.run.limits.max_seconds
        limits = SandboxLimits(
            cpu_seconds=min(CPU_SECONDS, seconds) if seconds else CPU_SECONDS,
            wall_seconds=min(BLOCK_SECONDS, max(seconds, 1.0)) if seconds else BLOCK_SECONDS,
            memory_mb=MEMORY_MB, output_chars=self.run.limits.output_chars,
        )
        variables = {"context": self.view.text, "documents": self.view.documents(),
                     "chunks": self.view.chunk_dicts()}
        handlers = {name: self._handler(name, fn) for name, fn in (
            ("llm_query", self._llm_query), ("llm_query_batched", self._llm_query_batched),
            ("rlm_query", self._rlm_query), ("search", self._search), ("grep", self._grep))}
        loop = asyncio.get_running_loop()
        self.sandbox = await loop.run_in_executor(
            self.run.pool, lambda: Sandbox(handlers, limits=limits, variables=variables))
        fresh = [w for w in self.sandbox.warnings if w not in self.run.warnings]
        self.run.warnings.update(dict.fromkeys(fresh))
        trace.warnings += fresh

    async def open(self, history: list[dict[str, Any]]) -> None:
        """Rebuild the REPL of a resumed run: the finished iterations' blocks run again,
        each sub-call answered from the record (no model call, no token spent)."""
        if not any(rec.get("blocks") for rec in history):
            return
        trace = Trace()
        await self._ensure_sandbox(trace)
        for rec in history:
            for block in rec.get("blocks", []):
                self._replay = list(block.get("calls", []))
                try:
                    await self._exec(block["code"], trace, rec.get("call_id"))
                finally:
                    self._replay = None
        if self._diverged:
            self.run.warnings[f"resume: {self._diverged} sub-call(s) of replayed code differed "
                              "from the record and were made again"] = None

    def close(self) -> None:
        if self.sandbox is not None:
            self.sandbox.close()
            self.sandbox = None

    async def _exec(self, code: str, trace: Trace, call_id: int | None,
                    record: bool = True) -> tuple[Any, list[dict[str, Any]]]:
        """Run one block in the sandbox, its pipe watched by this loop (``arun``): the
        handlers it calls are awaited here, in this task's context, so sub-calls nest
        under the iteration with no thread in between."""
        self._trace, self._call_id, self._calls = trace, call_id, []
        ex = await self.sandbox.arun(code)
        calls, self._calls = self._calls, []
        return ex, calls if record else []

    # --- handlers (awaited on the loop while the block waits for them) --------------------

    def _handler(self, name: str, fn: Any) -> Any:
        async def handler(*args: Any, **kwargs: Any) -> Any:
            args_j, kwargs_j = _jsonable(list(args)), _jsonable(kwargs)
            if self._replay is not None:
                done = self._replay.pop(0) if self._replay else None
                if done and done["name"] == name and done["args"] == args_j \
                        and done["kwargs"] == kwargs_j:
                    if done["ok"]:
                        return done["value"]
                    raise RuntimeError(done["error"])
                self._diverged += 1
            entry: dict[str, Any] = {"name": name, "args": args_j, "kwargs": kwargs_j}
            try:
                value = await fn(*args, **kwargs)
            except Exception as exc:
                entry.update(ok=False, error=_message(exc))
                self._calls.append(entry)
                if isinstance(exc, (TypeError, ValueError)):
                    raise  # the model's own mistake, as Python would report it
                raise RuntimeError(entry["error"]) from None
            entry.update(ok=True, value=value)
            self._calls.append(entry)
            return value

        return handler

    async def _llm_query(self, prompt: Any) -> str:
        return await self._sub(_text(prompt), self._trace, self._call_id)

    async def _llm_query_batched(self, prompts: Any) -> list[str]:
        if not isinstance(prompts, list):
            raise TypeError("llm_query_batched takes a list of prompts")
        return await self._batch([_text(p) for p in prompts], self._trace, self._call_id)

    async def _rlm_query(self, prompt: Any, context: Any = None) -> str:
        return await self._recurse(_text(prompt), context, self._trace, self._call_id)

    async def _search(self, query: Any, k: int = 5) -> list[dict[str, Any]]:
        trace, text = self._trace, _text(query)
        # A query may be embedded by a real model: off the loop.
        loop = asyncio.get_running_loop()
        try:
            hits = await loop.run_in_executor(self.run.pool, self.view.search, text, int(k))
        except TomesError as exc:
            raise RuntimeError(f"search failed: {exc.cause}") from None
        trace.see([h["chunk_id"] for h in hits])
        return hits

    async def _grep(self, pattern: Any, limit: int = 100) -> list[dict[str, Any]]:
        trace, text = self._trace, _text(pattern)
        loop = asyncio.get_running_loop()
        try:
            matches = await loop.run_in_executor(
                self.run.pool, self.view.grep, text, max(1, min(int(limit), 1000)))
        except TomesError as exc:
            raise ValueError(exc.cause) from None
        trace.see([m["chunk_id"] for m in matches])
        return matches

    # --- sub-calls (on the loop) ------------------------------------------------------------

    async def _sub(self, prompt: str, trace: Trace, parent: int | None, node: str = "llm_query") -> str:
        messages = [{"role": "user", "content": prompt}]
        room = self.run.lm.context_window - self.run.count(messages) - 32
        max_tokens = max(64, min(SUB_MAX_TOKENS, room))
        trace.read_all(self.run.reads.chunks_in(prompt))
        response = await self.run.call(messages, node=node, max_tokens=max_tokens, trace=trace,
                                       parent=parent)
        trace.note(response.text)
        return response.text

    async def _batch(self, prompts: list[str], trace: Trace, parent: int | None) -> list[str]:
        replies = await asyncio.gather(*(self._sub(p, trace, parent) for p in prompts),
                                       return_exceptions=True)
        out = []
        for reply in replies:
            if isinstance(reply, LimitReached):
                raise reply
            if isinstance(reply, asyncio.CancelledError):
                raise reply
            out.append(f"Error: {_message(reply)}" if isinstance(reply, BaseException) else reply)
        return out

    async def _recurse(self, prompt: str, context: Any, trace: Trace, parent: int | None) -> str:
        text = context if isinstance(context, str) else (
            "" if context is None else json.dumps(_jsonable(context), ensure_ascii=False))
        depth = self.depth + 1
        if depth > self.run.limits.max_depth:
            # The deepest level is a plain model call, as in the RLM paper.
            trace.limits.append({"limit": "depth", "depth": self.depth})
            trace.fallbacks.append({"depth": self.depth, "what": "rlm_query at the deepest "
                                    "level: answered by one llm_query"})
            room = max(200, (self.run.lm.context_window - SUB_MAX_TOKENS) * 3 - len(prompt))
            piece = text if len(text) <= room else text[:room] + " …"
            return await self._sub(f"{prompt}\n\n{piece}" if piece else prompt, trace, parent,
                                   node="rlm_query")
        view = self.view.of_text(text) if text else self.view
        answer, _how = await run_child(self.run, view, prompt, depth, parent, trace)
        return answer

    # --- one iteration ---------------------------------------------------------------------

    async def step(self, history: list[dict[str, Any]], trace: Trace) -> dict[str, Any]:
        started = time.monotonic()
        n = len(history) + 1
        record: dict[str, Any] = {"n": n, "depth": self.depth, "final": None, "error": False,
                                  "blocks": []}
        try:
            await self._ensure_sandbox(trace)
            messages, max_tokens = self._messages(history, last=n >= self.run.limits.max_iterations)
            response = await self.run.call(messages, node="iteration", max_tokens=max_tokens,
                                           trace=trace, parent=self.parent_call)
        except LimitReached as exc:
            record.update(error=True, stopped=exc.limit, observation=f"stopped: {exc}",
                          seconds=round(time.monotonic() - started, 3))
            return record
        record.update(call_id=response.call_id, reply=response.text)
        self.run.emit(self.depth, n, "running code")
        blocks = code_blocks(response.text)
        outputs, failed = [], False
        for i, code in enumerate(blocks):
            ex, calls = await self._exec(code, trace, response.call_id)
            record["blocks"].append({"code": code, "calls": calls, "error": ex.error})
            outputs.append(_format(ex, i, len(blocks)))
            failed |= ex.error is not None
            if ex.final_set:
                value = "" if ex.final is None else str(ex.final)
                if value.strip():
                    record["final"] = value
                else:
                    outputs.append("FINAL was given an empty value: give the answer itself.")
                    failed = True
                break
        marker = find_final(response.text) if record["final"] is None else None
        if marker is not None:
            value = await self._resolve(marker, trace, response.call_id)
            if value is None:
                outputs.append(f"FINAL({marker.text or marker.expr}) is not an answer: no "
                               "variable of that name exists. Give the answer itself.")
                failed = True
            elif failed:
                record["candidate"] = value
                outputs.append("FINAL was not taken: the code above failed. Fix it, or "
                               "give FINAL(...) again on its own.")
            else:
                record["final"] = value
        if not blocks and marker is None:
            outputs.append(P.CODE_NO_CODE)
            failed = True
        record["error"] = failed and record["final"] is None
        observation = "\n\n".join(outputs) or "(no output)"
        record["observation"] = _bounded(observation, 2 * self.run.limits.output_chars)
        record["seconds"] = round(time.monotonic() - started, 3)
        return record

    async def _resolve(self, marker: Final, trace: Trace, call_id: int | None) -> str | None:
        """A FINAL written in prose: what it names in the REPL, when it names something."""
        if marker.expr:
            code = f"FINAL_VAR({marker.expr!r})" if marker.var else f"FINAL(({marker.expr}\n))"
            ex, _ = await self._exec(code, trace, call_id, record=False)
            if ex.final_set and ex.final is not None and str(ex.final).strip():
                return str(ex.final)
        return None if marker.placeholder or not marker.text else marker.text

    def _messages(self, history: list[dict[str, Any]], *, last: bool) -> tuple[list[dict[str, str]], int]:
        lm = self.run.lm
        if self._system is None:
            chunks = self.view.chunks
            tokens = sum(c.n_tokens for c in chunks) or len(self.view.text) // 4
            self._system = P.code_system(
                n_chars=len(self.view.text), n_tokens=tokens,
                n_docs=max(1, len(self.view.documents())), n_chunks=len(chunks),
                chunk_tokens=tokens // max(1, len(chunks)), window=lm.context_window,
                capacity=lm.capacity, output_chars=self.run.limits.output_chars,
                depth=self.depth, max_depth=self.run.limits.max_depth)
        head = [{"role": "system", "content": self._system},
                {"role": "user", "content": P.CODE_START.format(question=self.question)}]
        max_tokens = max(256, min(2048, lm.context_window // 4))
        left = self.run.limits.max_iterations - len(history)
        turns: list[list[dict[str, str]]] = []
        for i, rec in enumerate(history):
            reply = rec.get("reply") or ""
            if len(reply) > REPLY_CHARS:
                reply = reply[:REPLY_CHARS] + "\n[... reply cut]"
            note = P.CODE_LAST if (last and i == len(history) - 1) else f"{left} step(s) left."
            turns.append([{"role": "assistant", "content": reply or "(empty reply)"},
                          {"role": "user", "content": P.CODE_CONTINUE.format(
                              observation=rec.get("observation", ""), left=note)}])
        dropped = 0
        while True:
            shown = turns[dropped:]
            gap = ([{"role": "user", "content": f"[Steps 1-{dropped} are not shown; the "
                     "variables they made are still in the REPL.]"},
                    {"role": "assistant", "content": "Understood."}] if dropped else [])
            messages = head + gap + [m for t in shown for m in t]
            if self.run.fits(messages, max_tokens) or dropped >= len(turns) - 1:
                break
            dropped += 1
        if not self.run.fits(messages, max_tokens) and len(messages) > 2:
            # Even the last step alone is too long: cut its output to fit.
            tail = messages[-1]["content"]
            while len(tail) > 400 and not self.run.fits(messages, max_tokens):
                tail = tail[: int(len(tail) * 0.7)] + "\n[... cut to fit the window]"
                messages[-1] = {"role": "user", "content": tail}
        return messages, max_tokens

    async def partial(self, history: list[dict[str, Any]], limit: str,
                      trace: Trace) -> tuple[str, str]:
        for rec in reversed(history):
            if rec.get("candidate"):
                return rec["candidate"], "candidate"
        none = f"No answer was found before the {limit.replace('_', ' ')} limit stopped the work."
        notes = [n for r in history for n in r.get("notes", [])] + trace.notes
        # Tracebacks are no evidence: only what working code printed is summarized.
        outputs = [r["observation"] for r in history[-2:]
                   if r.get("observation") and not r.get("error")]
        if limit in ("tokens", "wall_time") or not (notes or outputs):
            return none, "none"
        text = "\n".join(f"- {n}" for n in notes[-12:])
        if outputs:
            text += "\n\nLast outputs:\n" + "\n".join(o[:1500] for o in outputs)
        messages = [{"role": "system", "content": P.ANSWER_SYSTEM},
                    {"role": "user", "content": P.answer_prompt(self.question, text)}]
        while not self.run.fits(messages, P.ANSWER_MAX_TOKENS) and len(text) > 400:
            text = text[: int(len(text) * 0.8)]
            messages[1]["content"] = P.answer_prompt(self.question, text)
        parent = next((r.get("call_id") for r in reversed(history) if r.get("call_id")),
                      self.parent_call)
        try:
            response = await self.run.call(messages, node="answer", max_tokens=P.ANSWER_MAX_TOKENS,
                                           trace=trace, parent=parent, schema=P.ANSWER_SCHEMA)
        except LimitReached:
            return none, "none"
        from pipelines._actions import _answer_text

        answer = _answer_text(response.text)
        return (answer, "summary") if answer else (none, "none")


def _format(ex: Any, index: int, count: int) -> str:
    parts = [f"[block {index + 1} of {count}]"] if count > 1 else []
    if ex.stdout:
        parts.append(ex.stdout.rstrip())
    if ex.stderr:
        parts.append(ex.stderr.rstrip())
    if ex.error and ex.error not in (ex.stderr or ""):
        parts.append(f"error: {ex.error}")
    if ex.restarted and "restarted" not in (ex.error or "") + (ex.stderr or ""):
        parts.append("note: the sandbox was restarted; variables you defined are lost")
    if len(parts) == (1 if count > 1 else 0):
        parts.append("(no output)")
    return "\n".join(parts)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, dict)):
        return json.dumps(_jsonable(value), ensure_ascii=False)
    return str(value)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, ensure_ascii=False, default=str))


def _message(exc: BaseException) -> str:
    if isinstance(exc, TomesError):
        return f"{exc.cause}" + (f" ({exc.fix})" if exc.fix else "")
    return str(exc) or type(exc).__name__


def _bounded(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[... {len(text) - limit:,} more characters cut]"

