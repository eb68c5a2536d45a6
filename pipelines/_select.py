"""Map-reduce by selection (grounding "select"): every step picks sentences by number.

A map picks the sentences of its piece that matter; a collapse picks among the picked;
the summary is the sentences the last pick kept, in document order; a question's answer
is written from picked sentences only and then checked against them. Records carry the
spans of their sentences, so provenance quotes the text exactly.

The functions take the running ``MapReduce`` job for its model calls and budgets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipelines import _extractive as X
from pipelines import _grounding as G
from pipelines import _records as R
from pipelines._records import Record
from pipelines._structured import text_field

if TYPE_CHECKING:
    from pipelines.mapreduce import MapReduce, Usage

Span = list[int]  # [document id, start, end] in the document's text


def sentence_text(job: MapReduce, span: Span) -> str:
    doc = job.env.document(span[0])
    return " ".join(job.env.text[doc.offset + span[1]:doc.offset + span[2]].split())


def _chunks_of(job: MapReduce, spans: list[Span], fallback: list[int]) -> list[int]:
    ids: list[int] = []
    for doc_id, start, end in spans:  # a sentence may run on into the next chunk
        for at in (start, end - 1):
            chunk = job.env.chunk_at(doc_id, at)
            if chunk is not None and chunk.id not in ids:
                ids.append(chunk.id)
    return ids or list(fallback)


def _picked(obj: dict[str, Any] | None, raw: str, n: int, most: int) -> list[int]:
    """Sentence numbers (1-based, distinct, in range, at most ``most``) in reading order."""
    numbers = R.ints(obj.get("sentences")) if obj else R.ints(raw)
    out: list[int] = []
    for i in numbers:
        if 1 <= i <= n and i not in out:
            out.append(i)
    return sorted(out[:most])


def _label(obj: dict[str, Any] | None, source: str) -> str:
    """The model's few words on what the sentences say, unless they name what the source
    does not (then they are invented, and dropped)."""
    label = text_field((obj or {}).get("label"), 200)
    return "" if not label or G.invented_names(label, source) else label


def _fit(job: MapReduce, numbered_of: Any, spans: list, room: int) -> tuple[list, int]:
    """Drop sentences from the end until the numbered text fits ``room``; (kept, dropped)."""
    kept = list(spans)
    while kept and job._tokens(numbered_of(kept)) > room:
        kept = kept[: len(kept) - max(1, len(kept) // 10)]
    return kept, len(spans) - len(kept)


def record(job: MapReduce, ids: list[int], position: int, spans: list[Span], how: str,
           label: str = "") -> Record:
    text = " ".join(sentence_text(job, s) for s in spans)
    return Record(
        chunk_ids=_chunks_of(job, spans, ids), position=position, extracted=text,
        rationale=label, answer=text if job.mode == "summary" else "",
        confidence=4.0 if spans else 1.0, no_info=not spans, parsed=how, spans=spans,
        unsupported=[],
    )


async def map_piece(job: MapReduce, ids: list[int], position: int, text: str, offset: int,
                    part: str, usage: Usage, fallbacks: list[str]) -> Record:
    """``text`` starts at ``offset`` in document ``ids[0]``'s text."""
    doc_id = job.env.chunk(ids[0]).document_id
    spans = G.sentences(text)
    most = X.map_keep(len(spans)) if job.mode == "summary" else X.QA_SENTENCES
    room = job.select_budget()

    def numbered(kept: list) -> str:
        return G.numbered(text, kept)

    spans, cut = _fit(job, numbered, spans, room)
    if cut:
        fallbacks.append(f"map: {cut} sentences at the end of piece {position + 1} did not fit "
                         "the numbered prompt and were not read")
    if not spans:
        return record(job, ids, position, [], "empty")
    obj, raw, how = await job._structured(
        X.SYSTEM_SELECT, X.select_prompt(job.mode, numbered(spans), job.question, most, part),
        node="map", schema=X.select_schema(len(spans), most, most if job.mode == "summary" else 0),
        max_tokens=X.SELECT_MAX_TOKENS,
        usage=usage)
    chosen = _picked(obj, raw, len(spans), most)
    if not chosen and job.mode == "summary":
        # Every piece of a summary has something to say: its first sentence stands in.
        chosen = [1]
        how = "first"
    picked = [[doc_id, offset + spans[i - 1][0], offset + spans[i - 1][1]] for i in chosen]
    return record(job, ids, position, picked, how, _label(obj, text))


