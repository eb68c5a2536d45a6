"""Batches and ingestion on a real local Ray (one cluster for the module, 2 CPUs) against
PostgreSQL, with a loopback OpenAI-compatible server as the model (the scripted fake
lives in the driver; Ray workers are other processes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from app.api import Tomes
from app.cli import app as cli
from app.errors import TomesError
from app.store import Chunk, Run, session_scope
from tests._postgres import postgres_server, postgres_store, postgres_url  # noqa: F401
from tests.test_serving_http import FakeVLLM

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster():
    import ray  # the scale extra: pip install -e '.[scale]'

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture
def model(monkeypatch):
    fake = FakeVLLM()
    fake.thread.start()
    monkeypatch.setenv("TOMES_BACKEND", "openai")
    monkeypatch.setenv("TOMES_BASE_URL", fake.base_url)
    from app import settings

    settings.reset()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def _book(tmp_path: Path) -> Path:
    path = tmp_path / "hazel.txt"
    path.write_text("The island of Hazel has a lighthouse and a harbour. " * 40)
    return path


def _items(n: int, target: str) -> list[str]:
    return [json.dumps({"custom_id": f"q{i}", "target": target, "strategy": "direct",
                        "question": f"What is on the island, part {i}?"}) for i in range(n)]


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


def test_a_killed_ray_batch_resumes_with_nothing_lost_or_duplicated(
        cluster, model, postgres_store, tmp_path):
    book = _book(tmp_path)
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(_items(16, str(book))) + "\n")
    out = tmp_path / "out.jsonl"
    model.script.extend(("sleep", 0.25, ("ok", f"answer {i}")) for i in range(200))
    env = {**os.environ, "TOMES_DATABASE_URL": postgres_store}
    child = subprocess.Popen(
        [sys.executable, "-m", "app", "batch", str(source), "--out", str(out),
         "--ray-address", cluster, "--json"], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and child.poll() is None:
            if out.exists() and len(out.read_text().splitlines()) >= 4:
                break
            time.sleep(0.05)
        assert child.poll() is None, child.communicate()
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
    before = _records(out)
    assert 4 <= len(before) < 16
    calls_before = model.chat_requests()

    report = Tomes().batch(source, out, ray=cluster)
    records = _records(out)
    ids = [r["custom_id"] for r in records]
    assert sorted(ids) == sorted(f"q{i}" for i in range(16)) and len(ids) == len(set(ids))
    assert [r.get("error") for r in records if r["status"] != "done"] == []
    assert report.skipped == len(before) and report.done == 16 - len(before)
    assert records[:len(before)] == before  # what was written stays as it was
    with session_scope() as s:  # one run per item, in the shared store
        assert s.scalar(select(func.count(Run.id))) == 16
        assert s.scalar(select(func.count(func.distinct(Run.id)))) == 16
    # The finished items were not asked again; at most the 2 in flight (and the 2 queued
    # behind them) when the driver died were.
    assert model.chat_requests() - calls_before <= 16 - len(before) + 4
    assert any("ran on Ray" in n for n in report.notes)


def test_bad_lines_are_reported_exactly_like_the_local_batch(cluster, model, postgres_store, tmp_path):
    book = _book(tmp_path)
    good = _items(2, str(book))
    lines = [good[0], "not json", json.dumps({"custom_id": "x", "question": "no target?"}),
             json.dumps({"custom_id": "q0", "target": "t", "question": "again"}),
             json.dumps({"custom_id": "s", "target": str(book), "summary": {}, "strategy": "rag"}),
             good[1]]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines) + "\n")
    tomes = Tomes()
    local = tomes.batch(source, tmp_path / "local.jsonl")
    remote = tomes.batch(source, tmp_path / "ray.jsonl", ray=True)

    def failed(report):
        return [r for r in report.records if r["status"] == "failed"]

    assert remote.bad_lines == local.bad_lines == 4 and remote.failed == local.failed == 4
    assert failed(remote) == failed(local)
    assert [r["custom_id"] for r in remote.records] == [r["custom_id"] for r in local.records]
    assert remote.done == local.done == 2


def _dense(corpus: str):
    from retrieval import store_state
    from retrieval.dense import DenseIndex
    from retrieval.files import corpus_dir
    from retrieval.sync import DENSE_FILE

    return DenseIndex.load(corpus_dir(store_state.corpus_id(corpus), corpus) / DENSE_FILE, corpus)


def _index_rows(corpus: str) -> list[tuple[int, bytes]]:
    """(content fingerprint, vector) of every vector in a corpus's dense index, sorted: a
    chunk's vectors as a local embedding would make them, whatever its id."""
    import faiss

    dense = _dense(corpus)
    flat = faiss.downcast_index(dense.index.index)  # exact index: vectors in add order
    vectors = flat.reconstruct_n(0, flat.ntotal)
    return sorted(zip(dense.hashes.tolist(), (v.tobytes() for v in vectors)))


