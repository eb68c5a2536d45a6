"""The Environment: text, chunks, offsets back to documents, grep, targets, the model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app import settings
from app.api import Tomes
from app.errors import NotFound, TomesError
from app.store import Chunk, Document, session_scope
from pipelines.environment import Environment
from serving.backends.scripted import ScriptedBackend
from serving.lm import LM

PARAS = [
    "The lighthouse keeper, Ada Finch, rowed out at dawn to check the lamp.",
    "Storms had broken two panes of glass in the lantern room that winter.",
    "Her brother Tom kept the accounts and counted the oil barrels each week.",
    "A ship called the Marigold ran aground on the reef in March.",
    "Ada Finch carried the rope down the cliff path and saved six sailors.",
]


def _write(tmp_path: Path, name: str, paras: list[str]) -> Path:
    path = tmp_path / name
    path.write_text("\n\n".join(paras * 3) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def corpus(tmp_path: Path) -> dict[str, int]:
    with settings.override(chunk_tokens=40):
        t = Tomes()
        a = t.ingest([_write(tmp_path, "keeper.txt", PARAS)], "coast", embed=False)
        b = t.ingest([_write(tmp_path, "harbour.txt", [p.replace("Ada", "Bea") for p in PARAS])],
                     "coast", embed=False)
    assert not a.failed and not b.failed
    return {"keeper": a.added[0].document_id, "harbour": b.added[0].document_id}


def test_document_environment_matches_the_store(corpus: dict[str, int]) -> None:
    env = Environment.load("keeper")
    with session_scope() as s:
        doc = s.get(Document, corpus["keeper"])
        chunk_ids = [c.id for c in doc.chunks]
        assert env.text == doc.text
    assert env.target.label == f"doc:{corpus['keeper']}"
    assert [c.id for c in env.chunks] == chunk_ids and len(chunk_ids) > 1
    for c in env.chunks:
        assert env.text[c.start:c.end] == c.text
        assert c.document_id == corpus["keeper"] and c.n_tokens > 0


def test_corpus_text_keeps_offsets_per_document(corpus: dict[str, int]) -> None:
    env = Environment.load("coast")
    assert env.target.kind == "corpus"
    assert {d.id for d in env.documents} == set(corpus.values())
    with session_scope() as s:
        texts = {i: s.get(Document, i).text for i in corpus.values()}
    for d in env.documents:
        # Each document's text sits intact inside the joined text, after a separator.
        assert env.text[d.offset:d.offset + d.length] == texts[d.id]
        assert f"document {d.id}" in env.text[max(0, d.offset - 80):d.offset]
        assert env.locate(d.offset + 5) == (d.id, 5)
    assert {c.document_id for c in env.chunks} == set(corpus.values())


def test_grep_returns_document_offsets_and_chunk_ids(corpus: dict[str, int]) -> None:
    env = Environment.load("coast")
    matches = env.grep(r"(Ada|Bea) Finch")
    with session_scope() as s:
        texts = {i: s.get(Document, i).text for i in corpus.values()}
        chunks = {c.id: c for c in s.query(Chunk)}
    assert {m.document_id for m in matches} == set(corpus.values())
    assert len(matches) == 2 * 2 * 3  # two mentions per copy, three copies, two documents
    for m in matches:
        assert texts[m.document_id][m.start:m.end] == m.text
        chunk = chunks[m.chunk_id]
        assert chunk.document_id == m.document_id and chunk.start <= m.start < chunk.end
    # Separators are not content: grep never matches inside them.
    assert env.grep(r"=====") == []
    assert env.grep(re.compile("marigold", re.I))[0].text == "Marigold"


def test_targets_resolve_by_name_id_and_label(corpus: dict[str, int]) -> None:
    keeper = corpus["keeper"]
    assert Environment.load(keeper).target.label == f"doc:{keeper}"
    assert Environment.load(f"doc:{keeper}").target.label == f"doc:{keeper}"
    assert Environment.load("keeper.txt").target.label == f"doc:{keeper}"
    assert Environment.load("corpus:coast").target.label == "corpus:coast"
    with pytest.raises(NotFound):
        Environment.load("no such thing")
    with pytest.raises(NotFound):
        Environment.load(99999)
    # Two documents match "r": the error names them instead of picking one.
    with pytest.raises(NotFound, match="matches 2 documents"):
        Environment.load("r")


def test_a_name_for_both_a_corpus_and_a_document_is_refused(tmp_path: Path) -> None:
    Tomes().ingest([_write(tmp_path, "coast.txt", PARAS)], "coast", embed=False)
    with pytest.raises(TomesError, match="both a corpus and a document"):
        Environment.load("coast")
    assert Environment.load("corpus:coast").target.kind == "corpus"


def test_llm_and_llm_batch_go_through_the_lm(corpus: dict[str, int]) -> None:
    backend = ScriptedBackend(lambda req: req.messages[-1]["content"].upper())
    env = Environment.load("keeper", lm=LM(backend, cache=False))
    assert env.llm("hello") == "HELLO"
    assert env.llm_batch(["a", "b", "c"]) == ["A", "B", "C"]
    assert len(backend.requests) == 4


def test_search_is_restricted_to_the_target(corpus: dict[str, int]) -> None:
    from retrieval import sync_corpus

    sync_corpus("coast")
    env = Environment.load("keeper")
    hits = env.search("Marigold reef", 5, mode="keyword")
    assert hits and {h.document_id for h in hits} == {corpus["keeper"]}
    assert all(env.has_chunk(h.chunk_id) for h in hits)
    both = Environment.load("coast").search("Marigold reef", 10, mode="keyword")
    assert {h.document_id for h in both} == set(corpus.values())
