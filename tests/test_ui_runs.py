"""Runs started from the UI belong to the process, not the page: multi-call runs finish,
survive navigation, several go at once; uploads are stored under safe names, failures are
errors and are not kept; indexing shows its progress in words."""

from __future__ import annotations

import asyncio
import time

import pytest
from uitools import answered, app, button, errors, texts, voyage, wait_for

from app import settings
from app.api import Tomes
from serving.backends.scripted import ScriptedBackend


@pytest.fixture
def small_chunks(monkeypatch, tmp_path):
    return voyage(tmp_path, monkeypatch)


@pytest.fixture
def slow_model(monkeypatch):
    achat = ScriptedBackend.achat

    async def slow(self, request):  # slow enough that we leave while it runs
        await asyncio.sleep(0.5)
        return await achat(self, request)

    monkeypatch.setattr(ScriptedBackend, "achat", slow)


def _start_ask(at, question: str = "Where did the ship sail?"):
    at.radio[0].set_value("Ask").run()
    next(s for s in at.selectbox if s.label == "Strategy").set_value("mapreduce").run()  # many calls
    at.text_area[0].input(question).run()
    button(at, "Run").click().run()
    return at


def test_multi_call_ask_through_the_ui_finishes_with_an_answer(small_chunks):
    # Before runs had a worker of their own, every run of more than one call died with
    # NoSessionContext after ~2 s: this is the test that caught it.
    at = app("ask")
    _start_ask(at)
    wait_for(at, answered)
    assert not at.error, [e.value for e in at.error]
    runs = Tomes().runs()
    assert runs and runs[0]["status"] == "done", runs
    assert len(Tomes().calls(runs[0]["id"])) > 1
    assert "model calls" in texts(at)


def test_a_run_survives_navigating_away_and_back(small_chunks, slow_model):
    at = app("ask")
    _start_ask(at)
    assert any("Running" in s.label for s in at.status)
    at.switch_page("app_pages/library.py").run()  # away, mid-run
    assert not at.exception
    at.switch_page("app_pages/runs.py").run()  # another page shows it going
    assert not at.exception
    assert Tomes().runs()[0]["status"] == "running"
    at.switch_page("app_pages/ask.py").run()  # and back: the job is still there
    assert any("Running" in s.label for s in at.status), "the run should still be going"
    wait_for(at, answered)
    assert not at.error, [e.value for e in at.error]
    assert Tomes().runs()[0]["status"] == "done"


def test_progress_shows_node_calls_done_and_elapsed_time(small_chunks, slow_model):
    at = app("ask")
    _start_ask(at)
    wait_for(at, lambda a: any("calls done" in c.value and "s elapsed" in c.value and "node `map`" in c.value
                               for c in a.caption), timeout=30)
    wait_for(at, answered)


def test_several_runs_go_at_once(small_chunks, slow_model):
    at = app("ask")
    _start_ask(at, "Where did the ship sail?")
    at.text_area[0].input("When did the ship sail?").run()
    button(at, "Run").click().run()
    running = [s for s in at.status if "Running" in s.label]
    assert len(running) == 2, [s.label for s in at.status]
    assert [r["status"] for r in Tomes().runs()] == ["running", "running"]
    wait_for(at, lambda a: all(r["status"] == "done" for r in Tomes().runs()))
    wait_for(at, answered)
    questions = {r["question"] for r in Tomes().runs()}
    assert questions == {"Where did the ship sail?", "When did the ship sail?"}


def test_a_blank_question_is_refused_before_running(small_chunks):
    at = app("ask")
    at.radio[0].set_value("Ask").run()
    at.text_area[0].input("   \n ").run()
    assert button(at, "Run").disabled
    assert not Tomes().runs()


# --- uploads -------------------------------------------------------------------------


def test_upload_names_are_reduced_to_a_safe_base_name(tmp_path):
    from ui._state import safe_upload_path

    folder = tmp_path / "uploads"
    folder.mkdir()
    p = safe_upload_path(folder, "../../x.txt")
    assert p == folder / "x.txt"
    p.write_text("one")
    q = safe_upload_path(folder, "..\\..\\x.txt")
    assert q.parent == folder and q.name == "x-1.txt"
    assert safe_upload_path(folder, "/etc/pass\x00wd\n.md").name == "passwd.md"
    assert safe_upload_path(folder, "..").parent == folder
    assert safe_upload_path(folder, "").name


