"""Imports go one way: ui -> app (api, cli) -> pipelines -> memory/retrieval/serving ->
core (store, settings, ingest). Read from the source, imports inside functions too: a
lazy import up the stack is still a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ("app.errors", "app.events", "app.settings", "app.tokens", "app.offline",
        "app.store", "app.ingest")
MIDDLE = ("serving", "retrieval", "memory")
# What each layer may not import.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "core": ("serving", "retrieval", "memory", "pipelines", "app.api", "app.cli", "ui"),
    "middle": ("pipelines", "app.api", "app.cli", "ui"),
    "pipelines": ("app.api", "app.cli", "ui"),
    "app": ("ui",),
}
# `tomes ui` starts the UI's script: it must find it, and that is all it takes.
ALLOWED = {("app/cli/ui.py", "ui")}


def _layer(module: str) -> str | None:
    if module.startswith(CORE):
        return "core"
    if module.split(".")[0] in MIDDLE:
        return "middle"
    if module.startswith("pipelines"):
        return "pipelines"
    if module.startswith(("app.api", "app.cli")):
        return "app"
    return None


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _modules() -> list[tuple[str, Path, str]]:
    """(module name, file, path in the repository) of every package module."""
    out = []
    for path in sorted(ROOT.glob("*/**/*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in {"app", "serving", "retrieval", "memory", "pipelines"}:
            name = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
            out.append((name, path, str(rel)))
    return out


def _violations(modules: list[tuple[str, Path, str]]) -> list[str]:
    bad = []
    for module, path, rel in modules:
        layer = _layer(module)
        if layer is None:
            continue
        for imported in _imports(path):
            for banned in FORBIDDEN[layer]:
                if (imported == banned or imported.startswith(banned + ".")) \
                        and (rel, banned) not in ALLOWED:
                    bad.append(f"{rel} ({layer}) imports {imported}")
    return bad


def test_every_layer_imports_only_below_itself() -> None:
    assert _violations(_modules()) == []


@pytest.mark.parametrize("source, expected", [
    ("from serving.tokenizers import active_tokenizer", "imports serving.tokenizers"),
    ("def f():\n    import retrieval\n", "imports retrieval"),
])
def test_an_upward_import_in_the_core_is_caught(tmp_path: Path, source: str, expected: str) -> None:
    real = ROOT / "app" / "ingest" / "service.py"
    copy = tmp_path / "service.py"
    copy.write_text(real.read_text(encoding="utf-8") + "\n" + source + "\n", encoding="utf-8")
    found = _violations([("app.ingest.service", copy, "app/ingest/service.py")])
    assert len(found) == 1 and expected in found[0]
