"""A map-reduce run's calls form a tree: graph steps, the calls they caused, retries
under the call they repair. And every stand-in for a reply that could not be used is
said, in the result and on the command line."""

from __future__ import annotations

import pytest

from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from app import settings
from app.api import Tomes
from app.cli import app as cli
from pipelines import _mapreduce_prompts as P
from pipelines import mapreduce
from serving.backends.scripted import ScriptedBackend
from serving.base import ChatRequest
from serving.lm import LM
from tests.test_mapreduce import FILLER, PARIS, chunk_rows, chunk_with, ingest_story, kind, record


@pytest.fixture(autouse=True)
def _records_as_scripted():
    """These tests script the model's records to test the pipeline's mechanics, with
    records that need not be borne out by their text; grounding has its own tests
    (tests/test_grounding.py)."""
    with settings.override(grounding="off"):
        yield



def _walk(nodes: list[dict[str, Any]], depth: int = 1):
    for n in nodes:
        yield n, depth
        yield from _walk(n["children"], depth + 1)


def test_steps_hold_their_calls_and_a_retry_sits_under_the_call_it_repairs(tmp_path: Path) -> None:
    doc = ingest_story(tmp_path, FILLER * 3 + [PARIS])
    broken = chunk_with(doc, "Paris under")
    texts = {c.id: c.text for c in chunk_rows(doc)}
    long_note = "the village " * 60  # notes too long for one reduce: collapse rounds

    def reply(req: ChatRequest) -> str:
        if kind(req) == "reduce":
            return "Harwick, a village by a river, and a treasure in Paris."
        if kind(req) == "map" and texts[broken] in req.messages[1]["content"] and len(req.messages) == 2:
            return '{"answer": "Paris", "confidence": 5 "oops'
        return record(long_note, 4, extracted=long_note)

    result = mapreduce.summarize(doc, map_tokens=0,
                                 lm=LM(ScriptedBackend(reply, context_window=1400), cache=False))
    tree = Tomes().call_tree(result.run_id)
    roots = tree["calls"]

    # The run's top level is its graph steps, in the order they ran.
    assert all(r["step"] for r in roots)
    order = [r["node"] for r in roots]
    assert order[0] == "map" and order[-1] == "reduce" and "collapse" in order
    assert result.details["collapse_levels"] == order.count("collapse")
    # Each step holds the calls of its own kind, and only model calls sit below steps.
    for step in roots:
        assert step["children"] and {c["node"] for c in step["children"]} == {step["node"]}
        assert not any(n["step"] for n, _ in _walk(step["children"]))
    maps = roots[0]["children"]
    assert len(maps) == len(texts)
    # The one malformed reply was retried under the call that produced it.
    failed = [m for m in maps if m["children"]]
    assert len(failed) == 1 and "oops" in failed[0]["preview"]
    assert [c["node"] for c in failed[0]["children"]] == ["map"]
    assert tree["totals"]["depth"] == 3
    # Steps are no model calls: the totals count what the backend was asked.
    assert tree["totals"]["calls"] == result.calls == len(Tomes().calls(result.run_id))
    assert tree["totals"]["steps"] == len(roots)
    assert len(Tomes().calls(result.run_id, steps=True)) == result.calls + len(roots)

    out = CliRunner().invoke(cli, ["calls", result.run_id])
    assert out.exit_code == 0, out.output
    assert "3 levels deep" in out.output and "collapse level 1" in out.output


def test_stand_ins_for_unusable_replies_are_in_the_details_and_printed(tmp_path: Path) -> None:
    doc = ingest_story(tmp_path, FILLER[:3] + [PARIS])
    prose = chunk_with(doc, FILLER[1][:20])
    texts = {c.id: c.text for c in chunk_rows(doc)}

    def reply(req: ChatRequest) -> str:
        if kind(req) == "reduce":
            return "{}"  # no answer: the most confident note stands in
        if texts[prose] in req.messages[1]["content"]:
            return "Apples, I think."  # prose twice: its raw text becomes the note
        if "Paris under" in req.messages[1]["content"]:
            return record("Paris", 5)
        return record(P.NO_INFO, 1)

    result = mapreduce.ask(doc, "Where is the treasure?", map_tokens=0,
                           lm=LM(ScriptedBackend(reply, supports_json_schema=False), cache=False))
    notes = result.details["fallbacks"]
    assert result.answer == "Paris"
    assert any(n.startswith("map: 1 of 4 replies") for n in notes), notes
    assert any(n.startswith("reduce:") and "most confident note" in n for n in notes), notes

    def short(req: ChatRequest) -> str:
        return "Ok." if kind(req) == "reduce" else record("Harwick has a mill and a bakery.", 4)

    summary = mapreduce.summarize(doc, map_tokens=0, lm=LM(ScriptedBackend(short), cache=False))
    assert any("too short" in n for n in summary.details["fallbacks"])
    clean = mapreduce.summarize(
        doc, map_tokens=0, length="long",
        lm=LM(ScriptedBackend(lambda r: "A village by a river, with a mill and a bakery."
                              if kind(r) == "reduce" else record("A mill.", 4)), cache=False))
    assert clean.details["fallbacks"] == []

    from app.cli._output import console
    from app.cli.runs import _show

    with console.capture() as captured:
        _show(result, as_json=False)
    printed = " ".join(captured.get().split())
    assert printed.count("fallback:") == len(notes) and "most confident note" in printed
