"""Grounded reading: records checked against their text, sentence selection for models
that write poorly, answers judged sentence by sentence."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from app import settings
from app.errors import TomesError
from pipelines import _extractive as X
from pipelines import _grounding as G
from pipelines import _mapreduce_prompts as P
from pipelines import mapreduce
from pipelines.environment import Environment
from serving.backends.scripted import ScriptedBackend
from serving.base import ChatRequest
from serving.lm import LM
from tests.test_mapreduce import FILLER, ingest_story, kind, text_of

INVENTED = "The Dunmore Mill was closed in May, with a loss of four hundred jobs."


def _system(req: ChatRequest) -> str:
    return req.messages[0]["content"]


# --- the checks themselves -----------------------------------------------------------


def test_quotes_are_found_exactly_or_nearly_and_names_must_occur() -> None:
    source = "Mr. Darcy walked\n  to Netherfield in the “rain”, and Elizabeth laughed at him."
    span = G.find_quote('Darcy walked to Netherfield in the "rain"', source)
    assert span is not None and source[span[0]:span[1]].startswith("Darcy walked")
    near = G.find_quote("Darcy walkd to Netherfeld in the rain", source)  # two typos
    assert near is not None and "Netherfield" in source[near[0]:near[1]]
    assert G.find_quote("The mill closed in May with a loss of jobs", source) is None
    assert G.invented_names("Elizabeth and Mr. Darcy met Darryl Linton at Dunmore.", source) == [
        "Darryl", "Dunmore", "Linton"]
    judged = G.support("Darcy walked to Netherfield in the rain. Darryl Linton sold the mill.", source)
    assert [j.supported for j in judged] == [True, False]
    assert judged[1].invented == ("Darryl", "Linton")


def test_sentences_have_exact_spans() -> None:
    text = "Mr. Bennet came home.  Mrs. Bennet said: “Oh!” \n\nThen Jane   sang.\n"
    spans = G.sentences(text)
    assert [text[a:b] for a, b in spans] == ["Mr. Bennet came home.", "Mrs. Bennet said: “Oh!”",
                                              "Then Jane   sang."]


def test_a_name_the_source_joins_to_other_letters_is_found() -> None:
    """Every sentence of a real book is supported by that book: names that stand in the
    source as "Heaven’s", "New York—and", "Fifteen-year-old" or 'Mouse' were counted as
    invented, and sentences selected verbatim were dropped as unsupported."""
    source = ("“Don’t keep coughing so, Kitty, for Heaven’s sake!” East of New York—and "
              "there. Fifteen-year-old Jo laughed, for the ‘Mouse’ was the pet.")
    assert G.invented_names("Heaven knows. York is far. Fifteen came. Mouse ran.", source) == []
    assert G.invented_names("Heaven knows Darryl.", source) == ["Darryl"]
    book = Path(__file__).resolve().parents[2] / "shared" / "data" / "books" / "little_women.txt"
    text = book.read_text(encoding="utf-8")[:20000]
    verbatim = " ".join(" ".join(text[a:b].split()) for a, b in G.sentences(text))
    judged = G.support(verbatim, text)
    assert len(judged) > 100 and [j.sentence for j in judged if not j.supported] == []


# --- verify: written records must be borne out by their text ------------------------


def test_an_invented_record_never_reaches_the_reduce_and_is_reported(tmp_path: Path) -> None:
    doc = ingest_story(tmp_path, FILLER)
    liar = FILLER[2][:30]  # the mill chunk: the model invents a closure there

    def reply(req: ChatRequest) -> str:
        if kind(req) == "reduce":
            return "Harwick is a quiet village with a mill, apples, a baker and a bridge."
        source = text_of(req)
        if liar in source:
            return json.dumps({"quotes": ["The mill was closed by the Dunmore company in May."],
                               "extracted": INVENTED, "rationale": "r", "answer": INVENTED,
                               "confidence": 5})
        sentence = re.search(r'"""\n(.+?[.!?])', source, re.S).group(1)
        return json.dumps({"quotes": [sentence], "extracted": sentence, "rationale": "r",
                           "answer": sentence, "confidence": 4})

    backend = ScriptedBackend(reply)
    result = mapreduce.summarize(doc, map_tokens=0, grounding="verify",
                                 lm=LM(backend, cache=False))
    reduce = [r for r in backend.requests if kind(r) == "reduce"]
    assert reduce and "Dunmore" not in text_of(reduce[0]) and "four hundred" not in text_of(reduce[0])
    assert result.details["grounding"] == "verify" and result.details["unsupported_records"] == 1
    why = result.details["unsupported_examples"][0]["why"]
    assert any("Dunmore" in w for w in why) and any("no quote found" in w for w in why)
    # The records that quoted their text carry the quote's exact span.
    env = Environment.load(doc)
    assert "Dunmore" not in result.answer
    # Every map prompt asked for quotes.
    maps = [r for r in backend.requests if kind(r) == "map"]
    assert all('"quotes"' in text_of(r) for r in maps) and env.chunks


