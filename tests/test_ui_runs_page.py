"""The Runs & calls page: a table of runs named by their targets' titles, a run picked by
its question (from a link, a table click or the picker), the call tree folded so a book's
maps stay readable, a chart per call, delete, resume, and the recursive controller's
iterations with their code and output."""

from __future__ import annotations

import pytest
from uitools import answered, app, button, texts, voyage, wait_for

from app.api import Tomes
from app.errors import TomesError
from serving.backends.scripted import ScriptedBackend


@pytest.fixture
def book(tmp_path, monkeypatch):
    return voyage(tmp_path, monkeypatch, paragraphs=24)


@pytest.fixture
def two_runs(book):
    ask = Tomes().ask(book["id"], "Where did the ship sail?", strategy="mapreduce")
    summary = Tomes().summarize("corpus:ships")
    return ask, summary


def _graph(at) -> str:
    return at.get("graphviz_chart")[0].proto.spec


def _map_calls(run_id: str) -> list[dict]:
    calls = Tomes().calls(run_id)
    ids = {c["id"] for c in calls}
    return [c for c in calls if c["node"] == "map" and c["parent_id"] not in ids]  # no retries


def test_the_table_names_targets_by_title_and_runs_by_question(book, two_runs):
    ask, summary = two_runs
    at = app("runs")
    table = at.dataframe[0].value
    assert list(table.columns) == ["created", "question / task", "target", "strategy", "status", "calls",
                                   "cached", "tokens", "duration (s)"]
    assert set(table["target"]) == {book["title"], "corpus ships"}
    assert not any(t.startswith("doc:") for t in table["target"])
    assert set(table["question / task"]) == {"Where did the ship sail?", "summary"}
    row = table[table["question / task"] == "Where did the ship sail?"].iloc[0]
    logged = [c for c in Tomes().calls(ask.run_id) if not c["cache_hit"]]
    assert row["calls"] == len(logged)
    assert row["tokens"] == sum(c["prompt_tokens"] + c["completion_tokens"] for c in logged) > 0
    assert row["status"] == "done" and row["strategy"] == "mapreduce"
    picker = at.selectbox[0]
    labels = picker.options  # as shown
    assert any(label.startswith("Where did the ship sail? · voyage") for label in labels)
    assert not any(ask.run_id in label for label in labels)  # picked by what it is, not its UUID


def test_a_link_a_table_click_and_the_picker_choose_the_run(two_runs):
    ask, summary = two_runs
    at = app("runs", run=ask.run_id)
    assert at.selectbox[0].value == ask.run_id
    assert ask.answer in texts(at)
    at.session_state["runs_table"] = {"selection": {"rows": [0], "columns": []}}  # the newest
    at.run()
    assert at.selectbox[0].value == summary.run_id
    assert at.query_params["run"] == summary.run_id  # the URL follows, to share it
    at.selectbox[0].set_value(ask.run_id).run()
    assert "Where did the ship sail?" in _graph(at)


def test_the_call_tree_folds_a_books_maps_and_unfolds_them_on_request(book, two_runs):
    _, summary = two_runs
    maps = _map_calls(summary.run_id)
    assert len(maps) == book["chunks"] > 5
    at = app("runs", run=summary.run_id)
    spec = _graph(at)
    assert f"map × {len(maps)}" in spec  # one box for the maps, with their totals
    assert f"map #{maps[0]['id']}\\n" not in spec
    assert "shape=folder" in spec and "reduce" in spec  # steps drawn apart from calls
    unfold = next(m for m in at.multiselect if m.label == "Unfolded groups")
    from ui import _calltree

    group = next(g for g in _calltree.foldable(Tomes().call_tree(summary.run_id)["calls"]) if g.node == "map")
    assert group.label in unfold.options
    unfold.select(group.key).run()
    spec = _graph(at)
    for c in maps:
        assert f"map #{c['id']}\\n" in spec
    at.slider[0].set_value(1).run()  # only the first level: the steps, with what is below them
    spec = _graph(at)
    assert "calls below" in spec and f"map #{maps[0]['id']}\\n" not in spec


def test_the_chart_has_a_bar_per_model_call_and_a_call_opens_with_its_prompt(two_runs):
    from streamlit import dataframe_util

    ask, _ = two_runs
    at = app("runs", run=ask.run_id)
    calls = Tomes().calls(ask.run_id)
    tokens_chart, latency_chart = at.get("vega_lite_chart")
    assert "Tokens per call" in tokens_chart.proto.spec and "Latency per call" in latency_chart.proto.spec
    data = dataframe_util.convert_arrow_bytes_to_pandas_df(latency_chart.proto.datasets[0].data.data)
    assert sorted(data["call"]) == sorted(c["id"] for c in calls)  # steps are not model calls
    last = calls[-1]
    next(s for s in at.selectbox if s.label == "Look at a call").set_value(last["id"]).run()
    shown = [c.value for c in at.code]
    assert last["response"] in shown
    assert any(last["messages"][-1]["content"] in code for code in shown)
    assert f"#{last['id']}" in _graph(at)  # drawn selected


def test_delete_removes_the_run_and_its_calls(two_runs):
    ask, summary = two_runs
    at = app("runs", run=ask.run_id)
    button(at, "Delete").click().run()
    assert not at.exception
    assert [r["id"] for r in Tomes().runs()] == [summary.run_id]
    assert not Tomes().calls(ask.run_id, steps=True)
    assert at.selectbox[0].value == summary.run_id


def test_a_failed_run_resumes_from_the_runs_page_without_redoing_its_maps(book, monkeypatch):
    achat = ScriptedBackend.achat

    async def no_reduce(self, request):
        if request.messages[-1]["content"].startswith("Notes on a document"):  # the reduce
            raise TomesError("the model server went away", "start it again")
        return await achat(self, request)

    monkeypatch.setattr(ScriptedBackend, "achat", no_reduce)
    with pytest.raises(TomesError):
        Tomes().summarize("corpus:ships")
    run = Tomes().runs()[0]
    assert run["status"] == "failed"
    mapped = len(_map_calls(run["id"]))
    assert mapped == book["chunks"]
    monkeypatch.setattr(ScriptedBackend, "achat", achat)  # the server is back

    at = app("runs", run=run["id"])
    shown = " ".join(e.value for e in at.error)
    assert "went away" in shown  # the stored cause
    button(at, "Resume").click().run()
    wait_for(at, lambda a: Tomes().run(run["id"])["status"] == "done" and answered(a))
    assert len(_map_calls(run["id"])) == mapped  # finished maps were kept, not made again
    assert not any(b.label == "Resume" for b in at.button)


def test_the_recursive_controllers_iterations_show_their_code_and_output(book):
    from pipelines import recursive
    from serving.lm import LM

    steps = [
        "I look first.\n```repl\nhits = grep('island 7')\nprint('found', len(hits))\n```\n",
        'FINAL("Past island 7, at dawn.")',
    ]

    def reply(request):
        if "repl" in request.messages[0]["content"].lower():
            return steps[min(sum(m["role"] == "assistant" for m in request.messages), 1)]
        return "NONE"

    result = recursive.ask(book["id"], "Which island at dawn?", lm=LM(ScriptedBackend(reply), cache=False),
                           mode="code")
    assert result.details["iterations"] == 2
    at = app("runs", run=result.run_id)
    assert "Iterations (2)" in texts(at)
    code = [c.value for c in at.code]
    assert any("grep('island 7')" in c for c in code)
    assert any(c.startswith("found ") for c in code), code  # what the code printed
    assert "Past island 7, at dawn." in texts(at)  # its answer
