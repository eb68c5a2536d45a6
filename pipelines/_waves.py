"""Wave-aware packing of consecutive chunks into fan-out calls.

A backend serves ``capacity`` calls at once, so a fan-out of N calls runs in
ceil(N / capacity) waves, each as long as its longest call. Packing chunks greedily up
to a token limit gives the fewest calls but leaves a short straggler at the end and, when
the text fits fewer calls than there are slots, idle slots. This planner keeps the fewest
waves and then evens the calls out:

- when one wave can hold the text, it is cut into as many packs as there are slots (no
  pack smaller than ``min_tokens``), so every slot works and the longest call is short;
- when it cannot, the fewest packs are kept (more would cost tokens, not waves), sized
  alike so that the last wave is as long as the others and no longer;
- no pack is ever over ``limit``, and packs never run across a break (another document,
  a gap in the chunk order).

Sizes are token counts per chunk; the planner returns index ranges into them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

# A pack below this many tokens costs its prompt's instructions and its reply for little
# text: splitting a wave finer than this buys no speed worth the tokens.
MIN_PACK_TOKENS = 1000


def waves(calls: int, capacity: int) -> int:
    """Call waves a fan-out of ``calls`` takes on a backend serving ``capacity`` at once."""
    return math.ceil(calls / max(1, capacity)) if calls else 0


def breaks_of(chunks: Sequence[object]) -> list[int]:
    """Indices where a pack must start: a chunk of another document, or one that does not
    follow the previous chunk (``document_id`` and ``ordinal`` attributes)."""
    out = []
    for i in range(1, len(chunks)):
        a, b = chunks[i - 1], chunks[i]
        if a.document_id != b.document_id or a.ordinal + 1 != b.ordinal:  # type: ignore[attr-defined]
            out.append(i)
    return out


def greedy(sizes: Sequence[int], limit: int) -> list[tuple[int, int]]:
    """Consecutive ranges filled up to ``limit`` (a chunk over it stands alone): the
    fewest ranges any packing under ``limit`` can have."""
    packs: list[tuple[int, int]] = []
    start, used = 0, 0
    for i, size in enumerate(sizes):
        if i > start and used + size > limit:
            packs.append((start, i))
            start, used = i, 0
        used += size
    if sizes:
        packs.append((start, len(sizes)))
    return packs


def plan(sizes: Sequence[int], *, limit: int, capacity: int, breaks: Iterable[int] = (),
         min_tokens: int = MIN_PACK_TOKENS) -> list[tuple[int, int]]:
    """Index ranges ``(start, end)`` of ``sizes``, in order, covering every chunk."""
    if limit <= 0:
        raise ValueError("limit must be positive")
    segments = _segments(len(sizes), breaks)
    fewest = [len(greedy(sizes[a:b], limit)) for a, b in segments]
    calls = sum(fewest)
    counts = list(fewest)
    if calls <= capacity:
        # One wave: give the spare slots to the segments whose packs are biggest.
        total = sum(sizes)
        want = min(capacity, len(sizes), max(calls, total // max(1, min_tokens)))
        for _ in range(want - calls):
            best = max(range(len(segments)),
                       key=lambda s: (_mean(sizes, segments[s], counts[s])
                                      if counts[s] < segments[s][1] - segments[s][0] else -1))
            if counts[best] >= segments[best][1] - segments[best][0]:
                break  # every pack is one chunk already
            counts[best] += 1
    packs: list[tuple[int, int]] = []
    for (a, b), k in zip(segments, counts):
        packs += [(a + s, a + e) for s, e in _balanced(sizes[a:b], k, limit)]
    return packs


def _segments(n: int, breaks: Iterable[int]) -> list[tuple[int, int]]:
    cuts = sorted({b for b in breaks if 0 < b < n})
    edges = [0, *cuts, n] if n else []
    return list(zip(edges, edges[1:]))


def _mean(sizes: Sequence[int], segment: tuple[int, int], k: int) -> float:
    return sum(sizes[segment[0]:segment[1]]) / max(1, k)


def _balanced(sizes: Sequence[int], k: int, limit: int) -> list[tuple[int, int]]:
    """``k`` consecutive ranges (fewer only if there are fewer chunks) whose largest is as
    small as it can be, none over ``limit`` unless a single chunk is."""
    n = len(sizes)
    if n == 0:
        return []
    k = max(1, min(k, n))
    # The smallest cap under which greedy needs at most k ranges (binary search).
    low, high = max(sizes), max(max(sizes), min(limit, sum(sizes)))
    while low < high:
        mid = (low + high) // 2
        if len(greedy(sizes, mid)) <= k:
            high = mid
        else:
            low = mid + 1
    cap = low
    # Cut near the ideal share of each range, never over the cap: greedy under the cap
    # would leave a small last range (the straggler this planner is for).
    packs: list[tuple[int, int]] = []
    start = 0
    remaining = sum(sizes)
    for left in range(k, 0, -1):
        if left == 1 or start >= n:
            break
        share = remaining / left
        end, used = start, 0
        while end < n - (left - 1):
            nxt = used + sizes[end]
            # stop before the chunk that overshoots the share by more than it undershoots
            if end > start and (nxt > cap or nxt - share > share - used):
                break
            used = nxt
            end += 1
        # what is left must still fit the remaining ranges under the cap
        while end < n - (left - 1) and len(greedy(sizes[end:], cap)) > left - 1:
            used += sizes[end]
            end += 1
        packs.append((start, end))
        remaining -= used
        start = end
    if start < n:
        packs.append((start, n))
    return packs
