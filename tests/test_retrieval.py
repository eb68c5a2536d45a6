"""Retrieval with the fake "hash" embedder: indexes in step with the store (including
after crashes), search modes, fusion, the approximate index, model mismatch, the CLI."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import delete, select

import retrieval
from app import settings
from app.api import Tomes
from app.errors import NotFound, TomesError
from app.store import Chunk, Corpus, Document, session_scope
from retrieval import embedders, files
from retrieval.embedders import HashEmbedder, get_embedder, register_embedder
from retrieval.fusion import relative_score, rrf
from retrieval.sync import DENSE_FILE, KEYWORD_FILE, _cache
from retrieval.dense import DenseIndex

TOPICS = {
    "lighthouse": "The lighthouse keeper trimmed the lamp wick at dusk while gulls circled the rocks",
    "bakery": "Fresh sourdough loaves cooled on wire racks as the baker dusted flour from her apron",
    "orbit": "The satellite adjusted its orbit with a short burn of the hydrazine thrusters",
    "chess": "White sacrificed the bishop to open the king's diagonal and forced checkmate",
    "river": "Salmon leapt up the weir where the river narrowed between mossy granite banks",
    "violin": "The luthier varnished the violin's spruce top and strung it with gut strings",
}


def paragraph(topic: str, i: int) -> str:
    return f"{TOPICS[topic]}. Entry {i} of the {topic} notes repeats that {TOPICS[topic].lower()}."


def add_document(corpus: str, title: str, paragraphs: list[str]) -> tuple[int, list[int]]:
    """Write a document and one chunk per paragraph straight into the store, as ingest
    does, without indexing (that is what a crash before embedding leaves behind)."""
    text = "\n\n".join(paragraphs)
    with session_scope() as s:
        corpus_row = s.scalar(select(Corpus).where(Corpus.name == corpus))
        if corpus_row is None:
            corpus_row = Corpus(name=corpus)
            s.add(corpus_row)
            s.flush()
        doc = Document(corpus_id=corpus_row.id, title=title, source=f"/tmp/{title}.txt",
                       format="txt", text=text,
                       content_hash=hashlib.sha256(text.encode()).hexdigest())
        chunks, pos = [], 0
        for i, para in enumerate(paragraphs):
            start = text.index(para, pos)
            pos = start + len(para)
            chunks.append(Chunk(ordinal=i, start=start, end=pos, text=para, n_tokens=len(para.split()),
                                content_hash=hashlib.sha256(para.encode()).hexdigest()))
        doc.chunks = chunks
        s.add(doc)
        s.flush()
        return doc.id, [c.id for c in doc.chunks]


def delete_document_rows(document_id: int) -> None:
    """Delete a document's rows without touching the indexes (a crash before sync)."""
    with session_scope() as s:
        s.execute(delete(Chunk).where(Chunk.document_id == document_id))
        s.execute(delete(Document).where(Document.id == document_id))


def index_path(corpus: str, name: str = DENSE_FILE) -> Path:
    with session_scope() as s:
        cid = s.scalar(select(Corpus.id).where(Corpus.name == corpus))
    return files.corpus_dir(cid, corpus) / name


@pytest.fixture
def corpus() -> dict[str, tuple[int, list[int]]]:
    docs = {
        "sea": add_document("lib", "sea", [paragraph("lighthouse", i) for i in range(4)]
                            + [paragraph("river", i) for i in range(3)]),
        "town": add_document("lib", "town", [paragraph("bakery", i) for i in range(4)]
                             + [paragraph("violin", i) for i in range(3)]),
        "games": add_document("lib", "games", [paragraph("chess", i) for i in range(3)]
                              + [paragraph("orbit", i) for i in range(3)]),
    }
    return docs


# --- embedders -------------------------------------------------------------------------


def test_hash_embedder_is_deterministic_normalized_and_topical():
    emb = get_embedder()
    assert isinstance(emb, HashEmbedder) and get_embedder() is emb  # cached per process
    texts = [TOPICS["bakery"], TOPICS["bakery"] + " again", TOPICS["orbit"]]
    v = emb.encode(texts)
    assert v.shape == (3, emb.dim) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(v, emb.encode(texts))
    assert v[0] @ v[1] > v[0] @ v[2] + 0.3


