"""The evaluation harness: seeded generators that put the answer where they say, RULER's
scoring, evidence reach from the call log, a grid end to end (scripted and embedded),
and a killed eval that resumes without redoing what finished."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.api import Tomes
from pipelines.evaluation import TASKS, generate, reach, score, task_names
from pipelines.evaluation.ruler import DEPTHS
from pipelines.evaluation.runner import parse_lengths, read_cases
from serving.backends.scripted import ScriptedBackend
from serving.lm import LM

ROOT = Path(__file__).resolve().parents[1]
FIELDS = {"task", "strategy", "length", "n", "accuracy", "reach_any", "reach_final", "calls",
          "prompt_tokens", "completion_tokens", "wall_s"}


def reader(request) -> str:
    """A scripted model that reads: it answers a needle question with the value of the
    needle it was shown, and anything else with a refusal."""
    prompt = "\n".join(m["content"] for m in request.messages)
    asked = re.search(r"special magic number for ([\w-]+)", prompt)
    if asked:
        found = re.search(rf"for {re.escape(asked.group(1))} is: (\d+)", prompt)
        if found:
            return found.group(1)
    return "I do not know."


# --- generators ----------------------------------------------------------------------


@pytest.mark.parametrize("task", list(TASKS))
def test_each_generator_is_deterministic_for_a_seed_and_holds_its_evidence(task):
    length = 1536
    case = generate(task, length, seed=3, index=1)
    assert case == generate(task, length, seed=3, index=1)
    other = generate(task, length, seed=4, index=1)
    assert (other.document, other.question) != (case.document, case.question)
    assert case.answers and all(a.strip() for a in case.answers)
    for span in case.evidence:
        assert span in case.document
    # It fills the length without passing it (the question and the reply fit beside it).
    assert length * 0.6 < case.tokens < length


def test_a_needle_sits_at_its_depth_and_holds_the_answer():
    for index in range(4):
        case = generate("niah_single_2", 4096, seed=0, index=index)
        (needle,) = case.evidence
        assert case.answers[0] in needle and case.document.count(needle) == 1
        depth = case.meta["depths"][0]
        assert depth in DEPTHS
        at = case.document.index(needle) / len(case.document)
        assert abs(at - depth / 100) < 0.06, (at, depth)


def test_multikey_asks_one_key_and_the_other_needles_are_distractors():
    case = generate("niah_multikey_1", 2048, seed=0, index=0)
    needles = re.findall(r"One of the special magic numbers for [\w-]+ is: \d+\.", case.document)
    assert len(needles) == 4 and len(case.evidence) == 1
    assert case.evidence[0] in needles
    key = re.search(r"for ([\w-]+) mentioned", case.question).group(1)
    assert f"for {key} is: {case.answers[0]}." in case.evidence[0]


def test_variable_tracking_answers_are_the_chain_from_the_value():
    case = generate("vt", 2048, seed=1, index=0)
    value = re.search(r"value (\d+)", case.question).group(1)
    assignments = dict(re.findall(r"VAR (\w+) = (VAR \w+|\d+)", case.document))
    chain = [v for v, rhs in assignments.items() if rhs == value]
    while True:
        nxt = [v for v, rhs in assignments.items() if rhs == f"VAR {chain[-1]}"]
        if not nxt:
            break
        chain += nxt
    assert chain == case.answers and len(chain) == 5


def test_aggregation_answers_recount_from_the_records():
    seen = set()
    for index in range(4):
        case = generate("aggregation", 2048, seed=2, index=index)
        seen.add(case.meta["kind"])
        rows = [re.match(r"Entry \d+ \| (\S+) \| label: (\w+) \|", line).groups()
                for line in case.document.splitlines()]
        counts = Counter(label for _day, label in rows)
        kind, answer = case.meta["kind"], case.answers[0]
        if kind == "count":
            label = re.search(r"label (\w+)\?", case.question).group(1)
            assert answer == str(counts[label]) and len(case.evidence) == counts[label]
        elif kind == "most_frequent":
            (best, top), (_, second) = counts.most_common(2)
            assert answer == best and top > second
        elif kind == "compare":
            a, b = re.findall(r"label (\w+)", case.question)
            assert answer == (a if counts[a] > counts[b] else b) and counts[a] != counts[b]
        else:
            month = re.search(r"dated in (\w+ \d{4})", case.question).group(1)
            label = re.search(r"have the label (\w+)", case.question).group(1)
            stamp = time.strftime("%Y-%m", time.strptime(month, "%B %Y"))
            assert answer == str(sum(1 for d, lab in rows if lab == label and d.startswith(stamp)))
    assert seen == {"count", "most_frequent", "compare", "count_month"}


def test_episodic_questions_rest_on_the_sentences_that_answer_them():
    kinds = set()
    for index in range(5):
        case = generate("episodic", 2048, seed=0, index=index)
        kinds.add(case.meta["kind"])
        assert case.document.startswith("## Chapter 1")
        joined = " ".join(case.evidence)
        assert all(a in joined for a in case.answers), (case.question, case.answers, joined)
    assert kinds == {"event_place", "event_time", "latest_role", "where_when", "entity_places"}


def test_bench_epbench_gen_is_the_same_generator():
    from bench.epbench_gen import generate as bench_generate
    from pipelines.evaluation.episodic import generate_book

    assert bench_generate(seed=7).text == generate_book(seed=7).text


def test_names_groups_and_lengths_are_checked():
    assert task_names("niah_single_2,aggregation") == ["niah_single_2", "aggregation"]
    assert "qa_2" in task_names("ruler") and "episodic" not in task_names("ruler")
    assert parse_lengths("2k, 4K,8192") == [2048, 4096, 8192]
    from app.errors import TomesError

    with pytest.raises(TomesError, match="unknown evaluation task"):
        task_names("needle")
    with pytest.raises(TomesError, match="not a length"):
        parse_lengths("4kb")


# --- scoring and reach -----------------------------------------------------------------


def test_scoring_matches_rulers_own_metric_functions():
    from long_context_eval.eval.synthetic.constants import string_match_all, string_match_part

    known = [
        ("The numbers are 123 and 456.", ["123", "456", "789"]),
        ("PARIS, of course", ["Paris"]),
        ("nothing here", ["42"]),
        ("", ["a"]),
        ("1234567", ["1234567"]),
    ]
    for pred, refs in known:
        assert score(pred, {"answers": refs, "metric": "all"}) == pytest.approx(
            string_match_all([pred], [refs]), abs=0.01)
        assert score(pred, {"answers": refs, "metric": "part"}) == pytest.approx(
            string_match_part([pred], [refs]), abs=0.01)
    # Worked by hand: two of three found; any one is enough for part; case is ignored.
    assert score("The numbers are 123 and 456.", {"answers": ["123", "456", "789"], "metric": "all"}) \
        == pytest.approx(66.667, abs=0.01)
    assert score("the answer is PARIS", {"answers": ["Rome", "Paris"], "metric": "part"}) == 100.0
    assert score(None, {"answers": ["x"], "metric": "all"}) == 0.0


def test_reach_tells_a_lost_fact_from_a_misread_one():
    needle = "One of the special magic numbers for red-fox is: 1234567."
    # Reached a map call, not the final one: the pipeline lost it.
    lost = reach.measure([f"[3] {needle.upper()}", "reduce these records: none"], [needle],
                         ["1234567"], "What is the number for red-fox?")
    assert lost == {"reach_any": 1.0, "reach_final": 0.0}
    # The final prompt carries a record with the answer: it reached the final call.
    carried = reach.measure([needle, "record: the value is 1234567"], [needle], ["1234567"])
    assert carried == {"reach_any": 1.0, "reach_final": 1.0}
    # Never retrieved at all.
    assert reach.measure(["other text"], [needle], ["1234567"]) == {"reach_any": 0.0, "reach_final": 0.0}
    # Short answers (a count) say nothing on their own; half the records reached.
    spans = ["Entry 00001 | 2020-01-01 | label: refund |", "Entry 00002 | 2020-01-02 | label: refund |"]
    assert reach.measure([spans[0] + " total 2"], spans, ["2"]) == {"reach_any": 0.5, "reach_final": 0.5}
    assert reach.measure([], [needle]) == {"reach_any": None, "reach_final": None}


# --- the runner ------------------------------------------------------------------------


def test_a_tiny_grid_runs_end_to_end_and_a_rerun_redoes_nothing(tmp_path):
    out = tmp_path / "eval"
    backend = ScriptedBackend(reader)
    tomes = Tomes()
    report = tomes.eval("niah_single_2,aggregation", strategies=["direct", "rag", "mapreduce"],
                        lengths="1k", n=2, out=out, lm=LM(backend))
    lines = [json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines()]
    errors = [(line["key"], line["error"]) for line in lines if line["error"]]
    assert (report.cases, report.done, report.failed, report.skipped) == (12, 12, 0, 0), errors
    assert len({line["key"] for line in lines}) == 12
    rows = {(r["task"], r["strategy"]): r for r in report.summary}
    assert all(FIELDS <= set(r) for r in rows.values()) and len(rows) == 6
    # The reader finds the needle whenever it is shown it; it cannot count.
    assert rows["niah_single_2", "direct"]["accuracy"] == 1.0
    assert rows["niah_single_2", "direct"]["reach_final"] == 1.0
    assert all(rows["aggregation", s]["accuracy"] == 0.0 for s in ("direct", "rag", "mapreduce"))
    assert rows["niah_single_2", "mapreduce"]["calls"] > rows["niah_single_2", "direct"]["calls"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows"] == report.summary and summary["seed"] == 0
    assert "| niah_single_2 | direct | 1,024 | 2 | 100% |" in (out / "table.md").read_text()
    for name in ("niah_single_2.png", "aggregation.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    # Every case is a run in the store, under the run id its line names.
    stored = {r["id"]: r for r in tomes.runs(limit=100)}
    assert {line["run_id"] for line in lines} <= set(stored)
    assert all(stored[line["run_id"]]["pipeline"] == line["strategy"] for line in lines)
    asked = len(backend.requests)
    again = tomes.eval("niah_single_2,aggregation", strategies=["direct", "rag", "mapreduce"],
                       lengths="1k", n=2, out=out, lm=LM(backend))
    assert (again.done, again.skipped) == (0, 12) and len(backend.requests) == asked
    assert again.summary == report.summary


CHILD = """
import sys, time, re
from app.api import Tomes
from serving.backends.scripted import ScriptedBackend
from serving.lm import LM