def test_ingest_on_ray_embeds_in_ray_workers_as_a_local_ingest_would(
        cluster, postgres_store, tmp_path, monkeypatch):
    from retrieval.embedders import get_embedder

    folder = tmp_path / "books"
    folder.mkdir()
    for i in range(4):
        # Long chunks: several of the hash embedder's windows each, so the multi-vector
        # path runs in the workers too.
        text = f"Book {i} tells of the harbour town number {i} and its boats. " * 300
        if i == 2:
            text += "Marmalade Quince guards lighthouse keys. " + text
        (folder / f"b{i}.txt").write_text(text)
    (folder / "empty.txt").write_text("")

    def not_here(*_a, **_k):
        raise AssertionError("encoded on the driver")

    tomes = Tomes()
    events = []
    with monkeypatch.context() as m:
        m.setattr(get_embedder(), "encode", not_here)  # the driver's embedder
        report = tomes.ingest([folder], "books", ray=True, on_event=events.append)
    assert sorted(Path(o.path).name for o in report.added) == [f"b{i}.txt" for i in range(4)]
    assert [Path(o.path).name for o in report.failed] == ["empty.txt"]
    with session_scope() as s:
        chunks = s.scalar(select(func.count(Chunk.id)))
    assert chunks > 4 and report.embedded == chunks
    embeds = [e for e in events if e.stage == "embed"]
    assert embeds[0].done == 0 and embeds[-1].done == embeds[-1].total == chunks
    dense = _dense("books")
    with session_scope() as s:
        assert dense.chunk_ids().tolist() == sorted(s.scalars(select(Chunk.id)))
    assert dense.ntotal > chunks  # one vector per window, more windows than chunks

    local = tomes.ingest([folder], "local")  # the same files, embedded here
    assert local.embedded == chunks
    assert _index_rows("books") == _index_rows("local")

    hits = tomes.search("books", "Marmalade Quince lighthouse keys", k=3, mode="dense")
    assert hits and "Marmalade Quince" in hits[0].text
    with monkeypatch.context() as m:
        m.setattr(get_embedder(), "encode", not_here)
        again = tomes.ingest([folder], "books", ray=True)  # same content: a no-op
    assert len(again.skipped) == 4 and not again.added and again.embedded == 0


def test_ray_without_ray_installed_says_how_to_install_it(monkeypatch, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text(_items(1, "doc")[0] + "\n")
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    result = CliRunner().invoke(cli, ["batch", str(source), "--out", str(tmp_path / "o.jsonl"),
                                      "--ray"])
    assert isinstance(result.exception, TomesError)  # main() prints it as cause and fix
    assert "not installed" in result.exception.cause
    assert "pip install 'tomes[scale]'" in result.exception.fix
    result = CliRunner().invoke(cli, ["ingest", str(source), "--ray"])
    assert "pip install 'tomes[scale]'" in str(result.exception)


def test_the_scripted_fake_is_refused_on_ray_with_the_fix(cluster, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text(_items(1, "doc")[0] + "\n")
    with pytest.raises(TomesError) as info:
        Tomes(backend="scripted").batch(source, tmp_path / "o.jsonl", ray=True)
    assert "Ray workers cannot call it" in str(info.value) and "TOMES_BASE_URL" in str(info.value)


def test_workers_with_another_embedder_than_the_driver_are_refused(
        cluster, postgres_store, tmp_path, monkeypatch):
    import retrieval
    from retrieval import embedders

    book = _book(tmp_path)
    # The driver's "hash" makes 128 dims; the workers, set up from the settings alone,
    # load the stock 256: two vector spaces, which must not meet in one index.
    monkeypatch.setitem(embedders._EMBEDDERS, "hash", lambda: embedders.HashEmbedder(dim=128))
    monkeypatch.delitem(embedders._loaded, "hash", raising=False)
    with pytest.raises(TomesError) as info:
        Tomes().ingest([book], "mixed", ray=True)
    assert "hash-256" in info.value.cause and "hash-128" in info.value.cause
    assert "same embedding model" in info.value.cause  # the worker's fix, passed on
    assert retrieval.status("mixed")["vectors"] == 0  # nothing of the other space kept


def test_ray_followed_by_an_address_is_that_cluster_and_otherwise_a_local_ray():
    from app.cli.batch import spell_ray_address

    argv = ["batch", "in.jsonl", "--out", "out.jsonl", "--ray", "10.0.0.5:6379"]
    assert spell_ray_address(argv)[-2:] == ["--ray-address", "10.0.0.5:6379"]
    assert spell_ray_address(["batch", "in.jsonl", "--ray", "ray://head:10001"])[-2] == "--ray-address"
    assert spell_ray_address(["ingest", "--ray=auto", "books"]) == ["ingest", "--ray-address=auto", "books"]
    for local in (["ingest", "--ray", "books/"], ["ingest", "books", "--ray"],
                  ["batch", "in.jsonl", "--ray", "--out", "o.jsonl"]):
        assert spell_ray_address(local) == local  # a local Ray; the next word is not an address
