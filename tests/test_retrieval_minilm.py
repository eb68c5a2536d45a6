"""The real embedder (all-MiniLM-L6-v2, shipped in a PyPI package) end to end: planted
sentences in a real book must come back for paraphrased questions."""

from __future__ import annotations

import random

import numpy as np
import pytest

from app import settings
from app.api import Tomes
from retrieval.embedders import get_embedder

# (planted sentence, a question that paraphrases it)
NEEDLES = [
    ("The harbour master of Kilrush kept exactly forty-two brass telescopes in a locked cedar chest.",
     "How many telescopes did the Kilrush port official store away in a chest?"),
    ("Captain Orla Vance named her racing pigeon Marmalade after the jam her grandmother sold in Galway.",
     "What did Captain Vance call her pigeon, and where did the name come from?"),
    ("In 1723 the parish of Ballybrack forbade the selling of turnips on Sundays after a riot at the market.",
     "Which vegetable could not be sold on the Sabbath in Ballybrack?"),
    ("The chemist Tobias Wren found that copper kettles turned the spring water of Mallow faintly green.",
     "What colour did Mallow's spring water become when Wren boiled it in copper?"),
    ("Every winter solstice the monks of Skellig Rock rang a bell cast from melted silver spoons.",
     "What metal objects were melted down to make the bell of the Skellig monks?"),
    ("The weaver Brigid Lenihan sold a tapestry of a blue heron to the Earl of Clare for ninety guineas.",
     "How much did the Earl of Clare pay for Lenihan's heron tapestry?"),
]


def plant(text: str, needles: list[str], seed: int = 7) -> str:
    """Insert each needle as its own paragraph at a random paragraph break of the body
    (between Gutenberg's START and END lines, which ingestion keeps out of the text)."""
    start = text.find("*** START OF")
    end = text.find("*** END OF")
    lo, hi = (start if start >= 0 else 0), (end if end >= 0 else len(text))
    breaks = [i for i in range(lo, hi - 1) if text[i : i + 2] == "\n\n"]
    rng = random.Random(seed)
    spots = sorted(rng.sample(breaks[2:-2], len(needles)), reverse=True)
    for spot, needle in zip(spots, needles):
        text = text[:spot] + "\n\n" + needle + text[spot:]
    return text


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
    book.write_text(plant(raw, [n for n, _ in NEEDLES]), encoding="utf-8")

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
