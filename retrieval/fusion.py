"""Reciprocal rank fusion (Cormack, Clarke, Büttcher 2009): each ranking contributes
1 / (k + rank) per item, so items near the top of several rankings win, and no score
scales need to be comparable."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

RRF_K = 60  # the constant from the paper; damps the weight of the very first ranks


def rrf(rankings: Sequence[Sequence[Hashable]], k: int = RRF_K) -> list[tuple[Hashable, float]]:
    scores: dict[Hashable, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    # Ties keep first-seen order (the first ranking's order), so results are stable.
    return sorted(scores.items(), key=lambda kv: -kv[1])
