"""The real embedder (all-MiniLM-L6-v2, shipped in a PyPI package) end to end: planted
sentences in a real book must come back for paraphrased questions."""

from __future__ import annotations

import random

import numpy as np
import pytest

from app import settings
from app.api import Tomes
from bench.needles import NEEDLES as ALL_NEEDLES
from bench.needles import plant
from retrieval.embedders import get_embedder

NEEDLES = ALL_NEEDLES[:6]


@pytest.mark.slow
def test_minilm_is_offline_normalized_and_semantic():
    with settings.override(embedder="minilm"):
        emb = get_embedder()
    assert emb.dim == 384 and "MiniLM" in emb.model_id
    v = emb.encode(["A dog barks at the postman.", "The hound growls at the mail carrier.",
                    "Quarterly revenue rose by four percent."])
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-4)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2
    long_text = " ".join(["The river ran past the mill."] * 120)
    assert len(emb.windows(long_text)) >= 2  # past 256 word pieces: several windows


@pytest.mark.slow
def test_planted_needles_come_back_for_paraphrased_questions(shared_data, tmp_path):
    raw = (shared_data / "books" / "a_modest_proposal.txt").read_text(encoding="utf-8-sig")
    raw = raw.replace("\r\n", "\n").replace("\r", "\n")
    book = tmp_path / "a_modest_proposal_planted.txt"
    book.write_text(plant(raw, [n for n, _ in NEEDLES], random.Random(7)), encoding="utf-8")

    # Small chunks, so that the top 3 is a small share of the book (under 10%): a
    # ranker that ignored the question would find few needles.
    tomes = Tomes(embedder="minilm", chunk_tokens=128)
    report = tomes.ingest([book], "needles")
    assert report.embedded == sum(o.chunks for o in report.added) >= 30

    found = {"dense": 0, "keyword": 0, "hybrid": 0}
    for needle, question in NEEDLES:
        for mode in found:
            hits = tomes.search("needles", question, k=3, mode=mode)
            if any(needle[:60] in h.text or needle[-60:] in h.text for h in hits):
                found[mode] += 1
    rates = {mode: n / len(NEEDLES) for mode, n in found.items()}
    assert rates["hybrid"] >= 0.8, rates
    assert rates["dense"] >= 0.5, rates