# --- select: records are sentences of the text ----------------------------------------


def _numbered(req: ChatRequest) -> list[tuple[int, str]]:
    return [(int(n), s) for n, s in re.findall(r"^\[(\d+)\] (.+)$", text_of(req), re.M)]


def test_selected_sentences_round_trip_to_exact_spans(tmp_path: Path) -> None:
    doc = ingest_story(tmp_path, FILLER * 2)
    picked: list[str] = []

    def reply(req: ChatRequest) -> str:
        assert _system(req).startswith(X.SYSTEM_SELECT)
        lines = _numbered(req)
        if "Which 4 sentences" in text_of(req):  # the final pick of a short summary
            choice = [n for n, _ in lines][:4]
        else:
            choice = [n for n, s in lines if "bread" in s or "mill" in s][:2] or [lines[-1][0]]
            picked.extend(s for n, s in lines if n in choice)
        return json.dumps({"sentences": choice, "label": "The village"})

    backend = ScriptedBackend(reply)
    result = mapreduce.summarize(doc, map_tokens=0, grounding="select", length="short",
                                 lm=LM(backend, cache=False))
    env = Environment.load(doc)
    # The summary is made of sentences of the book, word for word.
    sentences = [env.text[a:b] for a, b in G.sentences(result.answer)]
    book = " ".join(env.text.split())
    assert sentences and all(" ".join(s.split()) in book for s in sentences)
    assert result.details["support"]["sentences"] == result.details["support"]["supported"]
    # Each provenance quote is a sentence of its chunk.
    for p in result.provenance:
        assert p.quote in " ".join(env.chunk(p.chunk_id).text.split())
    # The map records kept the selected sentences with their spans in the document.
    assert any("mill" in s for s in picked)
    assert all(req.json_schema is None or "enum" in json.dumps(req.json_schema)
               for req in backend.requests)
    assert result.details["grounding"] == "select" and result.details["pieces"] >= 6


def test_a_selection_record_spans_point_at_its_sentences(tmp_path: Path) -> None:
    from pipelines import _select as S

    doc = ingest_story(tmp_path, FILLER)
    env = Environment.load(doc)
    lm = LM(ScriptedBackend(lambda r: json.dumps({"sentences": [2, 1, 2, 99], "label": "x"})), cache=False)
    job = mapreduce.MapReduce(env, lm, mode="summary", grounding="select")
    chunk = env.chunks[1]
    import asyncio

    rec = asyncio.run(S.map_piece(job, [chunk.id], 0, chunk.text, chunk.start, "", {}, []))
    spans = G.sentences(chunk.text)
    assert rec["spans"] == [[chunk.document_id, chunk.start + a, chunk.start + b] for a, b in spans[:2]]
    doc_text = env.text[env.document(chunk.document_id).offset:]
    assert [doc_text[s[1]:s[2]] for s in rec["spans"]] == [chunk.text[a:b] for a, b in spans[:2]]
    assert rec["extracted"] == " ".join(" ".join(chunk.text[a:b].split()) for a, b in spans[:2])


