"""The batch runner: JSONL in and out, bad lines, file targets, concurrency, resuming
(a killed batch subprocess included), `tomes batch` and `tomes summarize --each`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.api import Tomes
from app.cli import app as cli
from app.errors import NotFound
from app.store import Document, Run, session_scope
from pipelines import batch
from serving.backends.scripted import ScriptedBackend
from serving.lm import LM
from tests.islands import ISLANDS, KEEPERS, ingest_book, keeper_reply, write_book

ROOT = Path(__file__).resolve().parents[1]


def _write(path: Path, lines: list) -> Path:
    path.write_text("".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines),
                    encoding="utf-8")
    return path


def _out(path: Path) -> dict[str, dict]:
    records = [json.loads(l) for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]
    by_id = {r["custom_id"]: r for r in records}
    assert len(by_id) == len(records), "a custom_id was written twice"
    return by_id


def _question(i: int) -> str:
    return f"Who keeps the lighthouse on {ISLANDS[i]} Island?"


def test_a_batch_answers_each_item_and_reports_bad_lines_going_on(tmp_path):
    doc = ingest_book(tmp_path)
    source = _write(tmp_path / "in.jsonl", [
        {"custom_id": "q1", "target": doc, "question": _question(1)},
        "{not json",
        {"custom_id": "q2", "target": "islands", "question": _question(2), "strategy": "rag",
         "options": {"k": 2}},
        {"target": doc, "question": "no id?"},
        {"custom_id": "nt", "question": "no target?"},
        {"custom_id": "both", "target": doc, "question": "x?", "summary": {}},
        {"custom_id": "typo", "target": doc, "qestion": "x?"},
        {"custom_id": "gone", "target": "no-such-book", "question": "x?"},
        {"custom_id": "q1", "target": doc, "question": "repeated id"},
        {"custom_id": "badopt", "target": doc, "question": "x?", "options": {"colour": 1}},
        {"custom_id": "s1", "target": "corpus:isles", "summary": {"length": "short"}},
        "",
    ])
    backend = ScriptedBackend(keeper_reply)
    report = Tomes().batch(source, tmp_path / "out.jsonl", lm=LM(backend, cache=False))
    out = _out(tmp_path / "out.jsonl")

    assert set(out) == {"q1", "line-2", "q2", "line-4", "nt", "both", "typo", "gone", "line-9",
                        "badopt", "s1"}
    q1, q2 = out["q1"], out["q2"]
    assert q1["status"] == "done" and q1["answer"] == KEEPERS[1]
    assert q1["strategy"] == "direct" and "fits" in q1["why"]  # auto, the default
    assert q2["strategy"] == "rag" and q2["why"] == "named by the item (rag)"
    for record in (q1, q2):
        assert record["provenance"] and record["provenance"][0]["document_id"] == doc
        assert record["calls"] == 1 and record["tokens"] == record["prompt_tokens"] + record["completion_tokens"] > 0
        assert record["wall_s"] >= 0 and record["run_id"]
        with session_scope() as s:  # each item is a normal run in the store
            assert s.get(Run, record["run_id"]).status == "done"
    assert out["s1"]["strategy"] == "mapreduce" and out["s1"]["status"] == "done"
    causes = {cid: r["error"]["cause"] for cid, r in out.items() if r["status"] == "failed"}
    assert "not JSON" in causes["line-2"] and "no custom_id" in causes["line-4"]
    assert "no target" in causes["nt"] and "both a question and a summary" in causes["both"]
    assert "unknown key qestion" in causes["typo"] and "no-such-book" in causes["gone"]
    assert "repeats the custom_id 'q1' of line 1" in causes["line-9"]
    assert "colour" in causes["badopt"]
    assert all(r["error"]["fix"] for r in out.values() if r["status"] == "failed")
    assert (report.done, report.failed, report.skipped, report.bad_lines) == (3, 8, 0, 6)
    assert report.calls == sum(r.get("calls", 0) for r in out.values())
    assert [r["custom_id"] for r in report.records][:3] == ["q1", "line-2", "q2"]  # input order


def test_a_file_target_is_ingested_once_and_a_rerun_skips_everything(tmp_path):
    book = write_book(tmp_path, islands=6)
    source = _write(tmp_path / "in.jsonl", [
        {"custom_id": f"q{i}", "target": "islands.txt" if i % 2 else str(book),
         "question": _question(i)} for i in range(6)])
    backend = ScriptedBackend(keeper_reply)
    first = Tomes().batch(source, tmp_path / "out.jsonl", lm=LM(backend))
    assert first.done == 6 and len(backend.requests) == 6
    with session_scope() as s:
        assert s.query(Document).count() == 1  # relative and absolute: one file, read once
    out = _out(tmp_path / "out.jsonl")
    assert [out[f"q{i}"]["answer"] for i in range(6)] == KEEPERS[:6]

    again = ScriptedBackend(keeper_reply)
    second = Tomes().batch(source, tmp_path / "out.jsonl", lm=LM(again))
    assert (second.done, second.skipped, second.calls) == (0, 6, 0)
    assert again.requests == []  # a re-run asks the model nothing
    assert _out(tmp_path / "out.jsonl") == out


def test_a_file_target_that_cannot_be_read_fails_its_item_with_the_cause(tmp_path):
    book = write_book(tmp_path)
    (tmp_path / "blob.txt").write_bytes(bytes(range(256)) * 64)  # binary, not text
    source = _write(tmp_path / "in.jsonl", [
        {"custom_id": "bad", "target": "blob.txt", "question": _question(0)},
        {"custom_id": "good", "target": str(book), "question": _question(0)}])
    report = Tomes().batch(source, tmp_path / "out.jsonl", lm=LM(ScriptedBackend(keeper_reply)))
    assert (report.done, report.failed) == (1, 1)
    bad = _out(tmp_path / "out.jsonl")["bad"]
    assert bad["status"] == "failed" and "blob.txt" in bad["error"]["cause"]
    assert bad["error"]["fix"]


def test_retry_failed_runs_only_the_failed_items_again(tmp_path):
    doc = ingest_book(tmp_path)
    source = _write(tmp_path / "in.jsonl", [
        {"custom_id": f"q{i}", "target": doc, "question": _question(i)} for i in range(4)])

    def flaky(request):
        if "Damson" in request.messages[-1]["content"].rsplit("Question:", 1)[-1]:
            raise RuntimeError("the server fell over")
        return keeper_reply(request)

    first = Tomes().batch(source, tmp_path / "out.jsonl", lm=LM(ScriptedBackend(flaky), cache=False))
    assert (first.done, first.failed) == (3, 1)
    assert "fell over" in _out(tmp_path / "out.jsonl")["q3"]["error"]["cause"]
    backend = ScriptedBackend(keeper_reply)
    second = Tomes().batch(source, tmp_path / "out.jsonl", retry_failed=True,
                           lm=LM(backend, cache=False))
    assert (second.done, second.skipped, second.resumed) == (1, 3, 1)  # its failed run goes on
    assert len(backend.requests) == 1
    out = _out(tmp_path / "out.jsonl")
    assert out["q3"]["status"] == "done" and out["q3"]["answer"] == KEEPERS[3]


def test_items_run_concurrently_up_to_the_backend_capacity(tmp_path):
    doc = ingest_book(tmp_path)
    source = _write(tmp_path / "in.jsonl", [
        {"custom_id": f"q{i}", "target": doc, "question": _question(i % 8) + f" ({i})"}
        for i in range(12)])
    backend = ScriptedBackend(keeper_reply, latency=0.2, capacity=4)
    report = Tomes().batch(source, tmp_path / "a.jsonl", lm=LM(backend, cache=False))
    assert report.done == 12 and report.concurrency == 4
    assert backend.max_in_flight == 4  # as many at once as it serves, and no more

    backend = ScriptedBackend(keeper_reply, latency=0.2, capacity=4)
    report = Tomes().batch(source, tmp_path / "b.jsonl", concurrency=2, lm=LM(backend, cache=False))
    assert backend.max_in_flight == 2
    backend = ScriptedBackend(keeper_reply, latency=0.05, capacity=4)
    report = Tomes().batch(source, tmp_path / "c.jsonl", concurrency=9, lm=LM(backend, cache=False))
    assert report.concurrency == 4 and "capacity" in report.notes[0]
    assert backend.max_in_flight <= 4


def test_a_last_line_cut_off_by_a_kill_is_dropped_and_its_item_runs_again(tmp_path):
    doc = ingest_book(tmp_path)
    source = _write(tmp_path / "in.jsonl", [
        {"custom_id": f"q{i}", "target": doc, "question": _question(i)} for i in range(3)])
    out = tmp_path / "out.jsonl"
    Tomes().batch(source, out, lm=LM(ScriptedBackend(keeper_reply)))
    lines = out.read_text().splitlines()
    out.write_text(lines[0] + "\n" + lines[1] + "\n" + lines[2][:25])  # the kill hit mid-write
    report = Tomes().batch(source, out, lm=LM(ScriptedBackend(keeper_reply)))
    assert (report.done, report.skipped) == (1, 2)
    assert len(_out(out)) == 3


# A batch in a subprocess: every item answers at once except the island of Hazel, whose
# call never returns; the parent kills the process while that item is in flight.
CHILD = textwrap.dedent("""
    import asyncio, json, sys
    from app.api import Tomes
    from serving.backends.scripted import ScriptedBackend
    from serving.lm import LM
    from tests.islands import keeper_reply

    class Stuck(ScriptedBackend):
        async def achat(self, request):
            if "Hazel" in request.messages[-1]["content"].rsplit("Question:", 1)[-1]:
                await asyncio.sleep(3600)
            return await super().achat(request)

    Tomes().batch(sys.argv[1], sys.argv[2], lm=LM(Stuck(keeper_reply, capacity=2)))