def _upload(at, *files):
    at.file_uploader[0].set_value(list(files))
    at.button[0].click()  # the form's submit button
    return at.run()


def test_an_upload_named_with_a_traversal_lands_inside_home(tomes_home):
    at = app("library")
    _upload(at, ("../../x.txt", b"The lighthouse keeper counted the ships.\n", "text/plain"))
    assert not at.exception and not at.error, [e.value for e in at.error]
    uploads = tomes_home / "uploads"
    assert (uploads / "x.txt").read_bytes().startswith(b"The lighthouse")
    assert not (tomes_home.parent.parent / "x.txt").exists()
    assert not (tomes_home.parent / "x.txt").exists()
    docs = Tomes().documents()
    assert [d["title"] for d in docs] == ["x"]
    # Same name again, other content: stored beside it, nothing overwritten.
    _upload(at, ("../../x.txt", b"Another keeper, another night.\n", "text/plain"))
    assert (uploads / "x.txt").read_bytes().startswith(b"The lighthouse")
    assert (uploads / "x-1.txt").exists()
    assert len(Tomes().documents()) == 2


def test_a_failed_upload_is_an_error_without_server_paths_and_is_not_kept(tomes_home):
    at = app("library")
    _upload(at, ("empty.txt", b"   \n\n  ", "text/plain"),
            ("good.txt", b"The tide came in at noon.\n", "text/plain"))
    shown = errors(at)
    assert "empty.txt" in shown and "is empty" in shown
    assert str(tomes_home) not in shown and "/uploads" not in shown
    assert not (tomes_home / "uploads" / "empty.txt").exists()
    assert (tomes_home / "uploads" / "good.txt").exists()
    successes = " ".join(s.value for s in at.success)
    assert "good" in successes and "empty" not in successes


def test_the_size_limit_shown_is_the_one_enforced(tomes_home, monkeypatch):
    monkeypatch.setenv("TOMES_MAX_FILE_MB", "0.01")  # 10 KB
    settings.reset()
    at = app("library")
    uploader = at.file_uploader[0]
    assert uploader.proto.max_upload_size_mb == 1  # Streamlit counts whole megabytes
    assert "0.01 MB" in uploader.help
    _upload(at, ("big.txt", b"word " * 4000, "text/plain"))
    shown = errors(at)
    assert "big.txt" in shown and "0.01 MB limit" in shown and "smaller file" in shown
    assert not (tomes_home / "uploads" / "big.txt").exists()
    assert not Tomes().documents()


# --- indexing ------------------------------------------------------------------------


def test_index_status_is_words_and_a_progress_bar_until_done(tmp_path, monkeypatch):
    import retrieval.sync as sync

    real = sync.sync_corpus

    def slow_sync(corpus, **kw):
        time.sleep(1.5)
        return real(corpus, **kw)

    monkeypatch.setattr(sync, "sync_corpus", slow_sync)
    monkeypatch.setattr("retrieval.sync_corpus", slow_sync)
    at = app("library")
    _upload(at, ("tide.txt", b"The tide came in at noon.\n\nThe boats rose with it.\n", "text/plain"))
    bars = [p.proto.text for p in at.get("progress")]
    assert any("indexing" in b for b in bars), bars
    wait_for(at, lambda a: any("ready" in p.proto.text for p in a.get("progress")), timeout=30)
    ready = next(p.proto.text for p in at.get("progress") if "ready" in p.proto.text)
    assert "chunks embedded" in ready and "keyword index up to date" in ready


def test_library_page_shows_why_background_indexing_failed(tmp_path):
    from app.errors import TomesError
    from ui._state import start_job

    (tmp_path / "a.txt").write_text("Walruses haul out on the ice.\n")
    Tomes().ingest([tmp_path / "a.txt"], "zoo", embed=False)

    def work(on_event):
        raise TomesError("the embedder is missing", "set TOMES_EMBEDDER")

    job = start_job("index", "index zoo", work, job_id=f"index:{settings.get_settings().home}:zoo")
    job.thread.join(10)
    at = app("library")
    shown = errors(at)
    assert "the embedder is missing" in shown and "TOMES_EMBEDDER" in shown
    assert any(b.label == "Index now" for b in at.button)