def test_hash_embedder_windows_cover_a_long_text():
    emb = HashEmbedder(window_words=20)
    text = " ".join(f"w{i}" for i in range(75))
    windows = emb.windows(text)
    assert len(windows) > 1
    covered = set(" ".join(windows).split())
    assert covered == set(text.split())
    assert windows[0].startswith("w0 ") and windows[-1].endswith("w74")


def test_unknown_embedder_is_a_clear_error():
    with settings.override(embedder="/nonexistent/model/dir"), pytest.raises(TomesError) as err:
        get_embedder()
    assert "TOMES_EMBEDDER" in err.value.fix


# --- sync: store and index agree -------------------------------------------------------


def test_sync_embeds_everything_once_then_nothing(corpus):
    events = []
    n = retrieval.sync_corpus("lib", on_event=events.append)
    assert n == 20
    embed_events = [e for e in events if e.stage == "embed"]
    assert embed_events[-1].done == embed_events[-1].total == 20
    status = retrieval.status("lib")
    assert (status["dense_chunks"], status["missing"], status["stale"]) == (20, 0, 0)
    assert status["keyword_in_step"] and status["model"] == "hash-256"
    assert retrieval.sync_corpus("lib") == 0


def test_missing_vectors_are_embedded_by_search(corpus):
    # Chunks were committed but the process died before embedding them.
    retrieval.sync_corpus("lib")
    assert retrieval.search("lib", "sourdough", k=3, mode="dense")  # verified in step
    _, new_ids = add_document("lib", "space", [f"The astronaut logged telemetry {i} from the quasar probe"
                                               for i in range(3)])
    assert retrieval.status("lib")["missing"] == 3
    hits = retrieval.search("lib", "astronaut telemetry quasar probe", k=3, mode="dense")
    assert {h.chunk_id for h in hits} == set(new_ids)
    assert retrieval.status("lib")["missing"] == 0


def test_an_interrupted_embedding_keeps_its_progress_and_resumes(corpus):
    class Stop(Exception):
        pass

    def stop_after_first_batch(event):
        if event.stage == "embed" and event.done >= 5:
            raise Stop

    with settings.override(embed_batch_size=5), pytest.raises(Stop):
        retrieval.sync_corpus("lib", on_event=stop_after_first_batch)
    status = retrieval.status("lib")
    assert status["dense_chunks"] == 5 and status["missing"] == 15
    assert retrieval.sync_corpus("lib") == 15  # only the rest
    assert retrieval.status("lib")["missing"] == 0


def test_vectors_of_deleted_chunks_are_never_returned_and_get_removed(corpus):
    retrieval.sync_corpus("lib")
    assert retrieval.search("lib", TOPICS["lighthouse"], k=3)  # indexes now verified in step
    sea_id, sea_chunks = corpus["sea"]
    delete_document_rows(sea_id)  # crash between deleting rows and removing vectors
    for mode in ("dense", "keyword", "hybrid"):
        hits = retrieval.search("lib", TOPICS["lighthouse"] + " sourdough", k=20, mode=mode)
        assert hits and not {h.chunk_id for h in hits} & set(sea_chunks)
    status = retrieval.status("lib")
    assert status["stale"] == 0 and status["dense_chunks"] == 13
    dense = DenseIndex.load(index_path("lib"), "lib")
    assert not np.isin(dense.ids, sea_chunks).any()


def test_sync_without_embedding_only_removes(corpus):
    retrieval.sync_corpus("lib")
    delete_document_rows(corpus["town"][0])
    add_document("lib", "later", [paragraph("orbit", 9)])
    assert retrieval.sync_corpus("lib", embed_missing=False) == 0
    status = retrieval.status("lib")
    assert status["stale"] == 0 and status["missing"] == 1 and status["dense_chunks"] == 13


def test_reused_chunk_ids_with_new_text_are_reembedded(corpus):
    retrieval.sync_corpus("lib")
    games_id, games_chunks = corpus["games"]  # the newest document holds the highest ids
    delete_document_rows(games_id)
    _, new_chunks = add_document("lib", "birds", [f"Kingfisher {i} dived for minnows under the willow"
                                                  for i in range(6)])
    # SQLite hands freed top rowids out again; this is the case a plain id check misses.
    assert set(new_chunks) & set(games_chunks)
    hits = retrieval.search("lib", "kingfisher minnows willow", k=6, mode="dense")
    assert {h.chunk_id for h in hits} == set(new_chunks)
    assert all("Kingfisher" in h.text for h in hits)
    assert retrieval.status("lib")["stale"] == 0