""")


def test_a_killed_batch_resumes_without_redoing_finished_items(tmp_path):
    doc = ingest_book(tmp_path)
    source = _write(tmp_path / "in.jsonl", [
        {"custom_id": f"q{i}", "target": doc, "question": _question(i)} for i in range(8)])
    out = tmp_path / "out.jsonl"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, str(script), str(source), str(out)], cwd=ROOT,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None:
            if out.exists() and len(out.read_text().splitlines()) == 7:
                break
            time.sleep(0.1)
        assert child.poll() is None, child.communicate()[1]
        assert len(out.read_text().splitlines()) == 7, "the child did not finish the others"
        time.sleep(0.3)  # nothing more comes: the stuck item is in flight
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()  # reaped, so its pid is gone and its runs show as interrupted
    finished = set(_out(out))
    assert "q7" not in finished and len(finished) == 7
    with session_scope() as s:
        stuck = s.get(Run, batch.run_id_for(out, batch.read_input(source)[7]))
        assert stuck is not None and stuck.status == "running"  # killed: nothing marked it

    backend = ScriptedBackend(keeper_reply)
    report = Tomes().batch(source, out, lm=LM(backend))
    assert (report.done, report.skipped, report.resumed) == (1, 7, 1)
    # Only the item that was in flight asks the model again; finished ones are not redone.
    asked = [r.messages[-1]["content"].rsplit("Question:", 1)[-1] for r in backend.requests]
    assert len(asked) == 1 and "Hazel Island" in asked[0]
    final = _out(out)
    assert final["q7"]["status"] == "done" and final["q7"]["answer"] == KEEPERS[7]
    assert final["q7"]["run_id"] == stuck.id and final["q7"]["resumed"] is True
    assert {r["answer"] for r in final.values()} == set(KEEPERS[:8])


# --- the commands --------------------------------------------------------------------


def test_tomes_batch_prints_a_summary_and_exits_2_when_items_failed(tmp_path):
    doc = ingest_book(tmp_path)
    source = _write(tmp_path / "in.jsonl", [
        {"custom_id": "ok", "target": doc, "question": _question(0)}, "oops"])
    runner = CliRunner()
    result = runner.invoke(cli, ["batch", str(source), "--out", str(tmp_path / "o.jsonl")],
                           env={"COLUMNS": "120"})
    assert result.exit_code == 2, result.output
    assert "done" in result.output and "skipped" in result.output and "line-2" in result.output
    again = runner.invoke(cli, ["batch", str(source), "--out", str(tmp_path / "o.jsonl"), "--json"])
    assert again.exit_code == 0  # nothing failed in this run: both were skipped
    data = json.loads(again.stdout)
    assert (data["done"], data["skipped"], data["failed"]) == (0, 2, 0)


def test_summarize_each_makes_one_summary_per_document(tmp_path):
    ingest_book(tmp_path, islands=4, name="north.txt")
    (tmp_path / "s").mkdir()
    ingest_book(tmp_path / "s", islands=3, name="south.txt")
    runner = CliRunner()
    result = runner.invoke(cli, ["summarize", "isles", "--each", "-l", "short"],
                           env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert "north" in result.output and "south" in result.output
    runs = Tomes().runs()
    assert len(runs) == 2 and {r["pipeline"] for r in runs} == {"mapreduce"}
    assert {r["target"] for r in runs} == {f"doc:{d['id']}" for d in Tomes().documents("isles")}
    again = runner.invoke(cli, ["summarize", "isles", "--each", "-l", "short", "--json"])
    assert json.loads(again.stdout)["skipped"] == 2 and len(Tomes().runs()) == 2
    missing = runner.invoke(cli, ["summarize", "nowhere", "--each"])
    assert isinstance(missing.exception, NotFound) and "nowhere" in missing.exception.cause


def test_items_about_one_target_read_it_from_the_store_once(tmp_path, monkeypatch):
    from pipelines import environment

    doc = ingest_book(tmp_path)
    loads = []
    real = environment.target_documents
    monkeypatch.setattr(environment, "target_documents",
                        lambda s, target: loads.append(target.label) or real(s, target))
    items = [{"custom_id": f"q{i}", "target": doc, "question": _question(i),
              "strategy": strategy} for i, strategy in enumerate(["auto", "direct", "rag"] * 2)]
    report = Tomes().batch(items, tmp_path / "out.jsonl", lm=LM(ScriptedBackend(keeper_reply)))
    assert report.done == 6 and loads == [f"doc:{doc}"]
    Tomes().ask(doc, _question(0), lm=LM(ScriptedBackend(keeper_reply)))  # auto, alone
    assert loads == [f"doc:{doc}"] * 2  # auto and the strategy it chose share one load