def slow_reader(request):
    prompt = "\\n".join(m["content"] for m in request.messages)
    found = re.search(r"is: (\\d+)", prompt)
    return found.group(1) if found else "I do not know."

backend = ScriptedBackend(slow_reader, latency=0.4, capacity=1)
Tomes().eval("niah_single_2", strategies=["direct", "mapreduce"], lengths="1k,2k", n=2,
             out=sys.argv[1], lm=LM(backend), plots=False)
"""


def test_a_killed_eval_resumes_without_redoing_finished_cases(tmp_path):
    out = tmp_path / "eval"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, str(script), str(out)], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cases = out / "cases.jsonl"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None:
            if cases.exists() and len(cases.read_text().splitlines()) >= 3:
                break
            time.sleep(0.05)
        assert child.poll() is None, child.communicate()[1]
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    before = read_cases(cases)
    assert 3 <= len(before) < 8
    from app.store import Call, session_scope
    from sqlalchemy import func, select

    def calls_of(run_id: str) -> int:
        with session_scope() as s:
            return s.scalar(select(func.count(Call.id)).where(Call.run_id == run_id)) or 0

    calls_before = {k: calls_of(v["run_id"]) for k, v in before.items()}
    report = Tomes().eval("niah_single_2", strategies=["direct", "mapreduce"], lengths="1k,2k",
                          n=2, out=out, lm=LM(ScriptedBackend(reader)), plots=False)
    after = read_cases(cases)
    assert len(after) == 8 and report.skipped == len(before) and report.done == 8 - len(before)
    assert len(cases.read_text().splitlines()) == 8  # no case twice
    for key, line in before.items():  # finished cases were not run again
        assert after[key] == line and calls_of(line["run_id"]) == calls_before[key]
    assert all(line["status"] == "done" for line in after.values())


def test_tomes_eval_lists_tasks_and_runs_a_grid(tmp_path):
    from app.cli import app

    runner = CliRunner()
    listed = runner.invoke(app, ["eval", "--list", "--json"])
    assert listed.exit_code == 0, listed.output
    assert {t["name"] for t in json.loads(listed.output)} == set(TASKS)
    out = tmp_path / "cli-eval"
    result = runner.invoke(app, ["eval", "vt", "--lengths", "1k", "--n", "1", "-s", "direct",
                                 "-s", "rag", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert {(r["task"], r["strategy"]) for r in data["summary"]} == {("vt", "direct"), ("vt", "rag")}
    assert (out / "table.md").exists() and (out / "vt.png").exists()
    bad = runner.invoke(app, ["eval", "nope"])
    assert bad.exit_code != 0


@pytest.mark.slow
def test_the_embedded_model_runs_a_tiny_grid(tmp_path):
    out = tmp_path / "eval"
    tomes = Tomes(backend="embedded")
    report = tomes.eval("niah_single_2", strategies=["direct", "rag"], lengths="1k", n=1, out=out)
    assert (report.done, report.failed) == (2, 0)
    rows = {r["strategy"]: r for r in report.summary}
    assert rows["direct"]["reach_final"] == 1.0  # direct shows the model the whole text
    assert all(r["calls"] >= 1 and r["prompt_tokens"] > 300 for r in rows.values())
    lines = [json.loads(x) for x in (out / "cases.jsonl").read_text().splitlines()]
    assert all(line["prediction"] for line in lines)
    assert {r["id"] for r in tomes.runs()} >= {line["run_id"] for line in lines}
