"""The Python API's async twins, its typed results, and Tomes objects with different
homes in one process keeping apart."""

from __future__ import annotations

import asyncio
import json

import pytest

from app.api import BatchReport, Result, Tomes
from app.errors import TomesError
from serving.backends.scripted import ScriptedBackend
from serving.lm import LM
from tests.islands import KEEPERS, ingest_book, keeper_reply, write_book


def test_the_async_twins_do_what_the_sync_methods_do(tmp_path):
    book = write_book(tmp_path)
    t = Tomes()

    async def main():
        report = await t.aingest([book], "isles", embed=False)
        doc = report.added[0].document_id
        docs = await t.adocuments("isles")
        hits = await t.asearch("isles", "Cedar Island lighthouse", k=2)
        lm = LM(ScriptedBackend(keeper_reply))
        answer = await t.aask(doc, "Who keeps the lighthouse on Cedar Island?", lm=lm)
        summary = await t.asummarize(doc, length="short")
        runs = await t.aruns()
        calls = await t.acalls(answer.run_id)
        resumed = await t.aresume(answer.run_id)
        removed = await t.aremove(doc)
        return doc, docs, hits, answer, summary, runs, calls, resumed, removed

    doc, docs, hits, answer, summary, runs, calls, resumed, removed = asyncio.run(main())
    assert [d["id"] for d in docs] == [doc] and hits and hits[0].document_id == doc
    assert isinstance(answer, Result) and answer.answer == KEEPERS[2]
    assert answer.details["strategy"] == "direct"  # auto is the default here too
    assert summary.pipeline == "mapreduce" and len(runs) == 2
    assert [c["node"] for c in calls] == ["direct"]
    assert resumed.to_dict() == answer.to_dict() and removed["id"] == doc
    assert Tomes().documents() == []


def test_results_serialize_to_the_json_the_cli_prints(tmp_path):
    from typer.testing import CliRunner

    from app.cli import app as cli

    doc = ingest_book(tmp_path)
    out = CliRunner().invoke(cli, ["ask", str(doc), "Who keeps the lighthouse on Cedar Island?",
                                   "--strategy", "rag", "-k", "2", "--json"])
    assert out.exit_code == 0, out.output
    printed = json.loads(out.stdout)
    stored = Tomes().resume(printed["run_id"])  # the same run, as a typed result
    assert json.loads(json.dumps(stored.to_dict())) == {k: v for k, v in printed.items()
                                                        if k != "tokens"}
    assert printed["tokens"] == stored.tokens and printed["details"]["k"] == 2



def test_listings_are_typed_rows_that_serialize_to_the_json_the_cli_prints(tmp_path):
    from typer.testing import CliRunner

    from app.api import CallInfo, DocumentDetail, DocumentInfo, RunDetail, RunInfo, RunStats
    from app.cli import app as cli

    doc = ingest_book(tmp_path)
    t = Tomes()
    answer = t.ask(doc, "Who keeps the lighthouse on Cedar Island?",
                   lm=LM(ScriptedBackend(keeper_reply)))
    docs, runs, calls = t.docs(), t.runs(), t.calls(answer.run_id)
    shown, run, listed = t.document(doc), t.run(answer.run_id), t.run_list()
    assert [type(r) for r in (docs[0], shown, runs[0], run, listed[0], calls[0])] == [
        DocumentInfo, DocumentDetail, RunInfo, RunDetail, RunStats, CallInfo]
    assert docs[0].id == doc and docs[0]["title"] == docs[0].title and shown.chunks[0]["text"]
    assert runs[0].id == run.id == listed[0].id == answer.run_id and listed[0].calls == 1
    assert calls[0].node == "direct" and calls[0].messages[-1]["role"] == "user"
    for command, rows in ((["docs", "--json"], docs), (["runs", "--json"], runs),
                          (["show", str(doc), "--json"], shown)):
        out = CliRunner().invoke(cli, command)
        assert out.exit_code == 0, out.output
        expected = [r.to_dict() for r in rows] if isinstance(rows, list) else rows.to_dict()
        assert json.loads(out.stdout) == expected, command