async def merge(job: MapReduce, group: list[Record], usage: Usage) -> Record:
    """One record from a group's sentences: the pick among the picked."""
    spans = sorted((s for note in group for s in note["spans"]), key=lambda s: (s[0], s[1]))
    ids = [c for note in group for c in note["chunk_ids"]]
    position = min(n["position"] for n in group)
    most = max(2, min(12, len(spans) // 2)) if job.mode == "summary" else X.QA_SENTENCES
    if len(spans) <= most:
        return {**record(job, ids, position, spans, "kept"), "confidence": max(n["confidence"] for n in group)}
    texts = [sentence_text(job, s) for s in spans]
    listing = "\n".join(f"[{i + 1}] {t}" for i, t in enumerate(texts))
    obj, raw, how = await job._structured(
        X.SYSTEM_SELECT, X.select_prompt(job.mode, listing, job.question, most),
        node="collapse", schema=X.select_schema(len(spans), most, most if job.mode == "summary" else 0),
        max_tokens=X.SELECT_MAX_TOKENS,
        usage=usage)
    chosen = _picked(obj, raw, len(spans), most) or list(range(1, most + 1))
    return record(job, ids, position, [spans[i - 1] for i in chosen], "merged",
                  _label(obj, " ".join(texts)))


async def summarize(job: MapReduce, notes: list[Record], usage: Usage,
                    fallbacks: list[str]) -> tuple[str, list[int]]:
    """The summary: the sentences the final pick keeps, in document order."""
    spans = sorted((s for note in notes for s in note["spans"]), key=lambda s: (s[0], s[1]))
    most = X.SUMMARY_SENTENCES[job.length]
    if len(spans) > most:
        texts = [sentence_text(job, s) for s in spans]
        listing = "\n".join(f"[{i + 1}] {t}" for i, t in enumerate(texts))
        obj, raw, _how = await job._structured(
            X.SYSTEM_SELECT, X.select_prompt("summary", listing, None, most), node="reduce",
            schema=X.select_schema(len(spans), most, most), max_tokens=X.SELECT_MAX_TOKENS, usage=usage)
        chosen = _picked(obj, raw, len(spans), most)
        if not chosen:
            fallbacks.append(f"reduce: the final pick chose no sentence; the first {most} "
                             "picked sentences are the summary")
            chosen = list(range(1, most + 1))
        spans = [spans[i - 1] for i in chosen]
    answer = " ".join(sentence_text(job, s) for s in spans)
    return answer, _chunks_of(job, spans, [c for n in notes for c in n["chunk_ids"]])


async def answer(job: MapReduce, spans: list[Span], usage: Usage, node: str,
                 fallback_ids: list[int]) -> tuple[str, list[int], list[Span]]:
    """A short answer written from the picked sentences only: (answer, chunk ids, the
    sentences it rests on). The caller checks it against them."""
    texts = [sentence_text(job, s) for s in spans]
    listing = "\n".join(f"[{i + 1}] {t}" for i, t in enumerate(texts))
    obj, raw, _how = await job._structured(
        X.SYSTEM_SELECT, X.answer_prompt(listing, job.question), node=node,
        schema=X.answer_schema(len(spans)), max_tokens=X.ANSWER_MAX_TOKENS, usage=usage)
    reply = text_field((obj or {}).get("answer")) if obj else text_field(raw, 600)
    chosen = _picked(obj, "", len(spans), X.QA_SENTENCES) if obj else []
    cited = [spans[i - 1] for i in chosen] or spans
    return reply, _chunks_of(job, cited, fallback_ids), cited


def evidence(job: MapReduce, ids: list[int], text: str, offset: int) -> list[Span]:
    """Every sentence of a text that fits one call, as spans (the direct path)."""
    doc_id = job.env.chunk(ids[0]).document_id
    spans = G.sentences(text)
    return [[doc_id, offset + a, offset + b] for a, b in spans]


def listing_fits(job: MapReduce, spans: list[Span], room: int) -> list[Span]:
    def numbered(kept: list) -> str:
        return "\n".join(f"[{i + 1}] {sentence_text(job, s)}" for i, s in enumerate(kept))

    kept, _cut = _fit(job, numbered, spans, room)
    return kept
