"""tomes memory build / show and tomes ask --strategy memory, through the CLI."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app import settings
from app.api import Tomes
from app.errors import TomesError
from app.cli import app
from pipelines import episodic
from serving.backends.scripted import ScriptedBackend
from serving.lm import LM
from tests import story
from tests.test_memory import _answer


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> LM:
    replies = copy.deepcopy(story.REPLIES)
    # Document-derived text that looks like Rich markup must print as it is.
    replies["sailed to Dover"]["states"][0]["role"] = "porter [/b] [red]of the docks"
    script = story.operator_reply(replies)
    lm = LM(ScriptedBackend(lambda r: script(r, _answer)))
    monkeypatch.setattr(episodic, "get_lm", lambda: lm)
    path = story.write(tmp_path / "story.md", story.CHAPTERS)
    with settings.override(chunk_tokens=45):
        Tomes().ingest([path], "tales", embed=False)
    return lm


def test_build_then_show_counts_and_an_entity_timeline(scripted: LM) -> None:
    runner = CliRunner()
    out = runner.invoke(app, ["memory", "show", "story.md"])
    assert out.exit_code == 0, out.output
    assert "0 of 4 chunks read" in out.stdout and "tomes memory build story.md" in out.stdout

    out = runner.invoke(app, ["memory", "build", "story.md"])
    assert out.exit_code == 0, out.output
    assert "memory workspace of" in out.stdout and "4 model calls" in out.stdout
    assert "extract" in out.stderr  # the progress bar

    out = runner.invoke(app, ["memory", "show", "story.md"])
    assert out.exit_code == 0, out.output
    assert "3 entities · 3 places · 5 events" in out.stdout
    assert "Tom Brown" in out.stdout and "Captain Blake" in out.stdout and "Dover" in out.stdout

    out = runner.invoke(app, ["memory", "show", "story.md", "--entity", "Blake"])
    assert out.exit_code == 0, out.output
    assert "Tom Brown (person; also called Blake, Captain Blake)" in out.stdout
    lines = out.stdout.splitlines()
    order = [next(i for i, line in enumerate(lines) if word in line)
             for word in ("clerk", "porter", "captain", "prison")]
    assert order == sorted(order)
    assert "porter [/b]" in out.stdout and "[red]of the docks" in out.stdout
    assert "(carried)" in out.stdout and "1850-03-14" in out.stdout

    data = json.loads(runner.invoke(app, ["memory", "show", "story.md", "--json"]).stdout)
    assert data["counts"]["events"] == 5 and data["complete"] is True
    assert data["top_entities"][0]["name"] == "Tom Brown"
    data = json.loads(runner.invoke(app, ["memory", "show", "corpus:tales", "-e", "Tom", "--json"]).stdout)
    assert [i["type"] for i in data["timeline"]][:2] == ["event", "role"]

    out = runner.invoke(app, ["memory", "show", "story.md", "--entity", "Nobody"])
    # main() prints a TomesError as cause and fix; the runner hands it back as it is.
    assert isinstance(out.exception, TomesError) and "no entity called 'Nobody'" in out.exception.cause
    assert "Tom Brown" in out.exception.fix  # names some that exist


def test_build_again_reads_nothing(scripted: LM) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["memory", "build", "corpus:tales"]).exit_code == 0
    calls = len(scripted.backend.requests)
    out = runner.invoke(app, ["memory", "build", "corpus:tales"])
    assert out.exit_code == 0 and "nothing new to read" in out.stdout
    assert len(scripted.backend.requests) == calls


def test_ask_with_the_memory_strategy_builds_first(scripted: LM) -> None:
    out = CliRunner().invoke(app, ["ask", "story.md", story_question(), "--strategy", "memory",
                                   "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["answer"] == "Dover" and data["details"]["workspace"] == "built first"
    assert data["provenance"] and data["details"]["context_tokens"] > 0
    out = CliRunner().invoke(app, ["ask", "story.md", story_question(), "--strategy", "memory"])
    assert out.exit_code == 0 and "Dover" in out.stdout and "rests on" in out.stdout


def story_question() -> str:
    from tests.test_memory import QUESTION

    return QUESTION
