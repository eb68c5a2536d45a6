"""The Memory page over a real workspace (``Tomes.memory``), built by a scripted
operator from a short story: how much is read and a button that builds the rest, the
entities with their timelines, the places with the events there, all linked to the
reader."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from uitools import app, button, texts, wait_for

from app import settings
from app.api import Tomes
from pipelines import episodic
from serving.backends.scripted import ScriptedBackend
from serving.lm import LM
from tests import story
from tests.test_memory import _answer


@pytest.fixture
def tale(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict:
    script = story.operator_reply(copy.deepcopy(story.REPLIES))
    lm = LM(ScriptedBackend(lambda r: script(r, _answer)))
    monkeypatch.setattr(episodic, "get_lm", lambda: lm)  # the build, in whatever thread runs it
    path = story.write(tmp_path / "story.md", story.CHAPTERS)
    with settings.override(chunk_tokens=45):  # a chunk per chapter
        Tomes().ingest([path], "tales", embed=False)
    return Tomes().documents()[0]


def _frame(at, column: str):
    return next(f.value for f in at.dataframe if column in f.value.columns)


def test_an_unbuilt_workspace_is_built_from_the_page(tale):
    at = app("memory")
    assert not at.exception, [e.message for e in at.exception]
    assert "4 chunks of corpus tales" in texts(at) and "tomes memory build corpus:tales" in texts(at)
    assert [m.value for m in at.metric][0] == "0 of 4"
    button(at, "Build the workspace").click().run()
    wait_for(at, lambda a: bool(a.success) or bool(a.error), timeout=60)
    assert "Built · 4 model calls" in " ".join(s.value for s in at.success)
    assert any(m.value == "4 of 4" for m in at.metric)
    assert not any(b.label == "Build the workspace" for b in at.button)
    assert Tomes().run_list()[0]["calls"] == 4  # a run of its own, in Runs & calls
    assert "Tom Brown" in set(_frame(at, "also called")["name"])


def test_entities_have_timelines_and_places_their_events_linked_to_the_reader(tale):
    episodic.build(tale["id"], lm=episodic.get_lm())
    at = app("memory")
    entities = _frame(at, "kind")
    assert entities.iloc[0]["name"] == "Tom Brown" and "Captain Blake" in entities.iloc[0]["also called"]
    next(s for s in at.selectbox if s.label == "Timeline of").set_value("Tom Brown").run()
    timeline = next(f.value for f in at.dataframe if "with" in f.value.columns)
    roles = list(timeline[timeline["what"] == "role"]["role, state or event"])
    assert roles == ["clerk", "porter", "captain of the Albatross"]  # in the order the story tells them
    assert "1850-03-14" in set(timeline["date"])
    spans = {s["id"]: s for s in Tomes().spans(tale["id"])}
    for url in timeline["source"]:
        doc, chunk = url.split("doc=")[1].split("&chunk=")
        assert int(doc) == tale["id"] and int(chunk.split("&")[0]) in spans
    next(s for s in at.selectbox if s.label == "Events at").set_value("Dover").run()
    events = [f.value for f in at.dataframe if "source" in f.value.columns][-1]
    assert set(events["what"]) == {"event"}
    assert any("burn" in e for e in events["role, state or event"])
    assert any("Mary Shaw" in w for w in events["with"])
