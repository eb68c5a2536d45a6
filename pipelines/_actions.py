"""Actions mode: the recursive controller for models that cannot write code.

The model picks one action per step under a small JSON schema (an ``action`` enum, a
``text`` and a few ``chunks``); the controller runs it itself - no model code runs -
and shows a bounded observation. A 135M model can drive this: the prompt is short and
rebuilt each step (question, the steps so far in a line each, the chunks found last, the
evidence), and it names the natural next step (search, then map over what was found,
then answer from the evidence) for the model to take or replace. A reply that does not
parse is asked again once with the error; after that, or when the model repeats a step,
the controller takes the natural step itself and records the fallback.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from app.errors import TomesError
from pipelines import _recursive_prompts as P
from pipelines._records import is_no_info, quote
from pipelines._recursive_run import Controller, LimitReached, Trace, run_child
from pipelines._structured import ParseError, parse_object, text_field
from serving.base import ContextOverflowError

NO_ANSWER = "The text has no information about this question."
_ALIASES = {
    "find": "search", "lookup": "search", "look": "read", "show": "read", "open": "read",
    "ask": "map", "query": "map", "question": "map", "sub": "recurse", "delegate": "recurse",
    "final": "answer", "finish": "answer", "done": "answer", "respond": "answer",
}
_STOP = set("""a an and are as at be by did do does for from had has have he her his how in
is it its of on or she that the their them they this to was were what when where which who
whom whose why will with would you your about into than then there these those""".split())
# Words that restate a question without answering it.
_FILLER = {"text", "passage", "author", "story", "question", "answer", "about", "says",
           "book", "chapter", "mentions", "describes", "tells"}
_SELECT = 8  # chunks a search or grep selects
_STEPS_SHOWN = 6


class ActionError(Exception):
    """An action that cannot run as given: the model is told why."""


def parse_action(obj: dict[str, Any]) -> dict[str, Any]:
    """The action in a parsed reply, normalised; ActionError if it names none."""
    name = text_field(obj.get("action") or obj.get("type") or obj.get("name")).lower().strip()
    name = _ALIASES.get(name, name)
    if name not in P.ACTIONS:
        raise ActionError(f'"action" must be one of {", ".join(P.ACTIONS)}, not {name!r}'
                          if name else '"action" is missing')
    text = ""
    for key in ("text", "query", "pattern", "question", "answer", "input"):
        if obj.get(key) not in (None, ""):
            text = text_field(obj.get(key), 600)
            break
    chunks: list[int] = []
    for value in _as_list(obj.get("chunks", obj.get("chunk", obj.get("ids")))):
        for number in re.findall(r"-?\d+", str(value)):
            if int(number) not in chunks:
                chunks.append(int(number))
    return {"action": name, "text": text, "chunks": chunks}


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def keywords(question: str, most: int = 4) -> list[str]:
    words = [w for w in re.findall(r"[A-Za-z][A-Za-z'-]{2,}", question)
             if w.lower() not in _STOP]
    words.sort(key=lambda w: (-(w[0].isupper()), -len(w)))
    return list(dict.fromkeys(w.lower() for w in words))[:most]


class _State:
    """What the earlier steps left: rebuilt from their records, so a resumed run needs
    no replay."""

    def __init__(self, history: list[dict[str, Any]]) -> None:
        self.selection: list[int] = []
        self.evidence: list[dict[str, Any]] = []
        self.mapped: set[tuple[str, int]] = set()
        self.done: list[dict[str, Any]] = []
        self.searched = self.grepped = self.read_any = False
        for rec in history:
            self.selection = list(rec.get("selection", self.selection))
            self.evidence += rec.get("evidence", [])
            self.mapped |= {(q, c) for q, c in rec.get("mapped", [])}
            action = rec.get("action") or {}
            if not rec.get("error") and action:
                self.done.append(action)
                self.searched |= action.get("action") == "search"
                self.grepped |= action.get("action") == "grep"
                self.read_any |= action.get("action") != "answer"


class ActionsController(Controller):
    # --- one step ------------------------------------------------------------------------

    async def step(self, history: list[dict[str, Any]], trace: Trace) -> dict[str, Any]:
        started = time.monotonic()
        n = len(history) + 1
        st = _State(history)
        hint = self._natural(st)
        messages = [
            {"role": "system", "content": P.ACTIONS_SYSTEM},
            {"role": "user", "content": P.actions_prompt(
                question=self.question, about=self._about(), steps=self._steps(history),
                latest=history[-1].get("observation", "") if history else "",
                selection=st.selection, evidence=self._evidence_lines(st), hint=hint,
                last=n >= self.run.limits.max_iterations)},
        ]
        record: dict[str, Any] = {"n": n, "depth": self.depth, "final": None, "error": False}
        try:
            action, how, call_id, reply = await self._choose(messages, st, hint, trace)
            record.update(call_id=call_id, reply=reply, how=how)
            if how == "json" and action in st.done and action["action"] != "answer":
                trace.fallbacks.append({"depth": self.depth, "iteration": n,
                                        "what": f"repeated {action['action']}: took the next step"})
                action, how = hint, "repeat"
                record["how"] = how
            if action["action"] == "answer" and not (st.read_any or st.evidence):
                trace.fallbacks.append({"depth": self.depth, "iteration": n,
                                        "what": "answer before reading anything: searched first"})
                action = self._natural(st, reading_first=True)
                record["how"] = "fallback"
            record["action"] = action
            self.run.emit(self.depth, n, f"{action['action']} {action['text'][:60]}".strip())
            observation = await self._act(action, st, record, trace, call_id)
        except ActionError as exc:
            observation, record["error"] = f"error: {exc}", True
        except LimitReached as exc:
            observation, record["error"], record["stopped"] = f"stopped: {exc}", True, exc.limit
        record["observation"] = _bounded(observation, self.run.limits.output_chars)
        record["selection"] = st.selection
        record["seconds"] = round(time.monotonic() - started, 3)
        return record

    async def _choose(self, messages: list[dict[str, str]], st: _State, hint: dict[str, Any],
                      trace: Trace) -> tuple[dict[str, Any], str, int | None, str]:
        """(action, how it was read, the step's call id, the reply). One retry with the
        error; then the natural step, recorded as a fallback."""
        first = await self.run.call(messages, node="iteration", max_tokens=P.ACTION_MAX_TOKENS,
                                    trace=trace, parent=self.parent_call, schema=P.ACTION_SCHEMA)
        try:
            return parse_action(parse_object(first.text)), "json", first.call_id, first.text
        except (ParseError, ActionError) as exc:
            error = str(exc)
        retry = messages + [{"role": "assistant", "content": first.text[:400] or "{"},
                            {"role": "user", "content": P.retry_prompt(error)}]
        second = await self.run.call(retry, node="retry", max_tokens=P.ACTION_MAX_TOKENS,
                                     trace=trace, parent=first.call_id, schema=P.ACTION_SCHEMA)
        try:
            return parse_action(parse_object(second.text)), "retry", first.call_id, second.text
        except (ParseError, ActionError) as exc:
            trace.fallbacks.append({"depth": self.depth, "what": f"unusable reply twice ({exc}): "
                                    f"took the next step, {hint['action']}"})
            return dict(hint), "fallback", first.call_id, second.text

    async def _act(self, action: dict[str, Any], st: _State, record: dict[str, Any],
                   trace: Trace, call_id: int | None) -> str:
        name, text, chunks = action["action"], action["text"], action["chunks"]
        if name == "search":
            return self._search(text or self.question, st, trace)
        if name == "grep":
            return self._grep(text or "|".join(keywords(self.question)), st, trace)
        if name == "answer":
            return await self._answer(text, st, record, trace, call_id)
        ids = self._chunk_ids(chunks, st, name)
        if name == "read":
            return self._read(ids, trace)
        if name == "map":
            return await self._map(text or self.question, ids, st, record, trace, call_id)
        return await self._recurse(text or self.question, ids, record, trace, call_id)

    # --- actions ---------------------------------------------------------------------------

    def _search(self, query: str, st: _State, trace: Trace) -> str:
        try:
            hits = self.view.search(query, _SELECT)
        except TomesError as exc:
            raise ActionError(f"search failed: {exc.cause}") from None
        st.selection = [h["chunk_id"] for h in hits]
        trace.see(st.selection)
        if not hits:
            return f'search "{query}": no chunks found'
        lines = [f"[{h['chunk_id']}] {quote(h['text'], query, 150)}" for h in hits]
        return f'search "{query}": {len(hits)} chunks\n' + "\n".join(lines)

    def _grep(self, pattern: str, st: _State, trace: Trace) -> str:
        try:
            matches = self.view.grep(pattern, limit=500)
        except TomesError:
            matches = self.view.grep(re.escape(pattern), limit=500)  # meant literally
        counts: dict[int, int] = {}
        first: dict[int, dict[str, Any]] = {}
        for m in matches:
            if m["chunk_id"] is not None:
                counts[m["chunk_id"]] = counts.get(m["chunk_id"], 0) + 1
                first.setdefault(m["chunk_id"], m)
        ranked = sorted(counts, key=lambda c: -counts[c])[:_SELECT]
        st.selection = ranked
        trace.see(ranked)
        if not matches:
            return f'grep "{pattern}": no matches'
        lines = [f"[{cid}] {counts[cid]} match(es): ...{self._around(first[cid])}..."
                 for cid in ranked]
        return (f'grep "{pattern}": {len(matches)} matches in {len(counts)} chunks\n'
                + "\n".join(lines))

    def _around(self, match: dict[str, Any], width: int = 70) -> str:
        chunk = self.run.env.chunk(match["chunk_id"])
        at = match["start"] - chunk.start
        return " ".join(chunk.text[max(0, at - width):at + len(match["text"]) + width].split())

    def _chunk_ids(self, chunks: list[int], st: _State, name: str) -> list[int]:
        known = {c.id for c in self.view.chunks}
        if chunks:
            ids = [c for c in chunks if c in known]
            if not ids:
                shown = ", ".join(str(c) for c in chunks[:5])
                raise ActionError(f"no chunk {shown} in this text; use the ids that search "
                                  "or grep showed")
            return ids
        ids = [c for c in st.selection if c in known]
        if not ids:
            raise ActionError(f"{name} needs chunks: search or grep first, or list ids in \"chunks\"")
        return ids

    def _read(self, ids: list[int], trace: Trace) -> str:
        share = max(200, self.run.limits.output_chars // max(1, len(ids)))
        parts = []
        for cid in ids:
            c = self.run.env.chunk(cid)
            title = self.run.env.document(c.document_id).title
            page = f", p.{c.page}" if c.page else ""
            parts.append(f"[{cid}] ({title}, chars {c.start}-{c.end}{page})\n"
                         + _bounded(c.text, share))
        trace.see(ids)
        trace.read_all(ids)
        return "\n\n".join(parts)

    async def _map(self, question: str, ids: list[int], st: _State, record: dict[str, Any],
                   trace: Trace, call_id: int | None) -> str:
        cut = ids[self.run.limits.map_chunks:]
        ids = ids[:self.run.limits.map_chunks]
        replies = await asyncio.gather(
            *(self._map_one(question, cid, trace, call_id) for cid in ids), return_exceptions=True)
        lines, evidence = [], []
        for cid, reply in zip(ids, replies):
            if isinstance(reply, LimitReached):
                raise reply
            if isinstance(reply, BaseException) and not isinstance(reply, ContextOverflowError):
                raise reply
            if isinstance(reply, BaseException):
                lines.append(f"[{cid}] error: {reply}")
                continue
            trace.read_all([cid])
            if is_no_info(reply) or reply.strip().upper().startswith("NONE"):
                lines.append(f"[{cid}] NONE")
                continue
            lines.append(f"[{cid}] {reply}")
            evidence.append({"chunks": [cid], "text": reply})
            trace.note(f"chunk {cid}: {reply}")
        record["mapped"] = [[question, cid] for cid in ids]
        record["evidence"] = evidence
        st.evidence += evidence
        more = f" ({len(cut)} more chunks not read: map at most {len(ids)} at once)" if cut else ""
        return f'map "{question}" over {len(ids)} chunks{more}:\n' + "\n".join(lines)

    async def _map_one(self, question: str, chunk_id: int, trace: Trace, call_id: int | None) -> str:
        chunk = self.run.env.chunk(chunk_id)
        passage = chunk.text
        messages = [{"role": "system", "content": P.MAP_SYSTEM},
                    {"role": "user", "content": P.map_prompt(passage, question, f"chunk {chunk_id}")}]
        while not self.run.fits(messages, P.MAP_MAX_TOKENS) and len(passage) > 200:
            passage = passage[: int(len(passage) * 0.8)] + " …"
            messages[1]["content"] = P.map_prompt(passage, question, f"chunk {chunk_id}")
        response = await self.run.call(messages, node="map", max_tokens=P.MAP_MAX_TOKENS,
                                       trace=trace, parent=call_id, schema=P.ANSWER_SCHEMA)
        return _answer_text(response.text)

    async def _recurse(self, question: str, ids: list[int], record: dict[str, Any],
                       trace: Trace, call_id: int | None) -> str:
        depth = self.depth + 1
        if depth > self.run.limits.max_depth:
            trace.limits.append({"limit": "depth", "depth": self.depth})
            raise ActionError(f"cannot recurse: this is the deepest level allowed "
                              f"(max depth {self.run.limits.max_depth}); use map instead")
        view = self.view.of_chunks(ids)
        answer, how = await run_child(self.run, view, question, depth, call_id, trace)
        usable = how != "none" and bool(answer.strip()) and not is_no_info(answer) \
            and answer != NO_ANSWER
        if usable:
            record["evidence"] = [{"chunks": ids, "text": answer}]
            trace.note(f"helper on chunks {', '.join(map(str, ids))}: {answer}")
        return f'recurse "{question}" over {len(ids)} chunks -> {answer or "(no answer)"}'

    async def _answer(self, text: str, st: _State, record: dict[str, Any], trace: Trace,
                      call_id: int | None) -> str:
        if _usable(text, self.question):
            record["final"] = text
            return f"answer: {text}"
        answer, _how = await self._from_evidence(st, trace, call_id)
        record["final"] = answer
        return f"answer (written from the evidence): {answer}"

    async def _from_evidence(self, st: _State, trace: Trace, call_id: int | None,
                             call: bool = True) -> tuple[str, str]:
        if not st.evidence:
            return NO_ANSWER, "none"  # read, and found nothing: that is the answer
        best = max(st.evidence, key=lambda e: len(e["text"]))["text"]
        if not call:
            return best, "evidence"
        notes = "\n".join(f"[{', '.join(map(str, e['chunks']))}] {e['text']}"
                          for e in st.evidence[-12:])
        messages = [{"role": "system", "content": P.ANSWER_SYSTEM},
                    {"role": "user", "content": P.answer_prompt(self.question, notes)}]
        while not self.run.fits(messages, P.ANSWER_MAX_TOKENS) and len(notes) > 400:
            notes = notes[: int(len(notes) * 0.8)]
            messages[1]["content"] = P.answer_prompt(self.question, notes)
        response = await self.run.call(messages, node="answer", max_tokens=P.ANSWER_MAX_TOKENS,
                                       trace=trace, parent=call_id, schema=P.ANSWER_SCHEMA)
        answer = _answer_text(response.text)
        if not _usable(answer, self.question):
            return best, "evidence"
        return answer, "summary"

    async def partial(self, history: list[dict[str, Any]], limit: str,
                      trace: Trace) -> tuple[str, str]:
        st = _State(history)
        if not st.evidence:
            return (f"No answer was found before the {limit.replace('_', ' ')} limit "
                    "stopped the work."), "none"
        last_call = next((r.get("call_id") for r in reversed(history) if r.get("call_id")), None)
        try:
            return await self._from_evidence(st, trace, last_call or self.parent_call,
                                             call=limit not in ("tokens", "wall_time"))
        except LimitReached:
            return await self._from_evidence(st, trace, None, call=False)

    # --- prompts -------------------------------------------------------------------------

    def _natural(self, st: _State, reading_first: bool = False) -> dict[str, Any]:
        """The step a small model should take next."""
        unmapped = [c for c in st.selection if (self.question, c) not in st.mapped]
        if st.evidence and not reading_first:
            return {"action": "answer", "text": "", "chunks": []}
        if unmapped:
            return {"action": "map", "text": self.question, "chunks": []}
        if not st.searched:
            return {"action": "search", "text": self.question, "chunks": []}
        if not st.grepped and keywords(self.question):
            return {"action": "grep", "text": "|".join(keywords(self.question)), "chunks": []}
        return {"action": "answer", "text": "", "chunks": []}

    def _about(self) -> str:
        chunks = self.view.chunks
        tokens = sum(c.n_tokens for c in chunks) or len(self.view.text) // 4
        ids = [c.id for c in chunks]
        span = (f"ids {ids[0]}-{ids[-1]}" if len(ids) > 8 else "ids " + ", ".join(map(str, ids))) \
            if ids else "no chunk ids"
        if self.depth == 0:
            docs = len(self.run.env.documents)
            return (f"{docs} document{'s' if docs > 1 else ''}, {len(chunks)} chunks ({span}), "
                    f"about {tokens:,} tokens.")
        return (f"a part of it, {len(chunks)} chunks ({span}), about {tokens:,} tokens. You are "
                f"a helper at depth {self.depth} (deepest allowed: {self.run.limits.max_depth}).")

    def _steps(self, history: list[dict[str, Any]]) -> list[str]:
        lines = []
        for rec in history[-_STEPS_SHOWN:]:
            a = rec.get("action") or {}
            chunks = f" chunks {a['chunks']}" if a.get("chunks") else ""
            text = f' "{a.get("text", "")[:80]}"' if a.get("text") else ""
            obs = " ".join(rec.get("observation", "").split())
            obs = obs if len(obs) <= 160 else obs[:159] + "…"
            lines.append(f"{rec['n']}. {a.get('action', '?')}{text}{chunks} -> {obs}")
        return lines

    @staticmethod
    def _evidence_lines(st: _State) -> list[str]:
        return [f"[{', '.join(map(str, e['chunks']))}] {e['text'][:200]}" for e in st.evidence[-8:]]


def _answer_text(raw: str) -> str:
    try:
        obj = parse_object(raw)
        text = text_field(obj.get("answer"), 1500)
    except ParseError:
        text = text_field(raw, 1500)
    return text.strip()


def _usable(text: str, question: str) -> bool:
    """An answer, not a blank, a placeholder or the question said back (small models
    answer "The text is about what the author proposes ..." to "What does the author
    propose ...?")."""
    flat = " ".join(text.split()).strip().lower()
    if not flat or flat in ("...", "answer", "the answer", "none", "n/a", "unknown"):
        return False
    asked = {w[:5] for w in re.findall(r"[a-z]{3,}", question.lower())}
    new = [w for w in re.findall(r"[a-z]{3,}|\d+", flat)
           if w not in _STOP and w[:5] not in asked and w not in _FILLER]
    return len(new) >= 2 or (bool(new) and len(flat) < 40)


def _bounded(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[... {len(text) - limit:,} more characters cut]"
