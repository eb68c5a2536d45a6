"""A resumed run continues on the backend, model and endpoint it started with."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import pytest
from typer.testing import CliRunner

from app.api import Tomes
from app.cli import app as cli
from app.errors import TomesError
from app.store import Run, session_scope
from serving import registry
from serving.backends.scripted import ScriptedBackend
from serving.base import ChatRequest


class Wide(ScriptedBackend):
    """A 32K-window model registered under its own name; it fails while ``down``."""

    name: ClassVar[str] = "wide"
    down: ClassVar[bool] = True
    served: ClassVar[int] = 0

    def __init__(self, **kwargs) -> None:
        super().__init__(self.reply, model="wide-32k", context_window=32768, **kwargs)

    def reply(self, request: ChatRequest):
        if Wide.down:
            return RuntimeError("the server fell over")
        Wide.served += 1
        if "confidence" in request.messages[0]["content"]:
            return json.dumps({"extracted": "f", "rationale": "r", "answer": "a", "confidence": 4})
        return "The river keeps its counsel."


@pytest.fixture
def failed_wide_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(registry._BACKENDS, "wide", f"{__name__}:Wide")
    monkeypatch.setattr(Wide, "down", True)
    monkeypatch.setattr(Wide, "served", 0)
    path = tmp_path / "river.txt"
    path.write_text("The river keeps its own counsel through the valley.\n" * 40, encoding="utf-8")
    doc = Tomes().ingest([path], "rivers", embed=False).added[0].document_id
    with pytest.raises(TomesError, match="resume"):
        Tomes(backend="wide").summarize(doc, map_tokens=200)
    with session_scope() as s:
        run = s.query(Run).one()
        assert run.status == "failed"
        assert run.params["backend"] == "wide" and run.params["context_window"] == 32768
        return run.id


def test_resume_uses_the_runs_own_backend_not_todays_settings(failed_wide_run: str) -> None:
    Wide.down = False
    result = Tomes().resume(failed_wide_run)  # the settings say "scripted"
    assert Wide.served >= 2
    assert result.details["backend"] == "wide" and result.details["model"] == "wide-32k"
    assert result.answer == "The river keeps its counsel."


def test_resume_on_a_smaller_window_is_refused_naming_both(failed_wide_run: str) -> None:
    Wide.down = False
    with pytest.raises(TomesError) as err:
        Tomes().resume(failed_wide_run, backend="scripted")  # an 8K window
    assert "32,768-token window" in err.value.cause and "8,192" in err.value.cause
    assert "--backend" in err.value.fix and "start the run again" in err.value.fix
    assert Wide.served == 0
    with session_scope() as s:  # nothing computed was lost: still resumable
        assert s.get(Run, failed_wide_run).status == "failed"


def test_resume_of_an_unreachable_endpoint_names_it_and_the_flags(
    failed_wide_run: str,
) -> None:
    with session_scope() as s:
        run = s.get(Run, failed_wide_run)
        run.params = run.params | {"backend": "openai", "model": "qwen-32b",
                                   "base_url": "http://127.0.0.1:9/v1"}
    result = CliRunner().invoke(cli, ["resume", failed_wide_run])
    err = result.exception
    assert isinstance(err, TomesError), result.output  # `main` prints it as error + fix
    assert "openai" in err.cause and "qwen-32b" in err.cause and "127.0.0.1:9" in err.cause
    assert "cannot reach" in err.cause and "--backend" in err.fix, err.fix
    assert Wide.served == 0
    # Naming the backend explicitly continues on it.
    Wide.down = False
    result = CliRunner().invoke(cli, ["resume", failed_wide_run, "--backend", "wide"])
    assert result.exit_code == 0, result.output
    assert Wide.served >= 2
