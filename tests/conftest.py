"""Every test gets its own TOMES_HOME in a temp dir, so no test touches a user's data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app import settings
from app.store.db import dispose_all

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TOMES_SHARED_DATA", ROOT.parent / "shared" / "data"))


def _has_gpu() -> bool:
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`gpu` tests need a CUDA GPU and vLLM; elsewhere they are reported as skipped with
    what they need, never run against a fake."""
    if not any(item.get_closest_marker("gpu") for item in items) or _has_gpu():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU and vLLM: pip install -e '.[gpu]'")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Costly derived artefacts (a converted tokenizer) are built once per test session."""
    return tmp_path_factory.mktemp("tomes-cache")


@pytest.fixture(autouse=True)
def tomes_home(tmp_path: Path, shared_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "tomes-home"
    monkeypatch.setenv("TOMES_HOME", str(home))
    monkeypatch.setenv("TOMES_CACHE_DIR", str(shared_cache))
    # Unit tests use the registered fakes; tests of the real thing ask for it by name.
    monkeypatch.setenv("TOMES_BACKEND", "scripted")
    monkeypatch.setenv("TOMES_EMBEDDER", "hash")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    settings.reset()
    yield home
    dispose_all()
    settings.reset()


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"sample data not found at {SHARED_DATA}; set TOMES_SHARED_DATA")
    return SHARED_DATA
