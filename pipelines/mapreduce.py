"""Map-reduce over a long document or corpus, after LLM x MapReduce.

``plan`` cuts the target's chunks into pieces that fit the model's window; ``map`` turns
each piece (in parallel, one ``Send`` each) into a structured record: extracted
information, rationale, answer or NO INFORMATION, a confidence on a stated 1-5 scale and
the chunk id. ``collect`` drops records with no information; ``collapse`` merges records
in token-budgeted groups until they fit the reduce prompt; ``reduce`` answers once,
resolving conflicts by confidence, and names the chunks the answer rests on.

The graph is checkpointed in SQLite under the run id, so a run killed mid-map resumes
(``resume``) without calling the model again for pieces already mapped.
"""

from __future__ import annotations

import asyncio
import operator
from typing import Annotated, Any, TypedDict

from app.errors import TomesError
from app.events import Event, OnEvent, ignore
from pipelines import _mapreduce_prompts as P
from pipelines import _budget as B
from pipelines import _extractive as X
from pipelines import _grounding as G
from pipelines import _records as R
from pipelines import _select as S
from pipelines import _waves as W
from pipelines import _runs
from pipelines._records import Record
from pipelines._structured import ParseError, parse_object, text_field
from pipelines.environment import Environment
from pipelines.result import Result
from serving.base import ChatResponse
from serving.lm import (LM, events_scope, get_lm, parent_scope, replay_scope, run_scope, run_sync,
                        with_schema_instruction)

PIPELINE = "mapreduce"
MODES = ("qa", "summary")
# How records are kept true to the text: "select" picks sentences by number (nothing
# can be invented; the default for models whose preset says they write poorly),
# "verify" has records quote their text and checks the quotes and names, "off" trusts
# what the model writes. Every final answer is checked sentence by sentence either way.
GROUNDINGS = ("select", "verify", "off")
# Numbered sentences cost a few tokens each: budgets for them keep this share of the room.
_NUMBERED_SHARE = 0.85
MAX_LEVELS = 6  # collapse levels before notes are cut to fit instead
_SAFETY = 48  # tokens kept free: joining texts can tokenize a little differently
_RETRY_RESERVE = 64  # the retry's extra turn (the error message, a cut-down echo)
# By default a map call reads consecutive chunks up to the map budget, at most this many
# tokens: far fewer calls than one per chunk (bench/mapreduce_peers.py, a whole book:
# 0.64x the tokens, 0.17x the wall time; the 135M model's summaries also stay closer to
# the text), while long windows are read only in pieces that models read reliably.
AUTO_MAP_TOKENS = 16_000


# --- state -----------------------------------------------------------------------------


class Piece(TypedDict):
    """What one map call reads: consecutive chunks of one document (one, by default),
    or a part of a chunk too big for the prompt."""

    chunk_ids: list[int]
    index: int  # position in document order
    start: int  # span within the chunks' joined text
    end: int
    part: int
    parts: int


class Usage(TypedDict, total=False):
    calls: int
    cache_hits: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int  # of prompt_tokens, read from the server's prefix cache


def _add_usage(a: Usage | None, b: Usage | None) -> Usage:
    out: Usage = dict(a or {})  # type: ignore[assignment]
    for key, value in (b or {}).items():
        out[key] = out.get(key, 0) + value  # type: ignore[literal-required]
    return out


class State(TypedDict, total=False):
    mode: str
    question: str | None
    length: str
    style: str | None
    pieces: list[Piece]
    direct: bool  # the whole target fits one call: no map, no collapse
    map_step: int | None  # the call-tree row the map calls sit under
    mapped: Annotated[list[Record], operator.add]
    notes: list[Record]
    level: int
    dropped: int
    answer: str
    cited: list[int]
    support: dict[str, Any]  # the final answer's sentences judged against what it cites
    usage: Annotated[Usage, _add_usage]
    # Where a reply could not be used as asked and something else stood in: said in the
    # result's details, never silent.
    fallbacks: Annotated[list[str], operator.add]


class MapTask(TypedDict):
    piece: Piece
    total: int
    step: int | None


def default_grounding(lm: LM) -> str:
    from serving import presets

    preset = presets.of(lm.backend.name, lm.model)
    return "select" if preset is not None and preset.extractive else "verify"


# --- the graph -------------------------------------------------------------------------


