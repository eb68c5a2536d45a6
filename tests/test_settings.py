from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from app import settings
from app.settings import configure, get_settings, override


def test_environment_sets_defaults(monkeypatch):
    monkeypatch.setenv("TOMES_CHUNK_TOKENS", "300")
    monkeypatch.setenv("TOMES_BACKEND", "openai")
    settings.reset()
    s = get_settings()
    assert (s.chunk_tokens, s.backend) == (300, "openai")


def test_bad_environment_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("TOMES_CHUNK_TOKENS", "lots")
    settings.reset()
    with pytest.raises(ValueError, match="TOMES_CHUNK_TOKENS"):
        get_settings()


def test_override_is_scoped_and_configure_is_global(tmp_path):
    before = get_settings().backend
    with override(backend="embedded", home=str(tmp_path)) as s:
        assert s.backend == "embedded" and s.home == Path(tmp_path)
        assert get_settings().db_path == Path(tmp_path) / "tomes.db"
    assert get_settings().backend == before
    configure(chunk_tokens=128)
    assert get_settings().chunk_tokens == 128


def test_override_follows_async_tasks():
    async def read() -> str:
        await asyncio.sleep(0)
        return get_settings().backend

    async def main() -> list[str]:
        with override(backend="openai"):
            inside = await asyncio.gather(read(), read())
        return [*inside, await read()]

    inside1, inside2, outside = asyncio.run(main())
    assert inside1 == inside2 == "openai"
    assert outside != "openai"


@pytest.mark.parametrize("name, raw, words", [
    ("TOMES_CHUNK_OVERLAP", "512", "TOMES_CHUNK_OVERLAP"),   # >= chunk size
    ("TOMES_CHUNK_TOKENS", "-5", "at least 1"),
    ("TOMES_FUSION", "magic", "rrf, score"),
    ("TOMES_MAX_FILE_MB", "-1", "above 0"),
    ("TOMES_MAX_FILE_MB", "abc", "is not a number"),
    ("TOMES_MAP_TOKENS", "-3", "TOMES_MAP_TOKENS"),
])
def test_out_of_range_settings_are_refused_on_load_naming_the_variable(monkeypatch, name, raw, words):
    from app.errors import TomesError

    monkeypatch.setenv(name, raw)
    settings.reset()
    with pytest.raises(TomesError, match=words) as info:
        get_settings()
    assert name in str(info.value) and info.value.fix


def test_configure_inside_override_does_not_leak_the_scoped_values(tmp_path):
    settings.reset()
    with override(backend="openai", home=str(tmp_path)):
        configure(chunk_tokens=200)
    s = get_settings()
    assert s.chunk_tokens == 200
    assert s.backend != "openai" and s.home != Path(tmp_path)


def test_bad_values_in_code_are_refused_too():
    from app.errors import TomesError

    with pytest.raises(TomesError, match="TOMES_CHUNK_OVERLAP"):
        with override(chunk_tokens=100, chunk_overlap=100):
            pass


def test_offline_loading_is_scoped_to_the_load(monkeypatch):
    import os

    from app.offline import hub_offline

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with hub_offline():
        assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert "HF_HUB_OFFLINE" not in os.environ  # a later vllm-local download still works
