"""Runs started from the UI belong to the process, not the page: multi-call runs finish,
survive navigation, and uploads are stored under safe names."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app import settings
from app.api import Tomes

UI = Path(__file__).resolve().parents[1] / "ui"
PAGES = UI / "app_pages"


@pytest.fixture
def small_chunks(monkeypatch, tmp_path):
    monkeypatch.setenv("TOMES_CHUNK_TOKENS", "40")
    monkeypatch.setenv("TOMES_CHUNK_OVERLAP", "0")
    monkeypatch.setenv("TOMES_MAP_TOKENS", "0")  # one map call per chunk
    settings.reset()
    book = tmp_path / "voyage.txt"
    book.write_text("\n\n".join(f"Paragraph {i} tells how the ship sailed past island {i} at dawn."
                                for i in range(8)))
    Tomes().ingest([book], "ships", embed=False)
    assert Tomes().documents()[0]["chunks"] >= 3
    return book


def _texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [s.value for s in at.subheader] + [c.value for c in at.caption]
    return "\n".join(str(p) for p in parts)


def _wait_for(at: AppTest, done, timeout: float = 60.0) -> AppTest:
    deadline = time.monotonic() + timeout
    while True:
        if done(at):
            return at
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; page shows: {_texts(at)!r} errors={[e.value for e in at.error]}")
        time.sleep(0.2)
        at.run()


def _start_ask(at: AppTest, question: str = "Where did the ship sail?") -> AppTest:
    at.radio[0].set_value("Ask").run()
    at.text_area[0].input(question).run()
    at.button[0].click().run()
    return at


def test_multi_call_ask_through_the_ui_finishes_with_an_answer(small_chunks):
    at = AppTest.from_file(str(PAGES / "ask.py"), default_timeout=60).run()
    _start_ask(at)
    assert not at.exception
    _wait_for(at, lambda a: any(s.value == "Answer" for s in a.subheader) or a.error)
    assert not at.error, [e.value for e in at.error]
    runs = Tomes().runs()
    assert runs and runs[0]["status"] == "done", runs
    assert len(Tomes().calls(runs[0]["id"])) > 1
    assert "model calls" in _texts(at)


def test_a_run_survives_navigating_away_and_back(small_chunks, monkeypatch):
    import asyncio

    from serving.backends.scripted import ScriptedBackend

    achat = ScriptedBackend.achat

    async def slow(self, request):  # slow enough that we leave while it runs
        await asyncio.sleep(1.0)
        return await achat(self, request)

    monkeypatch.setattr(ScriptedBackend, "achat", slow)
    at = AppTest.from_file(str(UI / "app.py"), default_timeout=60).run()
    at.switch_page("app_pages/ask.py").run()
    _start_ask(at)
    assert not at.exception
    at.switch_page("app_pages/library.py").run()  # away, mid-run
    assert not at.exception
    at.switch_page("app_pages/ask.py").run()  # and back: the job is still there
    assert not at.exception
    assert any("Running" in s.label for s in at.status), "the run should still be going"
    _wait_for(at, lambda a: any(s.value == "Answer" for s in a.subheader) or a.error)
    assert not at.error, [e.value for e in at.error]


def test_a_blank_question_is_refused_before_running(small_chunks):
    at = AppTest.from_file(str(PAGES / "ask.py"), default_timeout=60).run()
    at.radio[0].set_value("Ask").run()
    at.text_area[0].input("   \n ").run()
    assert at.button[0].disabled
    assert not Tomes().runs()


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


def test_library_page_shows_why_background_indexing_failed(tmp_path):
    from app.errors import TomesError
    from ui._state import start_job

    (tmp_path / "a.txt").write_text("Walruses haul out on the ice.\n")
    Tomes().ingest([tmp_path / "a.txt"], "zoo", embed=False)

    def work(on_event):
        raise TomesError("the embedder is missing", "set TOMES_EMBEDDER")

    job = start_job("index", "index zoo", work, job_id="index:zoo")
    job.thread.join(10)
    at = AppTest.from_file(str(PAGES / "library.py"), default_timeout=60).run()
    assert not at.exception
    shown = " ".join(e.value for e in at.error)
    assert "the embedder is missing" in shown and "TOMES_EMBEDDER" in shown