class MapReduce:
    """One map-reduce job over an Environment; ``graph()`` is its LangGraph."""

    def __init__(
        self, env: Environment, lm: LM, *, mode: str, question: str | None = None,
        length: str = "medium", style: str | None = None, map_tokens: int | None = None,
        on_event: OnEvent = ignore, grounding: str | None = None, strict: bool = False,
    ) -> None:
        if grounding is None:
            from app.settings import get_settings

            grounding = get_settings().grounding
        grounding = default_grounding(lm) if grounding == "auto" else grounding
        if grounding not in GROUNDINGS:
            raise TomesError(f"unknown grounding {grounding!r}",
                             f"use one of auto, {', '.join(GROUNDINGS)}")
        if mode not in MODES:
            raise TomesError(f"unknown map-reduce mode {mode!r}", f"use one of {', '.join(MODES)}")
        if length not in P.LENGTHS:
            raise TomesError(f"unknown summary length {length!r}", f"use one of {', '.join(P.LENGTHS)}")
        if mode == "qa" and not (question or "").strip():
            raise TomesError("the question is empty", "ask a question in words")
        self.env = env
        self.lm = lm
        self.mode = mode
        self.question = question.strip() if question else None
        self.length = length
        self.style = style
        # Text per map call: None packs consecutive chunks up to the map budget (capped
        # at AUTO_MAP_TOKENS), 0 maps each chunk alone (chunk-level records), a number
        # packs up to that many tokens.
        if map_tokens is None:
            from app.settings import get_settings

            map_tokens = get_settings().map_tokens
        if map_tokens is not None and map_tokens < 0:
            raise TomesError(f"map_tokens is {map_tokens}", "use 0 (one chunk per map call) or more")
        self.map_tokens = map_tokens
        self.on_event = on_event
        self.grounding = grounding
        self.select = grounding == "select"
        self.strict = bool(strict)
        self.mapped_count = 0
        self._json = bool(getattr(lm.backend, "supports_json_schema", False))
        self._reduce_max = P.ANSWER_MAX_TOKENS if mode == "qa" else P.LENGTHS[length][1]

    # budgets -------------------------------------------------------------------------

    def _tokens(self, text: str) -> int:
        return self.lm.count_tokens(text)

    def _prompt_tokens(self, messages: list[dict[str, str]], schema: dict[str, Any] | None) -> int:
        """Prompt tokens as the LM will send them (schema note and template included)."""
        if schema is not None and not self._json:
            messages = with_schema_instruction(messages, schema)
        return self.lm.count_messages(messages)

    def _room(self, system: str, skeleton: str, max_tokens: int,
              schema: dict[str, Any] | None) -> int:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": skeleton}]
        reserve = _SAFETY + (_RETRY_RESERVE if schema is not None else 0)
        room = self.lm.context_window - self._prompt_tokens(messages, schema) - max_tokens - reserve
        if room < 64:
            raise TomesError(
                f"the model's window ({self.lm.context_window} tokens) leaves no room for "
                "the text after the prompt and the reply",
                "choose a model with a larger context window (`--backend` / TOMES_MODEL)",
            )
        return room

    def map_budget(self) -> int:
        if self.select:
            return int(self.select_budget() * _NUMBERED_SHARE)
        quoted = self.grounding == "verify"
        return self._room(P.SYSTEM_MAP, P.map_prompt(self.mode, "", self.question, " (part 99 of 99)",
                                                     quoted),
                          P.QUOTED_MAX_TOKENS if quoted else P.RECORD_MAX_TOKENS,
                          P.QUOTED_SCHEMA if quoted else P.RECORD_SCHEMA)

    def select_budget(self) -> int:
        """Room for numbered sentences in a selection prompt."""
        return self._room(X.SYSTEM_SELECT, X.answer_prompt("", self.question or "?")
                          if self.mode == "qa" else X.select_prompt("summary", "", None, 16),
                          max(X.SELECT_MAX_TOKENS, X.ANSWER_MAX_TOKENS), X.select_schema(400, 16))

    def collapse_budget(self) -> int:
        if self.select:
            return int(self.select_budget() * _NUMBERED_SHARE)
        return self._room(P.SYSTEM_MERGE, P.collapse_prompt(self.mode, "", self.question),
                          P.RECORD_MAX_TOKENS, P.RECORD_SCHEMA)

    def direct_budget(self) -> int:
        if self.select:
            return int(self.select_budget() * _NUMBERED_SHARE)
        if self.mode == "qa":
            return self._room(P.SYSTEM_DIRECT, P.direct_qa_prompt("", self.question),
                              self._reduce_max, P.DIRECT_SCHEMA)
        return self._room(P.SYSTEM_SUMMARY, P.direct_summary_prompt("", self.length, self.style),
                          self._reduce_max, None)

    def reduce_budget(self) -> int:
        if self.select:
            return int(self.select_budget() * _NUMBERED_SHARE)
        if self.mode == "qa":
            return self._room(P.SYSTEM_MERGE, P.reduce_qa_prompt("", self.question),
                              self._reduce_max, P.ANSWER_SCHEMA)
        return self._room(P.SYSTEM_SUMMARY, P.reduce_summary_prompt("", self.length, self.style),
                          self._reduce_max, None)

    # model calls ---------------------------------------------------------------------

    async def _call(self, messages: list[dict[str, str]], *, node: str, max_tokens: int,
                    schema: dict[str, Any] | None, usage: Usage) -> ChatResponse:
        response = await self.lm.achat(
            messages, max_tokens=max_tokens, temperature=0.0, json_schema=schema, node=node,
            # Without a grammar, small models ramble on after the object.
            stop=None if (schema and self._json) else ["\n\n\n"],
        )
        if response.cache_hit:
            usage["cache_hits"] = usage.get("cache_hits", 0) + 1
        else:
            usage["calls"] = usage.get("calls", 0) + 1
            usage["prompt_tokens"] = usage.get("prompt_tokens", 0) + response.usage.prompt_tokens
            usage["completion_tokens"] = usage.get("completion_tokens", 0) + response.usage.completion_tokens
            usage["cached_tokens"] = usage.get("cached_tokens", 0) + response.usage.cached_tokens
        return response

    async def _structured(self, system: str, prompt: str, *, node: str, schema: dict[str, Any],
                          max_tokens: int, usage: Usage) -> tuple[dict[str, Any] | None, str, str]:
        """(object or None, raw reply, how it was parsed). One retry with the parse error;
        after that the caller falls back to the raw text. Never raises on a bad reply."""
        messages = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
        first = await self._call(messages, node=node, max_tokens=max_tokens, schema=schema, usage=usage)
        try:
            return parse_object(first.text), first.text, "json"
        except ParseError as exc:
            error = str(exc)
        retry = messages + [
            {"role": "assistant", "content": first.text},
            {"role": "user", "content": P.retry_prompt(error)},
        ]
        # The echoed reply is cut so the retry fits wherever the first call did.
        spare = self.lm.context_window - max_tokens - _SAFETY - self._prompt_tokens(retry[:2] + retry[3:], schema)
        retry[2]["content"] = B.truncate(first.text, max(0, min(spare, 200)), self._tokens) or "{"
        with parent_scope(first.call_id):  # the retry sits under the call it repairs
            second = await self._call(retry, node=node, max_tokens=max_tokens, schema=schema, usage=usage)
        try:
            return parse_object(second.text), second.text, "retry"
        except ParseError:
            raw = first.text if len(first.text.strip()) >= len(second.text.strip()) else second.text
            return None, raw, "fallback"

    # nodes ---------------------------------------------------------------------------

    def plan(self, state: State) -> dict[str, Any]:
        budget = self.map_budget()
        chunks = self.env.chunks
        limit = min(budget, AUTO_MAP_TOKENS if self.map_tokens is None else self.map_tokens)
        if self.map_tokens != 0:
            sizes = self.lm.tokenizer.count_many([c.text for c in chunks])
            breaks = W.breaks_of(chunks)
            if chunks and not breaks and len(W.greedy(sizes, limit)) == 1:
                ids = [c.id for c in chunks]
                whole = Piece(chunk_ids=ids, index=0, start=0, end=len(self._joined(ids)),
                              part=0, parts=1)
                if self._fits_direct(whole, limit):
                    return {"pieces": [whole], "direct": True}
            # As few call waves as the backend's slots allow, the calls evened out.
            ranges = W.plan(sizes, limit=limit, capacity=self.lm.capacity, breaks=breaks)
            groups = [list(chunks[a:b]) for a, b in ranges]
        else:
            groups = [[c] for c in chunks]
        pieces: list[Piece] = []
        for group in groups:
            text = self._joined([c.id for c in group])
            spans = B.split(text, budget, self._tokens)
            for part, (start, end) in enumerate(spans):
                pieces.append(Piece(chunk_ids=[c.id for c in group], index=len(pieces),
                                    start=start, end=end, part=part, parts=len(spans)))
        self.on_event(Event("map", 0, len(pieces), message="mapping chunks"))
        step = self.lm.begin_step("map", f"map {len(pieces)} pieces")
        return {"pieces": pieces, "direct": False, "map_step": step}

    def _fits_direct(self, piece: Piece, limit: int) -> bool:
        """The whole target fits one map call and one answer prompt: reading it in one
        call beats a map and a reduce over one record."""
        n = self._tokens(self._joined(piece["chunk_ids"]))
        return n <= limit and n <= self.direct_budget()

    def _joined(self, chunk_ids: list[int]) -> str:
        """The text of consecutive chunks, exactly as the document has it."""
        first, last = self.env.chunk(chunk_ids[0]), self.env.chunk(chunk_ids[-1])
        if first.id == last.id:
            return first.text
        offset = self.env.document(first.document_id).offset
        return self.env.text[offset + first.start:offset + last.end]

    def fan_out(self, state: State) -> list[Any]:
        from langgraph.types import Send

        if state.get("direct"):
            return ["direct"]
        pieces = state["pieces"]
        step = state.get("map_step")
        return [Send("map", MapTask(piece=p, total=len(pieces), step=step)) for p in pieces]

    async def direct(self, state: State) -> dict[str, Any]:
        ids = state["pieces"][0]["chunk_ids"]
        text = self._joined(ids)
        self.on_event(Event("reduce", 0, 1, message="the text fits one call"))
        usage: Usage = {}
        fallbacks: list[str] = []
        with self.lm.step("direct", "read in one call"):
            if self.select:
                answer, cited = await self._direct_select(ids, text, usage, fallbacks)
            else:
                answer, cited = await self._direct(ids, text, usage, fallbacks)
        answer, support = self._checked(answer, cited)
        self.on_event(Event("reduce", 1, 1, message="done"))
        return {"answer": answer, "cited": cited, "usage": usage, "fallbacks": fallbacks,
                "support": support}

    async def _direct_select(self, ids: list[int], text: str, usage: Usage,
                             fallbacks: list[str]) -> tuple[str, list[int]]:
        spans = S.evidence(self, ids, text, self.env.chunk(ids[0]).start)
        kept = S.listing_fits(self, spans, self.select_budget())
        if len(kept) < len(spans):
            fallbacks.append(f"direct: {len(spans) - len(kept)} sentences at the end did not fit "
                             "the numbered prompt and were not read")
        if self.mode == "summary":
            whole = S.record(self, ids, 0, kept, "direct")
            return await S.summarize(self, [whole], usage, fallbacks)
        return await self._answer_select(kept, ids, usage, node="direct")

    async def _answer_select(self, spans: list[S.Span], ids: list[int], usage: Usage,
                             node: str) -> tuple[str, list[int]]:
        if not spans:
            return NO_ANSWER, []
        answer, cited, _rests_on = await S.answer(self, spans, usage, node, ids)
        if not _usable(answer):
            return NO_ANSWER, []
        return answer, cited

    def _checked(self, answer: str, cited: list[int]) -> tuple[str, dict[str, Any]]:
        """The answer's sentences judged against the chunks it cites; with ``strict``,
        only the supported ones are kept."""
        if answer == NO_ANSWER or not cited:
            return answer, {"sentences": 0, "supported": 0, "unsupported": []}
        source = "\n".join(self.env.chunk(c).text for c in cited if self.env.has_chunk(c))
        judged = G.support(answer, source)
        bad = [j for j in judged if not j.supported]
        report = {"sentences": len(judged), "supported": len(judged) - len(bad),
                  "unsupported": [j.to_dict() for j in bad]}
        if self.strict and bad:
            kept = " ".join(j.sentence for j in judged if j.supported)
            report["dropped"] = len(bad)
            answer = kept or (NO_ANSWER if self.mode == "qa" else
                              "No sentence of the summary was supported by the text it cites.")
        return answer, report

    async def _direct(self, ids: list[int], text: str, usage: Usage,
                      fallbacks: list[str]) -> tuple[str, list[int]]:
        if self.mode == "qa":
            obj, raw, _how = await self._structured(
                P.SYSTEM_DIRECT, P.direct_qa_prompt(text, self.question), node="direct",
                schema=P.DIRECT_SCHEMA, max_tokens=self._reduce_max, usage=usage,
            )
            answer = text_field((obj or {}).get("answer")) if obj else text_field(raw, 1500)
            if obj is None:
                fallbacks.append("direct: the reply was not the JSON asked for, even after a "
                                 "retry; its text is the answer")
            if not _usable(answer):
                answer, cited = NO_ANSWER, []
            else:
                why = text_field((obj or {}).get("rationale"))
                cited = R.supporting_chunks(self.env, ids, f"{answer} {why}")
        else:
            messages = [
                {"role": "system", "content": P.SYSTEM_SUMMARY},
                {"role": "user", "content": P.direct_summary_prompt(text, self.length, self.style)},
            ]
            response = await self._call(messages, node="direct", max_tokens=self._reduce_max,
                                        schema=None, usage=usage)
            answer, cited = R.dedupe_sentences(response.text.strip()), list(ids)
        return answer, cited

    async def map(self, task: MapTask) -> dict[str, Any]:
        piece = task["piece"]
        ids = piece["chunk_ids"]
        text = self._joined(ids)[piece["start"]:piece["end"]]
        part = f" (part {piece['part'] + 1} of {piece['parts']})" if piece["parts"] > 1 else ""
        usage: Usage = {}
        fallbacks: list[str] = []
        first = self.env.chunk(ids[0])
        offset = first.start + piece["start"]  # where ``text`` starts in its document
        with parent_scope(task.get("step")):
            if self.select:
                record = await S.map_piece(self, list(ids), piece["index"], text, offset, part,
                                           usage, fallbacks)
            else:
                quoted = self.grounding == "verify"
                obj, raw, how = await self._structured(
                    P.SYSTEM_MAP, P.map_prompt(self.mode, text, self.question, part, quoted),
                    node="map", schema=P.QUOTED_SCHEMA if quoted else P.RECORD_SCHEMA,
                    max_tokens=P.QUOTED_MAX_TOKENS if quoted else P.RECORD_MAX_TOKENS, usage=usage,
                )
                record = R.build_record(obj, raw, how, list(ids), piece["index"], self.mode, source=text)
                if quoted:
                    record = R.verify(record, obj, text, first.document_id, offset)
        self.mapped_count += 1
        label = f"chunk {ids[0]}" + (f"-{ids[-1]}" if len(ids) > 1 else "")
        self.on_event(Event("map", self.mapped_count, task["total"], message=label,
                            data={"chunk_id": ids[0], "chunk_ids": list(ids),
                                  "no_info": record["no_info"]}))
        return {"mapped": [record], "usage": usage, "fallbacks": fallbacks}

    def collect(self, state: State) -> dict[str, Any]:
        self.lm.end_step(state.get("map_step"))
        records = state.get("mapped", [])
        # An unsupported record never reaches the reduce as support.
        kept = self._order([r for r in records if not r["no_info"] and not r.get("unsupported")])
        return {"notes": kept, "level": 0, "dropped": len(records) - len(kept)}

    def route(self, state: State) -> str:
        notes = state.get("notes", [])
        if len(notes) <= 1 or state.get("level", 0) >= MAX_LEVELS:
            return "reduce"
        return "reduce" if self._fits(notes, self.reduce_budget()) else "collapse"

    async def collapse(self, state: State) -> dict[str, Any]:
        level = state.get("level", 0) + 1
        budget = self.collapse_budget()
        notes = [B.fit_note(n, budget, self._render_one, self._tokens) for n in state["notes"]]
        groups = B.group_notes(notes, [self._tokens(self._render_one(n, 1)) + 2 for n in notes], budget)
        if len(groups) == len(notes):
            # Every note fills a prompt on its own: pair them, each cut to half the room.
            notes = [B.fit_note(n, budget // 2, self._render_one, self._tokens) for n in notes]
            groups = [notes[i:i + 2] for i in range(0, len(notes), 2)]
        usage: Usage = {}
        done = 0
        self.on_event(Event("collapse", 0, len(groups), message=f"level {level}"))

        async def merge(group: list[Record]) -> Record:
            nonlocal done
            if len(group) == 1:
                merged = {**group[0], "parsed": "kept"}
            elif self.select:
                merged = await S.merge(self, group, usage)
            else:
                obj, raw, how = await self._structured(
                    P.SYSTEM_MERGE, P.collapse_prompt(self.mode, self._render(group), self.question),
                    node="collapse", schema=P.RECORD_SCHEMA, max_tokens=P.RECORD_MAX_TOKENS,
                    usage=usage,
                )
                merged = R.merge_records(obj, raw, how, group, self.mode)
            done += 1
            self.on_event(Event("collapse", done, len(groups), message=f"level {level}"))
            return merged

        with self.lm.step("collapse", f"collapse level {level}: {len(notes)} notes"):
            merged = await asyncio.gather(*(merge(g) for g in groups))
        raw = sum(1 for m in merged if m["parsed"] == "fallback")
        fallbacks = [f"collapse level {level}: {raw} merge replies were not the JSON asked for; "
                     "their raw text became the merged notes"] if raw else []
        return {"notes": self._order(list(merged)), "level": level, "usage": usage,
                "fallbacks": fallbacks}

    async def reduce(self, state: State) -> dict[str, Any]:
        notes = state.get("notes", [])
        self.on_event(Event("reduce", 0, 1, message="answering"))
        usage: Usage = {}
        if not notes:
            answer = NO_ANSWER if self.mode == "qa" else "The text has no content to summarize."
            self.on_event(Event("reduce", 1, 1, message="nothing to reduce"))
            return {"answer": answer, "cited": [], "usage": usage}
        budget = self.reduce_budget()
        notes = B.keep_within(notes, budget, self._render_one, self._tokens)
        fallbacks: list[str] = []
        with self.lm.step("reduce", f"reduce {len(notes)} notes"):
            if self.select and self.mode == "summary":
                answer, cited = await S.summarize(self, notes, usage, fallbacks)
            elif self.select:
                spans = [s for n in notes for s in n["spans"]]  # most confident first
                kept = S.listing_fits(self, spans, self.select_budget())
                answer, cited = await self._answer_select(
                    kept, [c for n in notes for c in n["chunk_ids"]], usage, node="reduce")
            elif self.mode == "qa":
                answer, cited = await self._reduce_qa(notes, usage, fallbacks)
            else:
                answer, cited = await self._reduce_summary(notes, usage, fallbacks)
        answer, support = self._checked(answer, cited)
        self.on_event(Event("reduce", 1, 1, message="done"))
        return {"answer": answer, "cited": cited, "usage": usage, "fallbacks": fallbacks,
                "support": support}

    async def _reduce_qa(self, notes: list[Record], usage: Usage,
                         fallbacks: list[str]) -> tuple[str, list[int]]:
        obj, _raw, _how = await self._structured(
            P.SYSTEM_MERGE, P.reduce_qa_prompt(self._render(notes), self.question), node="reduce",
            schema=P.ANSWER_SCHEMA, max_tokens=self._reduce_max, usage=usage,
        )
        best = max(notes, key=lambda n: (n["confidence"], -n["position"]))
        answer = text_field((obj or {}).get("answer"))
        if not _usable(answer):
            # The reduce said nothing usable: the most confident note answers.
            fallbacks.append(
                "reduce: the final answer came back " + ("empty or unparsed" if not answer else
                                                         f"as {answer[:60]!r}")
                + f"; the most confident note (chunk {best['chunk_ids'][0]}, confidence "
                f"{best['confidence']:.0f}) answers instead")
            return best["answer"] or best["extracted"], list(best["chunk_ids"])
        cited: list[int] = []
        for n in R.ints((obj or {}).get("notes")):
            if 1 <= n <= len(notes):
                cited += [c for c in notes[n - 1]["chunk_ids"] if c not in cited]
        if not cited:
            top = max(n["confidence"] for n in notes)
            for note in notes:
                if note["confidence"] == top:
                    cited += [c for c in note["chunk_ids"] if c not in cited]
        if len(cited) > 3:
            # Packed maps and merged notes cover many chunks each: cite the few that
            # carry the answer's words.
            why = text_field((obj or {}).get("rationale"))
            cited = R.supporting_chunks(self.env, cited, f"{answer} {why}", most=5) or cited
        return answer, cited

    async def _reduce_summary(self, notes: list[Record], usage: Usage,
                              fallbacks: list[str]) -> tuple[str, list[int]]:
        ordered = sorted(notes, key=lambda n: n["position"])
        messages = [
            {"role": "system", "content": P.SYSTEM_SUMMARY},
            {"role": "user", "content": P.reduce_summary_prompt(self._render(ordered), self.length, self.style)},
        ]
        response = await self._call(messages, node="reduce", max_tokens=self._reduce_max,
                                    schema=None, usage=usage)
        answer = R.dedupe_sentences(response.text.strip())
        if len(answer) < 20:
            fallbacks.append(f"reduce: the summary came back as {answer!r}, too short to be one; "
                             f"the {len(ordered)} notes, joined, are the summary instead")
            answer = R.dedupe_sentences(" ".join(n["answer"] or n["extracted"] for n in ordered))
        cited: list[int] = []
        for note in ordered:
            cited += [c for c in note["chunk_ids"] if c not in cited]
        return answer, cited

    # helpers -------------------------------------------------------------------------

    def _order(self, notes: list[Record]) -> list[Record]:
        if self.mode == "qa":  # the most confident first: they survive any cut
            return sorted(notes, key=lambda n: (-n["confidence"], n["position"]))
        return sorted(notes, key=lambda n: n["position"])

    def _render_one(self, note: Record, number: int) -> str:
        conf = f" (confidence {note['confidence']:.0f})" if self.mode == "qa" else ""
        answer = note["answer"]
        facts = note["extracted"] if note["extracted"] and note["extracted"] != answer else ""
        line = f"[{number}]{conf} {answer}".rstrip()
        if facts:
            line += f"\n    facts: {facts}"
        if self.mode == "qa" and note["rationale"]:
            line += f"\n    why: {note['rationale']}"
        return line

    def _render(self, notes: list[Record]) -> str:
        return "\n".join(self._render_one(n, i + 1) for i, n in enumerate(notes))

    def _fits(self, notes: list[Record], budget: int) -> bool:
        return self._tokens(self._render(notes)) <= budget

    def graph(self) -> Any:
        from langgraph.graph import END, START, StateGraph

        builder = StateGraph(State)
        builder.add_node("plan", self.plan)
        builder.add_node("map", self.map)
        builder.add_node("collect", self.collect)
        builder.add_node("collapse", self.collapse)
        builder.add_node("reduce", self.reduce)
        builder.add_node("direct", self.direct)
        builder.add_edge(START, "plan")
        builder.add_conditional_edges("plan", self.fan_out, ["map", "direct"])
        builder.add_edge("map", "collect")
        builder.add_conditional_edges("collect", self.route, ["collapse", "reduce"])
        builder.add_conditional_edges("collapse", self.route, ["collapse", "reduce"])
        builder.add_edge("reduce", END)
        builder.add_edge("direct", END)
        return builder


NO_ANSWER = "The text has no information about this question."


def _usable(answer: str) -> bool:
    """An answer worth returning: not empty, not NO INFORMATION, not the prompt's example."""
    return bool(answer) and not R.is_no_info(answer) and answer.lower() not in P.EXAMPLE_VALUES


# --- running ---------------------------------------------------------------------------


def summarize(target: str | int, *, length: str = "medium", style: str | None = None,
              map_tokens: int | None = None, on_event: OnEvent = ignore,
              run_id: str | None = None, lm: LM | None = None, grounding: str | None = None,
              strict: bool = False) -> Result:
    return run_sync(arun(target, mode="summary", length=length, style=style,
                         map_tokens=map_tokens, on_event=on_event, run_id=run_id, lm=lm,
                         grounding=grounding, strict=strict))


def ask(target: str | int, question: str, *, map_tokens: int | None = None,
        on_event: OnEvent = ignore, run_id: str | None = None, lm: LM | None = None,
        grounding: str | None = None, strict: bool = False) -> Result:
    return run_sync(arun(target, mode="qa", question=question, map_tokens=map_tokens,
                         on_event=on_event, run_id=run_id, lm=lm, grounding=grounding,
                         strict=strict))


def resume(run_id: str, *, on_event: OnEvent = ignore, lm: LM | None = None) -> Result:
    return run_sync(aresume(run_id, on_event=on_event, lm=lm))


async def arun(
    target: str | int, *, mode: str, question: str | None = None, length: str = "medium",
    style: str | None = None, map_tokens: int | None = None, on_event: OnEvent = ignore,
    run_id: str | None = None, lm: LM | None = None, grounding: str | None = None,
    strict: bool = False,
) -> Result:
    """Run map-reduce over ``target`` (a document or corpus) and record it as a Run."""
    lm = lm or get_lm()
    env = Environment.load(target, lm=lm)
    job = MapReduce(env, lm, mode=mode, question=question, length=length, style=style,
                    map_tokens=map_tokens, on_event=on_event, grounding=grounding,
                    strict=strict)  # validates the options
    job.map_budget()  # a window too small for any text fails here, before the Run exists
    params = {"mode": mode, "length": length, "style": style, "map_tokens": job.map_tokens,
              "grounding": job.grounding, "strict": job.strict, **_runs.serving_of(lm)}
    run_id = _runs.create_run(run_id, PIPELINE, env.target.label, job.question, params)
    return await _execute(job, run_id)


async def aresume(run_id: str, *, on_event: OnEvent = ignore, lm: LM | None = None) -> Result:
    """Continue a run from its last checkpoint; a finished run returns its result."""
    run, done = _runs.load_for_resume(run_id, PIPELINE)
    if done is not None:
        return done
    params = run["params"] or {}
    lm = lm or _runs.lm_for_run(run)
    env = Environment.load(run["target"], lm=lm)
    job = MapReduce(env, lm, mode=params.get("mode", "summary"), question=run["question"],
                    length=params.get("length", "medium"), style=params.get("style"),
                    map_tokens=params.get("map_tokens"), on_event=on_event,
                    # Runs from before grounding existed checkpointed unchecked records.
                    grounding=params.get("grounding", "off"), strict=params.get("strict", False))
    # What the run finished before it stopped is not asked again, cache on or off: a
    # collapse level killed mid-way has no checkpoint of its finished merges, and a
    # damaged checkpoints.db (set aside) has none of anything; the call log has them all.
    with replay_scope(run_id):
        return await _execute(job, run_id)


async def _execute(job: MapReduce, run_id: str) -> Result:
    _runs.mark_running(run_id)
    config = {
        "configurable": {"thread_id": run_id},
        # No "max_concurrency": LangGraph gates its checkpoint writes behind the same
        # semaphore, so finished maps would not be saved until queued maps ran. The
        # LM's own semaphore caps the backend at its capacity instead.
        "recursion_limit": 50 + 4 * MAX_LEVELS,
    }
    with _runs.failures_kept(run_id):
        with run_scope(run_id), events_scope(job.on_event):
            async with _runs.checkpointer() as saver:
                graph = job.graph().compile(checkpointer=saver)
                snapshot = await graph.aget_state(config)
                if snapshot.values:  # resuming: carry on from the last checkpoint
                    job.mapped_count = sum(
                        1 for t in snapshot.tasks if t.name == "map" and t.result is not None
                    ) + (len(snapshot.values.get("mapped", [])) if "map" not in snapshot.next else 0)
                    inputs = None
                else:
                    inputs = {"mode": job.mode, "question": job.question,
                              "length": job.length, "style": job.style}
                # "async": a step's checkpoint is saved while the next step runs (half the
                # overhead of "sync"); a finished task's writes are saved as it ends either
                # way, on the one SQLite connection in order, so a killed run loses none.
                final = await graph.ainvoke(inputs, config, durability="async")
    result = _result(job, run_id, final)
    _runs.finish_run(run_id, result.answer, result.to_dict())
    return result


def _result(job: MapReduce, run_id: str, final: dict[str, Any]) -> Result:
    mapped = final.get("mapped", [])
    usage = final.get("usage", {}) or {}
    parsed: dict[str, int] = {}
    for rec in mapped:
        parsed[rec["parsed"]] = parsed.get(rec["parsed"], 0) + 1
    fallbacks = list(final.get("fallbacks", []))
    unsupported = [r for r in mapped if r.get("unsupported")]
    if parsed.get("fallback"):
        fallbacks.insert(0, f"map: {parsed['fallback']} of {len(mapped)} replies were not the "
                            "JSON asked for, even after a retry; their raw text became the notes")
    return Result(
        answer=final.get("answer", ""),
        provenance=R.provenance(job.env, final.get("cited", []), mapped,
                                hint=final.get("answer", "")),
        run_id=run_id,
        pipeline=PIPELINE,
        calls=usage.get("calls", 0),
        cache_hits=usage.get("cache_hits", 0),
        prompt_tokens=usage.get("prompt_tokens", 0),
        completion_tokens=usage.get("completion_tokens", 0),
        cached_tokens=usage.get("cached_tokens", 0),
        details={
            "mode": job.mode, "question": job.question, "length": job.length, "style": job.style,
            "target": job.env.target.label, "pieces": len(final.get("pieces", [])),
            "direct": bool(final.get("direct")),
            "mapped": len(mapped), "dropped": final.get("dropped", 0),
            "collapse_levels": final.get("level", 0), "parsed": parsed,
            "backend": job.lm.backend.name, "model": job.lm.model,
            "fallbacks": fallbacks,
            "grounding": job.grounding, "strict": job.strict,
            # Records whose facts their own text does not bear out: never in the reduce.
            "unsupported_records": len(unsupported),
            "unsupported_examples": [
                {"chunk_ids": r["chunk_ids"][:3], "why": r["unsupported"],
                 "note": (r["answer"] or r["extracted"])[:200]} for r in unsupported[:5]],
            "support": final.get("support") or {},
        },
    )
