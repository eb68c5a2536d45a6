"""Map records: building them from model replies (tolerating empty, copied or
unparseable fields), merging them, and turning the chunk ids they rest on into
provenance."""

from __future__ import annotations

import re
from typing import Any, TypedDict

from pipelines import _mapreduce_prompts as P
from pipelines._structured import confidence, text_field
from pipelines.environment import Environment
from pipelines.result import Provenance


class Record(TypedDict):
    """What a map (or a collapse) makes of its text, and the chunks it rests on."""

    chunk_ids: list[int]
    position: int
    extracted: str
    rationale: str
    answer: str
    confidence: float
    no_info: bool
    parsed: str  # "json" | "retry" | "fallback" | "merged" | "kept" | "first" | "empty"
    spans: list[list[int]]  # [document id, start, end] of the text it quotes or selected
    unsupported: list[str]  # why it is not borne out by its source; kept out of the reduce


_NO_INFO = re.compile(
    r"^\W*(no (relevant )?information|none|n/?a|not (mentioned|stated|given)|unknown|no content)\W*$",
    re.I,
)


def is_no_info(text: str) -> bool:
    return not text.strip() or bool(_NO_INFO.match(text.strip())) or P.NO_INFO.lower() in text.lower()[:40]


def clean(value: Any, source: str) -> str:
    """A field, cleared when the model copied it from the prompt's examples or template."""
    text = text_field(value)
    low = text.lower()
    if low in P.EXAMPLE_VALUES and low.rstrip(".") not in source.lower():
        return ""
    if low.startswith("<"):  # the template's placeholder, copied
        return ""
    return text


def build_record(obj: dict[str, Any] | None, raw: str, how: str, chunk_ids: list[int],
            position: int, mode: str, *, source: str) -> Record:
    if obj is None:
        # Unparseable even after the retry: the text itself is the extracted information.
        text = text_field(raw, 1500)
        empty = is_no_info(text)
        return Record(chunk_ids=chunk_ids, position=position, extracted=text, rationale="",
                      answer=text if mode == "summary" else "", confidence=2.0,
                      no_info=empty, parsed=how, spans=[], unsupported=[])
    extracted = clean(obj.get("extracted"), source)
    answer = clean(obj.get("answer"), source)
    conf = confidence(obj.get("confidence"))
    no_answer = is_no_info(answer)
    no_facts = is_no_info(extracted)
    if no_answer and not no_facts and conf > 1.5:
        answer = ""  # facts without an answer still inform the reduce
    return Record(
        chunk_ids=chunk_ids, position=position,
        extracted="" if no_facts else extracted,
        rationale=clean(obj.get("rationale"), source),
        answer="" if no_answer else answer,
        confidence=conf,
        no_info=no_answer and (no_facts or conf <= 1.5),
        parsed=how, spans=[], unsupported=[],
    )


def verify(rec: Record, obj: dict[str, Any] | None, source: str, doc_id: int, offset: int,
           *, quotes_required: bool = True) -> Record:
    """Check a written record against the text it was written from (``source``, which
    starts at ``offset`` in document ``doc_id``): its quotes must be found there, and the
    names in its facts must occur there. What fails is listed in ``unsupported``."""
    from pipelines import _grounding as G

    if rec["no_info"]:
        return rec
    reasons: list[str] = []
    claim = f"{rec['extracted']} {rec['answer']}"
    invented = G.invented_names(claim, source)
    if invented:
        reasons.append(f"names not in its text: {', '.join(invented[:5])}")
    quotes = [text_field(q, 600) for q in (obj or {}).get("quotes") or [] if text_field(q)]
    spans = []
    for q in quotes:
        found = G.find_quote(q, source)
        if found:
            spans.append([doc_id, offset + found[0], offset + found[1]])
    if quotes_required and obj is not None and not spans:
        reasons.append("no quote found in its text" if quotes else "no quote given")
    rec["spans"], rec["unsupported"] = spans, reasons
    return rec


