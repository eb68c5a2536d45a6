"""Helpers for the Streamlit AppTest tests (tests/test_ui*.py): the app as the browser
runs it (the st.navigation entry point), polling until a page shows something, and small
documents with many chunks."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

from streamlit.testing.v1 import AppTest

from app import settings
from app.api import Tomes

UI = Path(__file__).resolve().parents[1] / "ui"
PAGES = UI / "app_pages"


def app(page: str | None = None, **query: str) -> AppTest:
    """The whole app, on ``page`` (e.g. "runs"), with query params as a link sets them."""
    at = AppTest.from_file(str(UI / "app.py"), default_timeout=60).run()
    assert not at.exception, [e.message for e in at.exception]
    if page:
        at.query_params.update(query)
        at.switch_page(f"app_pages/{page}.py").run()
    return at


def texts(at: AppTest) -> str:
    parts = ([m.value for m in at.markdown] + [s.value for s in at.subheader]
             + [c.value for c in at.caption] + [x.value for x in at.success]
             + [x.value for x in at.info] + [x.value for x in at.warning] + [x.value for x in at.error]
             + [x.value for x in at.get("text")])
    return unescape("\n".join(str(p) for p in parts))


def unescape(markdown: str) -> str:
    """Markdown source as read: the UI escapes user text (ui._state.plain)."""
    return re.sub(r"\\(.)", r"\1", markdown)


def errors(at: AppTest) -> str:
    return unescape(" ".join(e.value for e in at.error))


def html(at: AppTest) -> str:
    return "\n".join(h.proto.body for h in at.get("html"))


def wait_for(at: AppTest, done: Callable[[AppTest], bool], timeout: float = 60.0) -> AppTest:
    """Rerun the page (as its polling fragment does) until ``done`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        assert not at.exception, [e.message for e in at.exception]
        if done(at):
            return at
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; page shows: {texts(at)!r}")
        time.sleep(0.2)
        at.run()


def answered(at: AppTest) -> bool:
    return any(s.value == "Answer" for s in at.subheader) or bool(at.error)


def button(at: AppTest, label: str):
    matches = [b for b in at.button if b.label == label]
    assert matches, f"no button {label!r}; buttons: {[b.label for b in at.button]}"
    return matches[0]


def page_links(at: AppTest) -> list:
    return [p.proto for p in at.get("page_link")]


def voyage(tmp_path: Path, monkeypatch, paragraphs: int = 8, name: str = "voyage.txt") -> dict:
    """A small book cut into one chunk per paragraph, mapped one chunk per call."""
    monkeypatch.setenv("TOMES_CHUNK_TOKENS", "40")
    monkeypatch.setenv("TOMES_CHUNK_OVERLAP", "0")
    monkeypatch.setenv("TOMES_MAP_TOKENS", "0")
    settings.reset()
    book = tmp_path / name
    book.write_text("\n\n".join(f"Paragraph {i} tells how the ship sailed past island {i} at dawn."
                                for i in range(paragraphs)))
    Tomes().ingest([book], "ships", embed=False)
    doc = next(d for d in Tomes().documents() if d["title"] == Path(name).stem)
    assert doc["chunks"] >= 3
    return doc


def island_model(island: int) -> Callable:
    """Scripted replies for a map-reduce question over ``voyage``: only the map of the
    chunk that tells of ``island`` finds something, and the reduce cites that note, so
    the answer rests on a chunk in the middle of the book."""
    import json

    needle = f"island {island} "

    def reply(request) -> str:
        prompt = request.messages[-1]["content"]
        if "Report what this text says" in prompt:
            text = prompt.split('"""')[1]
            found = needle in text
            quote = next((line.strip() for line in text.splitlines() if needle in line), "")
            return json.dumps({"quotes": [quote] if found else [],
                "extracted": f"The ship sailed past island {island} at dawn." if found else "",
                "rationale": "the text says so" if found else "not in this part",
                "answer": f"past island {island}" if found else "NONE", "confidence": 5 if found else 1})
        if "Answer the question from the notes" in prompt:
            cited = [int(m.group(1)) for m in re.finditer(r"^\[(\d+)\][^\n]*" + re.escape(f"island {island}"),
                                                           prompt, re.M)]
            return json.dumps({"answer": f"Past island {island}, at dawn.", "rationale": "note",
                               "confidence": 5, "notes": cited})
        return "ok"

    return reply


def script_model(monkeypatch, replies) -> None:
    """Every ScriptedBackend made without replies (the one the API builds from
    TOMES_BACKEND=scripted, in any thread) answers with ``replies``."""
    from serving.backends.scripted import ScriptedBackend

    init = ScriptedBackend.__init__

    def with_replies(self, given=None, *args, **kwargs):
        init(self, given if given is not None else replies, *args, **kwargs)

    monkeypatch.setattr(ScriptedBackend, "__init__", with_replies)
