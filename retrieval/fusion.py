"""Fusing the dense and keyword rankings of a hybrid search (``TOMES_FUSION``).

``rrf`` (the default), reciprocal rank fusion (Cormack, Clarke, Büttcher 2009): each
ranking contributes 1 / (k + rank) per item, so items near the top of several rankings
win and no score scales need to be comparable.

``score``, relative-score fusion: each list's scores are scaled to 0..1 by its own best
and worst candidate (so the scales of cosine and BM25 never meet) and averaged, 0 where
a list lacks the item; equal weights, nothing tuned. Where one list is sure of its first
place and the other lacks it, as when a question names the fact it asks about, RRF lets
an item both lists rank middling win instead. On facts planted in three corpora of
four novels (bench/retrieval.py) its top-5 hit rate was 0.90-1.00 where RRF had
0.80-0.90, with no loss on pure paraphrases. On a held-out set (bench/needles.py
HELD_OUT, four other books) the two tied, so RRF stays the default.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

RRF_K = 60  # the constant from the paper; damps the weight of the very first ranks

Scored = Sequence[tuple[Hashable, float]]


def rrf(rankings: Sequence[Sequence[Hashable]], k: int = RRF_K) -> list[tuple[Hashable, float]]:
    scores: dict[Hashable, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    # Ties keep first-seen order (the first ranking's order), so results are stable.
    return sorted(scores.items(), key=lambda kv: -kv[1])


def _scaled(hits: Scored) -> dict[Hashable, float]:
    if not hits:
        return {}
    scores = [s for _, s in hits]
    hi, lo = max(scores), min(scores)
    if hi == lo:  # one candidate, or all alike: all equally the best
        return {item: 1.0 for item, _ in hits}
    return {item: (s - lo) / (hi - lo) for item, s in hits}


def relative_score(lists: Sequence[Scored]) -> list[tuple[Hashable, float]]:
    """(item, fused score in 0..1), best first; ties keep first-seen order."""
    scaled = [_scaled(hits) for hits in lists]
    fused: dict[Hashable, float] = {}
    for one in scaled:
        for item in one:
            fused.setdefault(item, 0.0)
    for item in fused:
        fused[item] = sum(one.get(item, 0.0) for one in scaled) / len(scaled)
    return sorted(fused.items(), key=lambda kv: -kv[1])


FUSIONS: dict[str, Callable[[Sequence[Scored]], list[tuple[Hashable, float]]]] = {
    "rrf": lambda lists: rrf([[item for item, _ in hits] for hits in lists]),
    "score": relative_score,
}
