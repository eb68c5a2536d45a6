"""The README's Python API section is a complete example: extracted and run, not copied."""

from __future__ import annotations

import json
import re
from pathlib import Path

from app.api import Tomes

README = Path(__file__).resolve().parents[1] / "README.md"


def api_snippet() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the Python API section has one example"
    return blocks[0]


def test_the_readme_api_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the example writes its files where it runs
    exec(compile(api_snippet(), str(README), "exec"), {"__name__": "__readme__"})
    printed = capsys.readouterr().out
    assert "['harbour']" in printed
    assert "unknown strategy 'psychic'" in printed  # the error it shows is a TomesError

    home = Tomes(home=tmp_path / "tomes-demo")
    assert (tmp_path / "tomes-demo" / "tomes.db").exists()
    answers = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert {a["custom_id"]: a["status"] for a in answers} == {"q1": "done", "s1": "done"}
    runs = home.runs()
    assert {r["pipeline"] for r in runs} >= {"direct", "rag", "mapreduce"}
    assert any(r["chosen_by"] == "auto" for r in runs)
    assert [d["title"] for d in home.documents()] == ["harbour"]  # the batch found it again
