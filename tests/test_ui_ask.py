"""The Ask & summarize page: strategies from the API (unavailable ones explained), map
size, errors expanded with cause and fix, provenance linked to the reader, downloads."""

from __future__ import annotations

import json
import sys
import types

import pytest
from uitools import answered, app, button, errors, page_links, texts, voyage, wait_for

import pipelines
from app.api import Tomes
from app.errors import TomesError
from serving.backends.scripted import ScriptedBackend


@pytest.fixture
def book(tmp_path, monkeypatch):
    return voyage(tmp_path, monkeypatch)


def _ask(at, question="Where did the ship sail?", strategy="mapreduce"):
    at.radio[0].set_value("Ask").run()
    if strategy:
        next(s for s in at.selectbox if s.label == "Strategy").set_value(strategy).run()
    at.text_area[0].input(question).run()
    return at


def test_strategies_are_the_apis_and_an_unavailable_one_is_explained(book, monkeypatch):
    fake = types.ModuleType("tests_ui_fake_strategy")
    fake.__doc__ = "Writes code in a sandbox."
    fake.unavailable = lambda s: "needs a model that writes code"
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    monkeypatch.setitem(pipelines.STRATEGIES, "recursive", fake.__name__)
    at = _ask(app("ask"), strategy=None)
    box = next(s for s in at.selectbox if s.label == "Strategy")
    offered = {s["name"]: s for s in Tomes().strategies()}
    assert list(offered) == list(pipelines.STRATEGIES)
    assert box.options == [n + ("" if offered[n]["available"] else " (unavailable)") for n in offered]
    assert "recursive (unavailable)" in box.options
    assert box.value == "auto" and not button(at, "Run").disabled  # the API's default
    box.set_value("recursive").run()
    assert "needs a model that writes code" in " ".join(w.value for w in at.warning)
    assert button(at, "Run").disabled
    assert not Tomes().runs()


def test_map_size_option_reaches_the_run(book, monkeypatch):
    monkeypatch.delenv("TOMES_MAP_TOKENS")
    from app import settings

    settings.reset()

    def nodes(run: dict) -> list[str]:
        """The model calls' nodes, parse retries (nested under the call they repair) left out."""
        calls = [c for c in Tomes().calls(run["id"]) if c["backend"] != "step"]
        model_calls = {c["id"] for c in calls}
        return [c["node"] for c in calls if c["parent_id"] not in model_calls]

    at = _ask(app("ask"))
    button(at, "Run").click().run()  # automatic: the little book fits one call, no maps
    wait_for(at, answered)
    assert "map" not in nodes(Tomes().run_list()[0])
    next(c for c in at.checkbox if c.label.startswith("Map size")).uncheck().run()
    next(n for n in at.number_input if n.label.startswith("Tokens per map call")).set_value(0).run()
    button(at, "Run").click().run()
    wait_for(at, lambda a: all(r["status"] != "running" for r in Tomes().runs()))
    assert nodes(Tomes().run_list()[0]).count("map") == book["chunks"]  # a map per chunk


def test_a_failed_run_shows_cause_and_fix_expanded(book, monkeypatch):
    async def refuse(self, request):
        raise TomesError("the model server hung up", "start it again with `tomes serve vllm`")

    monkeypatch.setattr(ScriptedBackend, "achat", refuse)
    at = _ask(app("ask"))
    button(at, "Run").click().run()
    wait_for(at, lambda a: bool(a.error))
    failed = next(e for e in at.expander if e.label.startswith("Failed"))
    assert failed.proto.expanded
    shown = errors(at)
    assert "Cause:" in shown and "the model server hung up" in shown
    assert "Fix:" in shown and "tomes serve vllm" in shown


