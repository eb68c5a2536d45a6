"""The dense index of one corpus: FAISS vectors whose ids are chunk primary keys.

Exact (``IndexIDMap`` over ``IndexFlatIP``) up to settings.ann_threshold vectors, then
approximate (``IndexIVFFlat``, inner product, which stores the ids itself and supports
removal). A chunk longer than the model's input gets one vector per window, all under
the chunk's id; a search returns each chunk once, scored by its best window.

Beside the vectors the file keeps, per vector, the chunk id and a fingerprint of the
chunk's content hash, so a sync can tell which chunks are indexed, which are gone and
which ids were reused by SQLite for other content.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from app.errors import TomesError
from retrieval.files import read_npz, set_aside, write_npz

FORMAT = 1


@dataclass
class DenseIndex:
    index: faiss.Index
    ids: np.ndarray  # int64, one per vector (a chunk's windows repeat its id)
    hashes: np.ndarray  # int64 content fingerprint, one per vector
    model: str
    dim: int
    kind: str = "flat"  # "flat" (exact) | "ivf" (approximate)
    trained_on: int = 0  # vectors the IVF quantizer was trained on

    @classmethod
    def new(cls, model: str, dim: int) -> DenseIndex:
        return cls(_flat(dim), np.zeros(0, np.int64), np.zeros(0, np.int64), model, dim)

    @classmethod
    def load(cls, path: Path, corpus: str) -> DenseIndex | None:
        try:
            loaded = read_npz(path)
            if loaded is None:
                return None
            arrays, meta = loaded
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}")
            try:
                index = faiss.deserialize_index(arrays["faiss"])
            except RuntimeError as exc:  # readable zip, damaged FAISS bytes: rebuild
                return set_aside(path, exc)
        except (OSError, ValueError, KeyError) as exc:
            raise TomesError(
                f"the dense index of corpus {corpus!r} at {path} cannot be read ({exc})",
                f"rebuild it with `tomes reembed {shlex.quote(corpus)}`",
            ) from exc
        return cls(index, arrays["ids"], arrays["hashes"], meta["model"], int(meta["dim"]),
                   meta["kind"], int(meta.get("trained_on", 0)))

    def save(self, path: Path) -> None:
        meta = {"format": FORMAT, "model": self.model, "dim": self.dim, "kind": self.kind,
                "trained_on": self.trained_on, "vectors": int(self.index.ntotal),
                "chunks": int(len(self.chunk_ids()))}
        write_npz(path, {"faiss": faiss.serialize_index(self.index), "ids": self.ids,
                         "hashes": self.hashes}, meta)

    def check_model(self, model: str, dim: int, corpus: str) -> None:
        if (self.model, self.dim) != (model, dim):
            raise TomesError(
                f"the dense index of corpus {corpus!r} was built with embedding model "
                f"{self.model} ({self.dim} dims), but the embedder is now {model} ({dim} dims)",
                f"rebuild it with `tomes reembed {shlex.quote(corpus)}`, or set TOMES_EMBEDDER "
                f"back to the model it was built with",
            )

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def chunk_ids(self) -> np.ndarray:
        return np.unique(self.ids)

    def chunk_hashes(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, hashes) with one row per indexed chunk, sorted by id."""
        ids, first = np.unique(self.ids, return_index=True)
        return ids, self.hashes[first]

    def add(self, vectors: np.ndarray, ids: np.ndarray, hashes: np.ndarray) -> None:
        if len(ids) == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        self.index.add_with_ids(vectors, ids)
        self.ids = np.concatenate([self.ids, ids])
        self.hashes = np.concatenate([self.hashes, np.asarray(hashes, np.int64)])

    def remove(self, ids: np.ndarray) -> int:
        """Drop every vector of these chunk ids; returns vectors removed."""
        ids = np.ascontiguousarray(np.unique(ids), dtype=np.int64)
        if len(ids) == 0:
            return 0
        removed = int(self.index.remove_ids(faiss.IDSelectorBatch(ids)))
        keep = ~np.isin(self.ids, ids)
        self.ids, self.hashes = self.ids[keep], self.hashes[keep]
        return removed

    def rebalance(self, threshold: int) -> bool:
        """Switch to IVF past ``threshold`` vectors (retraining as the index quadruples),
        back to exact below half of it. Returns True when the index was rebuilt."""
        n = self.ntotal
        if self.kind == "flat" and n >= threshold:
            target = "ivf"
        elif self.kind == "ivf" and n < threshold // 2:
            target = "flat"
        elif self.kind == "ivf" and n > 4 * max(self.trained_on, 1):
            target = "ivf"
        else:
            return False
        vectors, ids = self._all_vectors()
        if target == "flat":
            self.index = _flat(self.dim)
            self.trained_on = 0
        else:
            self.index = _trained_ivf(vectors, self.dim)
            self.trained_on = len(vectors)
        self.index.add_with_ids(vectors, ids)
        self.kind = target
        # The per-vector bookkeeping follows the new index's order.
        order = _stable_positions(self.ids, ids)
        self.hashes = self.hashes[order]
        self.ids = ids
        return True

    def search(self, query: np.ndarray, k: int, *, allowed: np.ndarray | None = None,
               nprobe: int = 16) -> list[tuple[int, float]]:
        """Best ``k`` chunks as (chunk id, score), each chunk once (its best window)."""
        n = self.ntotal
        if n == 0 or k <= 0:
            return []
        query = np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32)
        selector = None
        limit = n
        if allowed is not None:
            allowed = np.ascontiguousarray(allowed, dtype=np.int64)
            if len(allowed) == 0:
                return []
            selector = faiss.IDSelectorBatch(allowed)
            limit = int(np.isin(self.ids, allowed).sum())
        if self.kind == "ivf":
            ivf = faiss.extract_index_ivf(self.index)
            # Restricted to a few chunks, probing every list costs little and misses none.
            params = faiss.SearchParametersIVF(
                sel=selector, nprobe=ivf.nlist if selector is not None else min(nprobe, ivf.nlist)
            )
        else:
            params = faiss.SearchParameters(sel=selector) if selector is not None else None
        want = min(limit, 3 * k + 10)
        while True:
            scores, found = _search_one_thread(self.index, query, want, params)
            best: dict[int, float] = {}
            for cid, score in zip(found[0].tolist(), scores[0].tolist()):
                if cid >= 0 and cid not in best:
                    best[cid] = score
            if len(best) >= k or want >= limit:
                return list(best.items())[:k]
            want = min(limit, want * 4)

    def _all_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """Every stored vector and its id, in the index's own order."""
        n, d = self.ntotal, self.dim
        if self.kind == "flat":
            inner = faiss.downcast_index(self.index.index)
            vectors = inner.reconstruct_n(0, n) if n else np.zeros((0, d), np.float32)
            return np.ascontiguousarray(vectors, np.float32), faiss.vector_to_array(self.index.id_map).astype(np.int64)
        ivf = faiss.extract_index_ivf(self.index)
        invlists = ivf.invlists
        all_vectors, all_ids = [], []
        for lst in range(ivf.nlist):
            size = invlists.list_size(lst)
            if not size:
                continue
            all_ids.append(faiss.rev_swig_ptr(invlists.get_ids(lst), size).copy())
            codes = faiss.rev_swig_ptr(invlists.get_codes(lst), size * ivf.code_size).copy()
            all_vectors.append(codes.view(np.float32).reshape(size, d))
        if not all_ids:
            return np.zeros((0, d), np.float32), np.zeros(0, np.int64)
        return np.concatenate(all_vectors), np.concatenate(all_ids).astype(np.int64)


