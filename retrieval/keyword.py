"""The keyword index of one corpus: BM25 (bm25s) over stemmed words, stop words out.

bm25s cannot add or remove documents, so the index is rebuilt whenever the corpus's
chunk set changes; that is fast (bench/retrieval.py measures it). It is stored as one
file written atomically, with the chunk ids and content fingerprints it was built from.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import bm25s
import numpy as np

from retrieval.files import read_npz, write_npz

FORMAT = 1
_PARAMS = {"k1": 1.5, "b": 0.75, "method": "lucene"}


@functools.cache
def _stemmer():
    try:
        import Stemmer  # PyStemmer (C); without it, words are matched unstemmed

        return Stemmer.Stemmer("english")
    except ImportError:
        return None


def tokenize(texts: list[str]) -> list[list[str]]:
    return bm25s.tokenize(texts, stopwords="en", stemmer=_stemmer(), return_ids=False,
                          show_progress=False)


@dataclass
class KeywordIndex:
    bm25: bm25s.BM25 | None  # None when the corpus has no chunks
    ids: np.ndarray  # chunk id of each BM25 document, in order
    hashes: np.ndarray  # content fingerprint of each

    @classmethod
    def build(cls, ids: np.ndarray, hashes: np.ndarray, texts: list[str]) -> KeywordIndex:
        if not texts:
            return cls(None, np.zeros(0, np.int64), np.zeros(0, np.int64))
        corpus = bm25s.tokenize(texts, stopwords="en", stemmer=_stemmer(), return_ids=True,
                                show_progress=False)
        bm25 = bm25s.BM25(**_PARAMS)
        bm25.index(corpus, show_progress=False)
        return cls(bm25, np.asarray(ids, np.int64), np.asarray(hashes, np.int64))

    @classmethod
    def load(cls, path: Path) -> KeywordIndex | None:
        """The saved index, or None if there is none or it cannot be read (it is cheap to
        rebuild, so an unreadable file is simply replaced)."""
        try:
            loaded = read_npz(path)
            if loaded is None:
                return None
            arrays, meta = loaded
            if meta.get("format") != FORMAT or meta.get("stemmed") != (_stemmer() is not None):
                return None  # queries would be tokenized differently: rebuild
            ids, hashes = arrays["ids"], arrays["hashes"]
            if len(ids) == 0:
                return cls(None, ids, hashes)
            bm25 = bm25s.BM25(**meta["params"])
            vocab = arrays["vocab"].tolist()
            bm25.vocab_dict = {token: i for i, token in enumerate(vocab)}
            bm25.unique_token_ids_set = set(bm25.vocab_dict.values())
            bm25.scores = {"data": arrays["data"], "indices": arrays["indices"],
                           "indptr": arrays["indptr"], "num_docs": int(meta["num_docs"])}
            bm25.nonoccurrence_array = None
            return cls(bm25, ids, hashes)
        except (OSError, ValueError, KeyError):
            return None

    def save(self, path: Path) -> None:
        arrays = {"ids": self.ids, "hashes": self.hashes}
        meta: dict = {"format": FORMAT, "params": _PARAMS, "num_docs": 0,
                      "stemmed": _stemmer() is not None}
        if self.bm25 is not None:
            vocab = sorted(self.bm25.vocab_dict, key=self.bm25.vocab_dict.__getitem__)
            # Token ids must be exactly 0..V-1 for the list form to round-trip.
            assert [self.bm25.vocab_dict[t] for t in vocab] == list(range(len(vocab)))
            arrays.update(vocab=np.array(vocab, dtype=str), data=self.bm25.scores["data"],
                          indices=self.bm25.scores["indices"], indptr=self.bm25.scores["indptr"])
            meta["num_docs"] = int(self.bm25.scores["num_docs"])
        write_npz(path, arrays, meta)

    def search(self, query: str, k: int, *, allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
        """Best ``k`` chunks as (chunk id, BM25 score); chunks sharing no word are left out."""
        if self.bm25 is None or k <= 0:
            return []
        token_ids = self.bm25.get_tokens_ids(tokenize([query])[0])
        if not token_ids:
            return []
        scores = self.bm25.get_scores_from_ids(token_ids)
        if allowed is not None:
            scores = np.where(np.isin(self.ids, allowed), scores, 0.0)
        candidates = np.flatnonzero(scores > 0)
        if len(candidates) > k:
            candidates = candidates[np.argpartition(-scores[candidates], k - 1)[:k]]
        candidates = candidates[np.argsort(-scores[candidates], kind="stable")]
        return [(int(self.ids[i]), float(scores[i])) for i in candidates]