def test_remove_through_the_api_drops_the_vectors(corpus):
    retrieval.sync_corpus("lib")
    before = retrieval.status("lib")["vectors"]
    Tomes().remove(corpus["sea"][0])
    status = retrieval.status("lib")
    assert status["dense_chunks"] == 13 and status["vectors"] < before
    assert status["keyword_in_step"]


def test_ingest_embeds_and_no_embed_is_repaired_by_search(tmp_path):
    book = tmp_path / "notes.txt"
    book.write_text("\n\n".join(paragraph(t, i) for t in ("bakery", "orbit") for i in range(6)))
    report = Tomes().ingest([book], "ing")
    assert report.embedded == sum(o.chunks for o in report.added) > 0
    other = tmp_path / "more.txt"
    other.write_text("\n\n".join(paragraph("violin", i) for i in range(6)))
    report = Tomes().ingest([other], "ing", embed=False)
    assert report.embedded == 0 and retrieval.status("ing")["missing"] > 0
    hits = Tomes().search("ing", "luthier varnished violin spruce", k=3, mode="dense")
    assert hits and hits[0].title == "more" and "violin" in hits[0].text
    assert retrieval.status("ing")["missing"] == 0


def test_background_sync_reports_progress(corpus):
    events = []
    future = retrieval.sync_in_background("lib", on_event=events.append)
    assert future.result(timeout=60) == 20
    assert any(e.stage == "embed" and e.done == 20 for e in events)


def test_background_sync_keeps_the_callers_settings(corpus, tmp_path):
    with settings.override(embedder="hash-small-bg"):
        register_embedder("hash-small-bg", _small_hash)
        assert retrieval.sync_in_background("lib").result(timeout=60) == 20
    assert retrieval.status("lib")["model"] == "hash-64"


def _small_hash():
    return HashEmbedder(dim=64)