def test_select_answers_a_question_from_picked_sentences_and_flags_what_they_do_not_say(
    tmp_path: Path,
) -> None:
    doc = ingest_story(tmp_path, FILLER)

    def reply(req: ChatRequest) -> str:
        lines = _numbered(req)
        if '"answer"' in text_of(req):
            bread = next(n for n, s in lines if "rye" in s)
            return json.dumps({"answer": "His rye loaf is famous. He was born in Dunmore in 1820.",
                               "sentences": [bread]})
        hits = [n for n, s in lines if "baker" in s.lower() or "rye" in s]
        return json.dumps({"sentences": hits[:3], "label": "the baker"})

    for strict in (False, True):
        result = mapreduce.ask(doc, "What is the baker famous for?", map_tokens=0,
                               grounding="select", strict=strict,
                               lm=LM(ScriptedBackend(reply), cache=False))
        support = result.details["support"]
        assert support["sentences"] == 2 and support["supported"] == 1
        assert "Dunmore" in support["unsupported"][0]["sentence"]
        assert ("Dunmore" in result.answer) is not strict
        assert "rye loaf" in result.answer
        assert any("rye" in p.quote for p in result.provenance)


def test_the_default_grounding_follows_the_models_preset_and_the_setting(tmp_path: Path) -> None:
    doc = ingest_story(tmp_path, FILLER[:2])
    env = Environment.load(doc)

    class Embedded(ScriptedBackend):
        name = "embedded"

    weak = mapreduce.MapReduce(env, LM(Embedded()), mode="summary")
    other = mapreduce.MapReduce(env, LM(ScriptedBackend()), mode="summary")
    assert (weak.grounding, other.grounding) == ("select", "verify")
    with settings.override(grounding="off"):
        assert mapreduce.MapReduce(env, LM(Embedded()), mode="summary").grounding == "off"
    with pytest.raises(TomesError, match="unknown grounding"):
        mapreduce.MapReduce(env, LM(Embedded()), mode="summary", grounding="trust")
    with pytest.raises(TomesError, match="TOMES_GROUNDING"):
        with settings.override(grounding="maybe"):
            pass
    assert P.NO_INFO  # the prompts module is shared by both ways of reading


class Baker(ScriptedBackend):
    """Picks the baker's sentences, then answers with one sentence the text never says."""

    name = "baker"

    def __init__(self, **kwargs) -> None:
        super().__init__(self.reply, **kwargs)

    @staticmethod
    def reply(req: ChatRequest) -> str:
        lines = _numbered(req)
        if '"answer"' in text_of(req):
            bread = next(n for n, s in lines if "rye" in s)
            return json.dumps({"answer": "His rye loaf is famous. He was born in Dunmore in 1820.",
                               "sentences": [bread]})
        return json.dumps({"sentences": [n for n, s in lines if "rye" in s][:3], "label": "bread"})


def test_the_cli_flags_unsupported_sentences_and_strict_drops_them(tmp_path: Path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from app.cli import app as cli
    from serving import registry

    monkeypatch.setitem(registry._BACKENDS, "baker", f"{__name__}:Baker")
    doc = ingest_story(tmp_path, FILLER)
    args = ["ask", str(doc), "What is the baker famous for?", "--strategy", "mapreduce",
            "--map-tokens", "0", "--backend", "baker", "--grounding", "select"]
    shown = CliRunner().invoke(cli, args)
    assert shown.exit_code == 0, shown.output
    out = " ".join(shown.output.split())
    assert "unsupported: He was born in Dunmore in 1820." in out and "names Dunmore" in out
    strict = CliRunner().invoke(cli, [*args, "--strict"])
    out = " ".join(strict.output.split())
    assert strict.exit_code == 0 and "dropped: He was born in Dunmore" in out
    answer = strict.stdout.split("\n\nrests on")[0] if strict.stdout else out
    assert "His rye loaf is famous." in answer and "1820" not in answer.split("dropped:")[0]


def test_the_fast_folding_finds_the_same_text_and_offsets_as_the_char_by_char_one():
    import random

    from pipelines import _grounding as G

    rng = random.Random(5)
    texts = ["  Two\n\n lines “quoted”\tend ", "\u3000a\u2003 b\xa0c", "İstanbul  is BIG", ""]
    texts += ["".join(rng.choice("ab C\n\t“’ —\xa0\u2003İ") for _ in range(rng.randint(0, 60)))
              for _ in range(2000)]
    for text in texts:
        slow, where = G._normalized(text)
        fast = G._Folded(text)
        assert fast.text == slow, text
        assert [fast.offset(i) for i in range(len(where))] == where, text
        assert G.straighten(text) == text.translate(G._QUOTES)
