"""The API methods the UI needs: spans of text, chunk spans, one run, a run table with
titles and counts, deleting a run, the strategies on offer, and an endpoint check."""

from __future__ import annotations

import sqlite3

import pytest

from app import settings
from app.api import Tomes
from app.errors import NotFound, TomesError


@pytest.fixture
def book(tmp_path, monkeypatch):
    monkeypatch.setenv("TOMES_CHUNK_TOKENS", "40")
    monkeypatch.setenv("TOMES_MAP_TOKENS", "0")
    settings.reset()
    path = tmp_path / "voyage.txt"
    # Non-ASCII text: SQLite's substr must count characters the way Python does.
    path.write_text("\n\n".join(f"Paragraph {i}: the ship — «Ærø» — sailed past island {i} at dawn."
                                for i in range(8)), encoding="utf-8")
    Tomes().ingest([path], "ships", embed=False)
    return Tomes().documents()[0]


def test_text_returns_the_exact_span_of_the_stored_text(book):
    full = Tomes().text(book["id"])
    assert len(full) == book["chars"]
    for start, end in [(0, 10), (37, 120), (book["chars"] - 5, book["chars"] + 50)]:
        assert Tomes().text(book["id"], start, end) == full[start:end]
    assert Tomes().text(book["id"], book["chars"] + 3) == ""
    with pytest.raises(TomesError):
        Tomes().text(book["id"], 10, 5)


def test_spans_match_the_chunks_without_their_text(book):
    spans = Tomes().spans(book["id"])
    chunks = Tomes().document(book["id"])["chunks"]
    assert len(spans) == len(chunks) >= 3
    assert all("text" not in s for s in spans)
    full = Tomes().text(book["id"])
    for span, chunk in zip(spans, chunks):
        assert (span["id"], span["start"], span["end"]) == (chunk["id"], chunk["start"], chunk["end"])
        assert full[span["start"]:span["end"]] == chunk["text"]


def test_run_list_names_targets_and_counts_calls_and_tokens(book):
    result = Tomes().summarize(book["id"])
    Tomes().summarize(book["id"])  # the same again: every call a cache hit
    rows = Tomes().run_list()
    assert len(rows) == 2
    again, first = rows
    assert first["target_title"] == book["title"] and first["target"] == f"doc:{book['id']}"
    assert first["calls"] == result.calls > 1
    assert first["tokens"] == result.tokens
    assert first["cache_hits"] == 0 and first["duration_s"] >= 0 and first["finished_at"]
    assert again["calls"] == 0 and again["cache_hits"] == result.calls and again["tokens"] == 0


def test_run_list_names_corpus_targets_and_removed_documents(book):
    Tomes().summarize("corpus:ships")
    Tomes().summarize(book["id"])
    Tomes().remove(book["id"])
    titles = {r["target"]: r["target_title"] for r in Tomes().run_list()}
    assert titles["corpus:ships"] == "corpus ships"
    assert "removed" in titles[f"doc:{book['id']}"]


def test_run_returns_the_stored_result_and_target_title(book):
    result = Tomes().ask(book["id"], "Where did the ship sail?", strategy="mapreduce")
    run = Tomes().run(result.run_id)
    assert run["status"] == "done" and run["question"] == "Where did the ship sail?"
    assert run["target_title"] == book["title"]
    assert run["result"]["provenance"][0]["chunk_id"] == result.provenance[0].chunk_id
    with pytest.raises(NotFound):
        Tomes().run("no-such-run")


def _checkpoint_rows(run_id: str) -> int:
    conn = sqlite3.connect(str(settings.get_settings().checkpoint_path))
    try:
        return conn.execute("SELECT count(*) FROM checkpoints WHERE thread_id = ?", (run_id,)).fetchone()[0]
    finally:
        conn.close()


def test_delete_run_removes_the_row_calls_and_checkpoints_only_of_that_run(book):
    gone = Tomes().summarize(book["id"], length="short")
    kept = Tomes().summarize(book["id"], length="long")
    assert _checkpoint_rows(gone.run_id) > 0
    out = Tomes().delete_run(gone.run_id)
    assert out["calls"] == gone.calls + gone.cache_hits
    assert [r["id"] for r in Tomes().runs()] == [kept.run_id]
    assert Tomes().calls(gone.run_id) == []
    assert _checkpoint_rows(gone.run_id) == 0
    assert len(Tomes().calls(kept.run_id)) == kept.calls + kept.cache_hits
    assert _checkpoint_rows(kept.run_id) > 0
    with pytest.raises(NotFound):
        Tomes().delete_run(gone.run_id)


def test_delete_run_refuses_a_run_still_running(book):
    from pipelines import _runs

    run_id = _runs.create_run(None, "mapreduce", f"doc:{book['id']}", None, {})
    try:
        with pytest.raises(TomesError, match="still running"):
            Tomes().delete_run(run_id)
        assert Tomes().run(run_id)["status"] == "running"
    finally:
        _runs.fail_run(run_id, "test over")
    Tomes().delete_run(run_id)  # once it stopped, it can go


def test_strategies_offer_every_registered_one_and_explain_unavailable(monkeypatch):
    import sys
    import types

    import pipelines

    names = [s["name"] for s in Tomes().strategies()]
    assert names == list(pipelines.STRATEGIES)
    mapreduce = next(s for s in Tomes().strategies() if s["name"] == "mapreduce")
    assert mapreduce["available"] and "map_tokens" in mapreduce["options"]

    fake = types.ModuleType("tests_fake_strategy")
    fake.__doc__ = "Pretend strategy."
    fake.unavailable = lambda s: f"needs a model that writes code; {s.backend} does not"
    fake.OPTIONS = ("depth",)
    monkeypatch.setitem(sys.modules, "tests_fake_strategy", fake)
    monkeypatch.setitem(pipelines.STRATEGIES, "pretend", "tests_fake_strategy")
    monkeypatch.setitem(pipelines.STRATEGIES, "broken", "tests_no_such_module_anywhere")
    by_name = {s["name"]: s for s in Tomes().strategies()}
    assert by_name["pretend"]["available"] is False
    assert "scripted does not" in by_name["pretend"]["reason"]
    assert by_name["pretend"]["about"] == "Pretend strategy."
    assert by_name["pretend"]["options"] == ["depth"]
    assert by_name["broken"]["available"] is False and "cannot be loaded" in by_name["broken"]["reason"]


def test_check_model_reports_what_answered():
    info = Tomes().check_model()
    assert info["backend"] == "scripted" and info["reply"] and info["latency_ms"] >= 0
    assert info["context_window"] > 0


def test_check_model_names_an_unreachable_endpoint():
    with pytest.raises(TomesError) as caught:
        Tomes(backend="openai", base_url="http://127.0.0.1:9/v1").check_model(timeout=3)
    assert "127.0.0.1:9" in str(caught.value) and caught.value.fix


def test_check_model_reports_the_window_an_endpoint_serves():
    from test_serving_http import FakeVLLM

    fake = FakeVLLM(model="served/tiny", max_model_len=32768)
    fake.thread.start()
    try:
        info = Tomes(backend="openai", base_url=fake.base_url).check_model(timeout=10)
    finally:
        fake.server.shutdown()
        fake.server.server_close()
    assert info["model"] == "served/tiny" and info["base_url"] == fake.base_url
    assert info["context_window"] == 32768  # from the server's listing, not a default