# --- search ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["dense", "keyword", "hybrid"])
def test_each_mode_finds_the_topic(corpus, mode):
    hits = retrieval.search("lib", "baker sourdough loaves flour", k=4, mode=mode)
    assert len(hits) == 4
    assert all("sourdough" in h.text for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    doc_id = corpus["town"][0]
    with session_scope() as s:
        doc_text = s.get(Document, doc_id).text
    for h in hits:
        assert h.document_id == doc_id and h.title == "town"
        assert doc_text[h.start : h.end] == h.text


def test_hybrid_carries_both_ranks_and_fuses_them(corpus):
    hits = retrieval.search("lib", "satellite orbit thrusters", k=5, mode="hybrid")
    assert hits[0].dense_rank is not None and hits[0].keyword_rank is not None
    top = hits[0]
    assert top.score == pytest.approx(1 / (60 + top.dense_rank) + 1 / (60 + top.keyword_rank))


def test_relative_score_fusion_is_chosen_by_the_settings(corpus):
    query = "satellite orbit thrusters"
    with settings.override(fusion="score"):
        hits = retrieval.search("lib", query, k=5, mode="hybrid")
    assert all(0.0 <= h.score <= 1.0 for h in hits)
    dense = retrieval.search("lib", query, k=50, mode="dense")
    keyword = retrieval.search("lib", query, k=50, mode="keyword")
    expected = relative_score([[(h.chunk_id, h.score) for h in dense],
                               [(h.chunk_id, h.score) for h in keyword]])[:5]
    assert [h.chunk_id for h in hits] == [c for c, _ in expected]
    assert [h.score for h in hits] == pytest.approx([s for _, s in expected])
    with pytest.raises(TomesError, match="TOMES_FUSION"):  # refused as it is set
        with settings.override(fusion="vibes"):
            retrieval.search("lib", query, mode="hybrid")


def test_document_filter_restricts_every_mode(corpus):
    games_id = corpus["games"][0]
    for mode in ("dense", "keyword", "hybrid"):
        hits = retrieval.search("lib", TOPICS["lighthouse"] + " chess", k=10, mode=mode,
                                document_id=games_id)
        assert hits and {h.document_id for h in hits} == {games_id}
    with pytest.raises(NotFound):
        retrieval.search("lib", "chess", document_id=987654)


def test_search_errors_name_the_fix(corpus):
    with pytest.raises(TomesError) as err:
        retrieval.search("nope", "anything")
    assert "tomes docs" in err.value.fix and "tomes ingest" in err.value.fix
    with pytest.raises(TomesError) as err:
        retrieval.search("lib", "anything", mode="fuzzy")
    assert "hybrid" in err.value.fix
    assert retrieval.search("lib", "   ") == []


def test_keyword_search_ignores_stop_words_and_stems(corpus):
    assert retrieval.search("lib", "the of and", mode="keyword") == []
    hits = retrieval.search("lib", "sacrificing bishops", k=3, mode="keyword")
    assert hits and all("sacrificed the bishop" in h.text for h in hits)


def test_rrf_prefers_items_ranked_well_in_both_lists():
    fused = dict(rrf([["a", "b", "c"], ["c", "b", "d"]]))
    assert fused["b"] > fused["a"] and fused["b"] > fused["d"]
    assert fused["c"] == pytest.approx(1 / 63 + 1 / 61)


def test_fusion_scales_each_list_and_keeps_a_confident_first_place():
    dense = [("a", 0.62), ("m", 0.50), ("x", 0.35)]
    keyword = [("n", 14.0), ("m", 6.0), ("y", 1.0)]
    fused = dict(relative_score([dense, keyword]))
    assert fused["n"] == fused["a"] == pytest.approx(0.5)  # each list's first place
    assert fused["m"] == pytest.approx((0.15 / 0.27 + 5 / 13) / 2)
    # m is middling in both lists; rank fusion (k=60) would put it above n
    # (2/62 > 1/61), though keyword search is far surer of n.
    assert fused["n"] > fused["m"]
    assert fused["x"] == 0.0 and fused["y"] == 0.0
    assert relative_score([[("only", 2.0)], []]) == [("only", 0.5)]
    assert relative_score([[], []]) == []


def test_search_while_another_writer_holds_the_lock_neither_blocks_nor_lies(corpus):
    retrieval.sync_corpus("lib")
    sea_id, sea_chunks = corpus["sea"]
    delete_document_rows(sea_id)
    directory = index_path("lib").parent
    with files.write_lock(directory):
        result: dict = {}
        worker = threading.Thread(target=lambda: result.update(
            hits=retrieval.search("lib", TOPICS["lighthouse"], k=20, mode="hybrid")))
        worker.start()
        worker.join(timeout=30)
        assert not worker.is_alive()
    assert result["hits"] and not {h.chunk_id for h in result["hits"]} & set(sea_chunks)
    assert retrieval.status("lib")["stale"] == 7  # left for the writer to repair
    retrieval.sync_corpus("lib")
    assert retrieval.status("lib")["stale"] == 0


def test_search_waits_for_a_writer_adding_chunks_the_index_lacks(corpus):
    """Stale entries are filtered without waiting (above); chunks not yet indexed are
    not: a search (a rag question) would answer as if they did not exist."""
    retrieval.sync_corpus("lib")
    new_id, new_chunks = add_document("lib", "hall", [paragraph("orbit", i) for i in range(3)])
    directory = index_path("lib").parent
    release = threading.Event()
    held = threading.Event()

    def writer() -> None:  # another process's ingest, mid-way
        with files.write_lock(directory):
            held.set()
            release.wait(10)

    threading.Thread(target=writer).start()
    held.wait(10)
    result: dict = {}
    searcher = threading.Thread(target=lambda: result.update(
        hits=retrieval.search("lib", TOPICS["orbit"], k=5, mode="hybrid")))
    searcher.start()
    searcher.join(timeout=1.0)
    assert searcher.is_alive(), "searched half-built indexes instead of waiting"
    release.set()
    searcher.join(timeout=30)
    assert {h.chunk_id for h in result["hits"]} & set(new_chunks)
    assert retrieval.status("lib")["missing"] == 0


# --- approximate index -----------------------------------------------------------------


def test_large_corpora_switch_to_ivf_and_back(corpus):
    with settings.override(ann_threshold=16):
        retrieval.sync_corpus("lib")
        status = retrieval.status("lib")
        assert status["kind"] == "ivf" and status["dense_chunks"] == 20
        # Querying with a chunk's own text finds that chunk first.
        target_id = corpus["games"][1][4]
        with session_scope() as s:
            text = s.get(Chunk, target_id).text
        assert retrieval.search("lib", text, k=1, mode="dense")[0].chunk_id == target_id
        hits = retrieval.search("lib", "chess", k=3, mode="dense", document_id=corpus["sea"][0])
        assert {h.document_id for h in hits} == {corpus["sea"][0]}
        Tomes().remove(corpus["town"][0])
        Tomes().remove(corpus["games"][0])
        status = retrieval.status("lib")
        assert status["kind"] == "flat" and status["dense_chunks"] == 7 and status["stale"] == 0


def test_ivf_rebuild_keeps_ids_and_fingerprints_aligned():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(300, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.repeat(np.arange(100, 250), 2)  # two windows per chunk
    hashes = ids * 7 + 1
    dense = DenseIndex.new("m", 16)
    dense.add(vectors, ids, hashes)
    assert dense.rebalance(threshold=200) and dense.kind == "ivf"
    assert np.array_equal(dense.hashes, dense.ids * 7 + 1)
    found = dense.search(vectors[10], 1, nprobe=1000)
    assert found[0][0] == ids[10]
    assert dense.remove(np.array([ids[10]])) == 2
    assert dense.ntotal == 298 and ids[10] not in dense.ids


# --- model records and re-embedding ----------------------------------------------------


def test_an_index_of_another_model_is_refused_until_reembedded(corpus):
    retrieval.sync_corpus("lib")
    register_embedder("hash-small", _small_hash)
    with settings.override(embedder="hash-small"):
        with pytest.raises(TomesError) as err:
            retrieval.search("lib", "sourdough", mode="dense")
        assert "tomes reembed lib" in err.value.fix and "hash-256" in err.value.cause
        assert retrieval.search("lib", "sourdough", mode="keyword")  # no model needed
        assert Tomes().reembed("lib") == 20
        assert retrieval.status("lib")["model"] == "hash-64"
        assert "sourdough" in retrieval.search("lib", "sourdough loaves", mode="dense")[0].text
    with pytest.raises(TomesError):
        retrieval.sync_corpus("lib")  # back on hash-256: refused, not mixed


# --- files -----------------------------------------------------------------------------


def test_index_writes_are_atomic(corpus, monkeypatch):
    retrieval.sync_corpus("lib")
    path = index_path("lib")
    before = path.read_bytes()
    add_document("lib", "extra", [paragraph("river", 7)])

    def torn_write(f, **arrays):
        f.write(b"PK\x03\x04 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", torn_write)
    with pytest.raises(OSError):
        retrieval.sync_corpus("lib")
    monkeypatch.undo()
    assert path.read_bytes() == before  # the old index, whole
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert retrieval.sync_corpus("lib") == 1


def test_indexes_persist_and_reload_from_disk(corpus):
    retrieval.sync_corpus("lib")
    first = [(h.chunk_id, round(h.score, 5)) for h in retrieval.search("lib", "violin gut strings", k=5)]
    _cache.clear()
    embedders._loaded.clear()
    assert index_path("lib", KEYWORD_FILE).exists()
    again = [(h.chunk_id, round(h.score, 5)) for h in retrieval.search("lib", "violin gut strings", k=5)]
    assert again == first


# --- CLI -------------------------------------------------------------------------------


def test_cli_search_json_and_table(corpus):
    from typer.testing import CliRunner

    from app.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["search", "lib", "salmon weir river", "-k", "3", "--json"])
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert len(hits) == 3 and all("Salmon" in h["text"] for h in hits)
    assert {"chunk_id", "document_id", "title", "start", "end", "score"} <= set(hits[0])
    result = runner.invoke(app, ["search", "lib", "salmon", "--mode", "keyword"])
    assert result.exit_code == 0 and "sea" in result.stdout
    result = runner.invoke(app, ["search", "missing", "salmon"])
    assert isinstance(result.exception, TomesError)
    result = runner.invoke(app, ["reembed", "lib", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["embedded"] == 20


def test_search_during_a_background_embedding_is_answered_at_once(corpus):
    retrieval.sync_corpus("lib")
    _, new_ids = add_document("lib", "space", [f"The astronaut logged telemetry {i} from the quasar probe"
                                               for i in range(3)])
    embedding, release = threading.Event(), threading.Event()

    def hold(event):
        if event.stage == "embed" and event.done == 0:
            embedding.set()
            release.wait(30)

    future = retrieval.sync_in_background("lib", on_event=hold)
    try:
        assert embedding.wait(30)
        # The keyword index was rebuilt before embedding began: new chunks are found.
        hits = retrieval.search("lib", "astronaut quasar telemetry", k=3, mode="keyword")
        assert {h.chunk_id for h in hits} == set(new_ids)
        hits = retrieval.search("lib", "sourdough baker", k=3, mode="hybrid")
        assert hits and "sourdough" in hits[0].text
    finally:
        release.set()
    assert future.result(timeout=60) == 3