def merge_records(obj: dict[str, Any] | None, raw: str, how: str, group: list[Record], mode: str) -> Record:
    chunk_ids: list[int] = []
    for note in group:
        chunk_ids += [c for c in note["chunk_ids"] if c not in chunk_ids]
    position = min(n["position"] for n in group)
    best = max(group, key=lambda n: (n["confidence"], -n["position"]))
    source = " ".join(f"{n['extracted']} {n['answer']}" for n in group)
    rec = build_record(obj, raw, how, chunk_ids, position, mode, source=source)
    rec["spans"] = [s for note in group for s in note["spans"]]
    if obj is not None:
        rec["parsed"] = "merged"
    if rec["no_info"] or not (rec["answer"] or rec["extracted"]):
        # A merge of notes that had information cannot have none: keep the best note.
        rec.update(answer=best["answer"], extracted=best["extracted"],
                   rationale=best["rationale"], confidence=best["confidence"], no_info=False)
    if obj is None or "confidence" not in obj:
        rec["confidence"] = best["confidence"]
    return rec


def ints(value: Any) -> list[int]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [int(value)]
    if isinstance(value, str):
        return [int(x) for x in re.findall(r"\d+", value)]
    if isinstance(value, list):
        return [i for v in value for i in ints(v)]
    return []


def dedupe_sentences(text: str) -> str:
    """Drop sentences the model already wrote (small models loop)."""
    seen: set[str] = set()
    out: list[str] = []
    for sentence in re.split(r"(?<=[.!?])\s+", text):
        key = " ".join(re.findall(r"\w+", sentence.lower()))
        if not key or key in seen:
            continue
        seen.add(key)
        out.append(sentence)
    return " ".join(out).strip()


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w{4,}", text.lower()))


def supporting_chunks(env: Environment, chunk_ids: list[int], claim: str, most: int = 3) -> list[int]:
    """The chunks (at most ``most``, in document order) that share most words with a
    claim: provenance for an answer written from a whole text in one call."""
    words = _words(claim)
    overlap = {cid: len(words & _words(env.chunk(cid).text)) for cid in chunk_ids}
    top = max(overlap.values(), default=0)
    if not top:
        return []
    best = sorted(chunk_ids, key=lambda c: -overlap[c])[:most]
    return [c for c in chunk_ids if c in best and overlap[c] * 2 >= top]


def provenance(env: Environment, cited: list[int], mapped: list[Record],
               hint: str = "") -> list[Provenance]:
    best: dict[int, Record] = {}
    for rec in mapped:
        for cid in rec["chunk_ids"]:
            if cid not in best or rec["confidence"] > best[cid]["confidence"]:
                best[cid] = rec
    out: list[Provenance] = []
    for cid in cited:
        if not env.has_chunk(cid):
            continue  # never cite what the target does not hold
        chunk = env.chunk(cid)
        rec = best.get(cid)
        # The answer's own words pick the quote; the record's where there is no answer.
        why = hint or (f"{rec['extracted']} {rec['answer']}" if rec else "")
        out.append(Provenance(
            chunk_id=cid, document_id=chunk.document_id,
            title=env.document(chunk.document_id).title, start=chunk.start, end=chunk.end,
            page=chunk.page, quote=quote(chunk.text, why),
        ))
    return out


def quote(text: str, hint: str, limit: int = 200) -> str:
    """The sentence of ``text`` that shares most words with ``hint`` (else the first)."""
    words = {w for w in re.findall(r"\w{4,}", hint.lower())}
    sentences = [s for s in re.split(r"(?<=[.!?])\s+|\n\s*\n", text) if s.strip()]
    if not sentences:
        return ""
    best = max(sentences, key=lambda s: len(words & set(re.findall(r"\w{4,}", s.lower()))))
    if not words & set(re.findall(r"\w{4,}", best.lower())):
        best = sentences[0]
    excerpt = " ".join(best.split())
    return excerpt if len(excerpt) <= limit else excerpt[: limit - 1].rstrip() + "…"