def test_concurrent_aask_calls_overlap_on_one_event_loop(tmp_path):
    doc = ingest_book(tmp_path)
    backend = ScriptedBackend(keeper_reply, latency=0.3, capacity=2)
    lm = LM(backend, cache=False)
    t = Tomes()

    async def main():
        return await asyncio.gather(*(
            t.aask(doc, f"Who keeps the lighthouse on {island} Island?", lm=lm, strategy="direct")
            for island in ("Alder", "Birch", "Cedar", "Damson")))

    answers = asyncio.run(main())
    assert [a.answer for a in answers] == KEEPERS[:4]
    # They overlap, and one model's capacity holds across them: the runs share the loop
    # (and so the LM's limit), they are not each in a thread with a loop of its own.
    assert backend.max_in_flight == 2


def test_abatch_returns_a_typed_report(tmp_path):
    doc = ingest_book(tmp_path)
    items = [{"custom_id": "a", "target": doc, "question": "Who keeps the lighthouse on Elder Island?"},
             {"custom_id": "b", "target": doc}]
    report = asyncio.run(Tomes().abatch(items, tmp_path / "out.jsonl",
                                        lm=LM(ScriptedBackend(keeper_reply))))
    assert isinstance(report, BatchReport) and (report.done, report.failed) == (1, 1)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["records"][0]["answer"] == KEEPERS[4] and data["tokens"] == report.tokens


def test_errors_are_tomes_errors_with_cause_and_fix(tmp_path):
    t = Tomes()
    for call in (lambda: t.ask("nothing", "Who?"), lambda: t.ask("x", "  "),
                 lambda: t.ask("x", "Who?", strategy="psychic"),
                 lambda: asyncio.run(t.aask("nothing", "Who?"))):
        with pytest.raises(TomesError) as caught:
            call()
        assert caught.value.cause and caught.value.fix


def test_two_homes_in_one_process_share_nothing(tmp_path):
    one, two = Tomes(home=tmp_path / "one"), Tomes(home=tmp_path / "two")
    book = write_book(tmp_path)
    doc = one.ingest([book], "isles").added[0].document_id  # embedded and indexed
    assert two.documents() == [] and two.corpora() == []
    with pytest.raises(TomesError, match="no corpus named 'isles'"):
        two.search("isles", "lighthouse")
    assert one.search("isles", "Cedar lighthouse", k=1)[0].document_id == doc

    backend = ScriptedBackend(keeper_reply)
    first = one.ask(doc, "Who keeps the lighthouse on Cedar Island?", lm=LM(backend))
    assert [r["id"] for r in one.runs()] == [first.run_id] and two.runs() == []
    assert one.calls(first.run_id) and two.calls(first.run_id) == []

    # The same book and question in the other home: its own document, its own run, and
    # no reply from the first home's response cache.
    doc_two = two.ingest([book], "isles").added[0].document_id
    second = two.ask(doc_two, "Who keeps the lighthouse on Cedar Island?", lm=LM(backend))
    assert second.calls == 1 and second.cache_hits == 0 and len(backend.requests) == 2
    assert [r["id"] for r in two.runs()] == [second.run_id]
    assert [r["id"] for r in one.runs()] == [first.run_id]

    # At the same time on one event loop, each object still reaches only its own home.
    async def both():
        asked = await asyncio.gather(
            one.aask(doc, "Who keeps the lighthouse on Alder Island?", lm=LM(backend)),
            two.aask(doc_two, "Who keeps the lighthouse on Birch Island?", lm=LM(backend)))
        return asked, await asyncio.gather(one.adocuments(), two.aruns(), one.aruns())

    (third, fourth), (docs_one, runs_two, runs_one) = asyncio.run(both())
    assert (third.answer, fourth.answer) == (KEEPERS[0], KEEPERS[1])
    assert [d["id"] for d in docs_one] == [doc]
    assert {r["id"] for r in runs_two} == {second.run_id, fourth.run_id}
    assert {r["id"] for r in runs_one} == {first.run_id, third.run_id}