def test_provenance_entries_open_the_reader_at_their_chunk_with_the_run(book):
    at = _ask(app("ask"))
    button(at, "Run").click().run()
    wait_for(at, answered)
    run_id = Tomes().runs()[0]["id"]
    result = Tomes().run(run_id)["result"]
    assert result["provenance"]
    links = [p for p in page_links(at) if p.page == "reader"]
    assert len(links) == len(result["provenance"])
    first = result["provenance"][0]
    assert links[0].query_string == f"doc={first['document_id']}&chunk={first['chunk_id']}&run={run_id}"


def test_answer_and_provenance_download_as_markdown_and_json(book, monkeypatch):
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    # AppTest's media storage is gone after each script run: keep what the buttons served.
    served: dict[str, bytes] = {}
    load = MemoryMediaFileStorage.load_and_get_id

    def keep(self, data, mimetype, kind, filename=None):
        served[filename] = data if isinstance(data, bytes) else str(data).encode()
        return load(self, data, mimetype, kind, filename)

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", keep)
    at = _ask(app("ask"))
    button(at, "Run").click().run()
    wait_for(at, answered)
    run_id = Tomes().runs()[0]["id"]
    result = Tomes().run(run_id)["result"]
    downloads = {d.label: d for d in at.get("download_button")}
    assert set(downloads) >= {"Download Markdown", "Download JSON"}

    def content(suffix: str) -> str:
        return served[f"tomes-{run_id[:8]}.{suffix}"].decode()

    markdown = content("md")
    assert "Where did the ship sail?" in markdown and result["answer"] in markdown
    for p in result["provenance"]:
        assert f"chunk {p['chunk_id']}" in markdown and p["quote"] in markdown
    data = json.loads(content("json"))
    assert data["question"] == "Where did the ship sail?"
    assert data["result"]["run_id"] == run_id
    assert data["result"]["provenance"] == result["provenance"]


def test_a_long_provenance_list_is_drawn_a_part_at_a_time(tmp_path, monkeypatch):
    voyage(tmp_path, monkeypatch, paragraphs=40, name="long.txt")
    at = app("ask")  # Summarize over the corpus: it rests on every chunk
    button(at, "Run").click().run()
    wait_for(at, answered)
    provenance = Tomes().run(Tomes().runs()[0]["id"])["result"]["provenance"]
    assert len(provenance) > 12

    def reader_links() -> int:
        return len([p for p in page_links(at) if p.page == "reader"])

    assert reader_links() == 10
    more = next(b for b in at.button if b.label.startswith("Show "))
    assert more.label == f"Show {min(50, len(provenance) - 10)} more of {len(provenance) - 10}"
    more.click().run()
    assert reader_links() == min(60, len(provenance))


def test_map_size_is_offered_only_to_strategies_that_take_it(book, monkeypatch):
    fake = types.ModuleType("tests_ui_fake_k_strategy")
    fake.__doc__ = "Reads the k best chunks."
    fake.OPTIONS = ("k",)
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    monkeypatch.setitem(pipelines.STRATEGIES, "fewchunks", fake.__name__)
    at = _ask(app("ask"), strategy="fewchunks")
    assert not [c for c in at.checkbox if c.label.startswith("Map size")]
    next(s for s in at.selectbox if s.label == "Strategy").set_value("mapreduce").run()
    assert [c for c in at.checkbox if c.label.startswith("Map size")]


def test_auto_says_what_it_chose_and_fallbacks_are_listed(book):
    at = _ask(app("ask"), strategy="auto")
    button(at, "Run").click().run()
    wait_for(at, answered)
    details = Tomes().run(Tomes().runs()[0]["id"])["result"]["details"]
    assert details["chosen_by"] == "auto"
    shown = texts(at)
    assert f"auto chose {details['strategy']}: {details['why']}" in shown.replace("**", "")
    assert details["fallbacks"]  # the scripted model's "ok" is not the JSON asked for
    worked = next(e for e in at.expander if e.label.startswith("What the run worked around"))
    assert worked.label == f"What the run worked around ({len(details['fallbacks'])})"