def _search_one_thread(index: faiss.Index, query: np.ndarray, k: int, params):
    # One query is too small to split across threads; OpenMP threads spinning against
    # other work made a 10k exact search take 48 ms instead of 2 ms on 2 busy cores.
    # omp_set_num_threads affects only parallel regions this thread starts.
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        return index.search(query, k, params=params)
    finally:
        faiss.omp_set_num_threads(threads)


def _flat(dim: int) -> faiss.Index:
    return faiss.IndexIDMap(faiss.IndexFlatIP(dim))


def _trained_ivf(vectors: np.ndarray, dim: int) -> faiss.Index:
    n = len(vectors)
    # ~sqrt(n) lists keeps both the list scan and the centroid scan small; at least 39
    # training points per list is what k-means needs to place them sensibly.
    nlist = max(1, min(int(2 * math.sqrt(n)), n // 39))
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    # Subsample training: k-means cost grows with points x lists; 64 per list is plenty.
    index.cp.max_points_per_centroid = 64
    index.cp.seed = 1234
    index.train(vectors)
    return index  # faiss's wrapper keeps a reference to the quantizer


def _stable_positions(old_ids: np.ndarray, new_ids: np.ndarray) -> np.ndarray:
    """For each position of new_ids, a position in old_ids holding the same id, using each
    old position once (ids repeat when a chunk has several windows)."""
    old_order = np.argsort(old_ids, kind="stable")
    new_order = np.argsort(new_ids, kind="stable")
    positions = np.empty(len(new_ids), dtype=np.int64)
    positions[new_order] = old_order
    return positions
