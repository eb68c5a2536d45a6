"""The Settings page: what tomes runs on, switching backend and endpoint for one session
only, and a check that the endpoint answers (a real HTTP server, and one that is not
there)."""

from __future__ import annotations

import socket

import pytest
from test_serving_http import FakeVLLM
from uitools import app, button, errors, wait_for

from app import settings
from app.api import Tomes


@pytest.fixture
def server():
    fake = FakeVLLM(model="served/tiny", max_model_len=32768)
    fake.thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def _table(at, column: str) -> dict[str, str]:
    frame = next(f.value for f in at.dataframe if column in f.value.columns)
    return dict(zip(frame[column], frame["value"]))


def _switch(at, backend: str, base_url: str = "", model: str = "") -> None:
    next(s for s in at.selectbox if s.label == "Backend").set_value(backend)
    next(t for t in at.text_input if t.label == "Model").input(model)
    next(t for t in at.text_input if t.label.startswith("Endpoint")).input(base_url)
    button(at, "Use for this session").click().run()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_page_shows_backend_model_window_capacity_presets_embedder_and_home(tomes_home, monkeypatch):
    monkeypatch.setenv("TOMES_CONCURRENCY", "3")
    settings.reset()
    at = app("settings")
    active = _table(at, "active")
    assert active["backend"] == "scripted"
    assert active["capacity"].startswith("3")
    assert set(active) >= {"model", "endpoint", "context window", "preset"}
    stored = _table(at, "setting")
    assert stored["home"] == str(tomes_home) and stored["embedder"] == "hash"
    presets = next(f.value for f in at.dataframe if "writes_code" in f.value.columns)
    assert {p["name"] for p in Tomes().models()["presets"]} == set(presets["name"])


def test_the_check_reports_what_answered(tomes_home):
    at = app("settings")
    button(at, "Check that the model answers").click().run()
    wait_for(at, lambda a: bool(a.success) or bool(a.error), timeout=30)
    assert not at.error, errors(at)
    shown = " ".join(s.value for s in at.success)
    assert "scripted answered in" in shown and "window 8,192 tokens" in shown


def test_switching_to_an_endpoint_applies_to_this_session_only(server):
    at = app("settings")
    _switch(at, "openai", server.base_url)
    active = _table(at, "active")
    assert active["backend"].startswith("openai (switched for this session)")
    assert active["endpoint"] == server.base_url
    button(at, "Check that the model answers").click().run()
    wait_for(at, lambda a: bool(a.success) or bool(a.error), timeout=30)
    assert not at.error, errors(at)
    shown = " ".join(s.value for s in at.success)
    assert "served/tiny" in shown and "32,768" in shown
    assert server.chat_requests() == 1  # the check asked the server, once
    assert _table(at, "active")["context window"] == "32,768 tokens"  # learnt from the check
    # The server's settings and a new session are untouched.
    assert settings.get_settings().backend == "scripted"
    assert _table(app("settings"), "active")["backend"] == "scripted"
    # And back.
    button(at, "Back to the server's settings").click().run()
    assert _table(at, "active")["backend"] == "scripted"


def test_a_run_started_after_switching_uses_the_sessions_endpoint(server, tmp_path):
    (tmp_path / "a.txt").write_text("The lamp was lit at dusk.\n")
    Tomes().ingest([tmp_path / "a.txt"], "shelf", embed=False)
    server.script.extend([("ok", "It was lit at dusk.")] * 4)
    at = app("settings")
    _switch(at, "openai", server.base_url)
    at.switch_page("app_pages/ask.py").run()
    assert next(s for s in at.selectbox if s.label == "Backend").value == "openai"
    button(at, "Run").click().run()
    wait_for(at, lambda a: all(r["status"] != "running" for r in Tomes().runs()))
    assert server.chat_requests() >= 1
    assert {c["backend"] for c in Tomes().calls(Tomes().runs()[0]["id"])} == {"openai"}


def test_an_unreachable_endpoint_is_named_with_what_to_do(tomes_home):
    at = app("settings")
    url = f"http://127.0.0.1:{_free_port()}/v1"
    _switch(at, "openai", url)
    button(at, "Check that the model answers").click().run()
    wait_for(at, lambda a: bool(a.error), timeout=60)
    shown = errors(at)
    assert "Cause:" in shown and f"127.0.0.1:{url.split(':')[2].split('/')[0]}" in shown
    assert "Fix:" in shown
    assert next(e for e in at.expander if e.label.startswith("The model did not answer")).proto.expanded
