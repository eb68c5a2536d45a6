"""The tokenizer of the model that will read the chunks, for budgets and overflow
checks, obtained without starting the model.

The embedded model's tokenizer is converted once from its GGUF file (transformers
reads the vocabulary out of the GGUF, ~10 s) and kept as ``tokenizer.json`` under
``settings.cache_dir``; after that it loads in ~0.1 s with the ``tokenizers`` library
alone. Tokenizer objects are also kept per process.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Any

from serving.base import ApproxTokenizer, BackendError, Tokenizer

log = logging.getLogger(__name__)

_lock = threading.Lock()
_loaded: dict[str, Tokenizer] = {}


class HFTokenizer:
    """A Hugging Face ``tokenizers`` tokenizer counting tokens without special ones."""

    approximate = False

    def __init__(self, name: str, tokenizer: Any, path: Path | None = None) -> None:
        self.name = name
        self.path = path  # the tokenizer.json it came from (its directory has the template)
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tok = tokenizer

    def count(self, text: str) -> int:
        return len(self._tok.encode(text, add_special_tokens=False))

    def count_many(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        # One call into Rust for the whole list; it spreads the work over the cores
        # and skips building offsets (~1 MB of text in ~0.5 s on 2 cores).
        encodings = self._tok.encode_batch_fast(list(texts), add_special_tokens=False)
        return [len(e) for e in encodings]

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def __repr__(self) -> str:
        return f"HFTokenizer({self.name!r})"


def _load_json(name: str, path: Path) -> HFTokenizer:
    from tokenizers import Tokenizer as RustTokenizer

    return HFTokenizer(name, RustTokenizer.from_file(str(path)), path)


def gguf_tokenizer_dir(gguf: Path) -> Path:
    """Where the tokenizer converted from ``gguf`` is cached (built on first use)."""
    from app.settings import get_settings

    stat = gguf.stat()
    key = f"{gguf.stem.lower()}-{stat.st_size}"
    out = get_settings().cache_dir / "tokenizers" / key
    if not (out / "tokenizer.json").is_file():
        _convert_gguf(gguf, out)
    return out


def _convert_gguf(gguf: Path, out: Path) -> None:
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:  # pragma: no cover - transformers is a main dependency
        raise BackendError(
            "transformers is needed once to read the tokenizer out of the GGUF file",
            "pip install transformers gguf",
        ) from exc
    from app.offline import hub_offline

    with hub_offline():
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Write beside and rename, so a concurrent reader never sees half a directory.
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    tok.save_pretrained(str(tmp))
    try:
        os.replace(tmp, out)
    except OSError:  # another process got there first
        shutil.rmtree(tmp, ignore_errors=True)


def gguf_tokenizer(gguf: Path, name: str | None = None) -> HFTokenizer:
    key = f"gguf:{gguf}"
    with _lock:
        tok = _loaded.get(key)
        if tok is None:
            path = gguf_tokenizer_dir(gguf) / "tokenizer.json"
            tok = _loaded[key] = _load_json(name or gguf.stem, path)
    return tok  # type: ignore[return-value]


def smollm2_tokenizer() -> HFTokenizer:
    """The embedded model's tokenizer (SmolLM2-135M-Instruct)."""
    from serving.local_model import smollm2_gguf
    from serving.presets import EMBEDDED

    return gguf_tokenizer(smollm2_gguf(), EMBEDDED.name)


def local_hf_tokenizer(repo_or_path: str) -> HFTokenizer | None:
    """A Hugging Face tokenizer already on this machine (a directory, a tokenizer.json
    or the hub cache), never downloaded; None when it is not here."""
    key = f"hf:{repo_or_path}"
    with _lock:
        if key in _loaded:
            return _loaded[key]  # type: ignore[return-value]
    path = Path(repo_or_path).expanduser()
    candidate: Path | None = None
    if path.is_file() and path.name.endswith(".json"):
        candidate = path
    elif (path / "tokenizer.json").is_file():
        candidate = path / "tokenizer.json"
    elif "/" in repo_or_path and not path.exists():
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(repo_or_path, "tokenizer.json")
            if isinstance(found, str):
                candidate = Path(found)
        except Exception:  # noqa: BLE001 - a broken hub cache means "not available"
            candidate = None
    if candidate is None:
        return None
    tok = _load_json(repo_or_path, candidate)
    with _lock:
        _loaded[key] = tok
    return tok


def for_backend(backend: str, model: str | None) -> Tokenizer:
    """The tokenizer for a backend name and model, without starting the model."""
    from serving import presets

    if backend in ("embedded", "transformers"):
        preset = presets.find(model)
        if model and (preset is None or preset.backend != "embedded"):
            path = Path(model).expanduser()
            if path.suffix == ".gguf" and path.is_file():
                return gguf_tokenizer(path)
        try:
            return smollm2_tokenizer()
        except BackendError as exc:
            # Counting still works approximately; the model call will say what to install.
            log.warning("%s; counting tokens approximately", exc.cause)
            return ApproxTokenizer()
    if backend in ("openai", "vllm-local"):
        preset = presets.find(model)
        ids = [i for i in ((preset.tokenizer if preset else None), model) if i]
        for tokenizer_id in ids:
            tok = local_hf_tokenizer(tokenizer_id)
            if tok is not None:
                return tok
        return ApproxTokenizer()
    return ApproxTokenizer()


def active_tokenizer() -> Tokenizer:
    """The tokenizer for the settings' backend and model, without starting the model."""
    from app.settings import get_settings

    settings = get_settings()
    return for_backend(settings.backend, settings.model)


def clear_cache() -> None:
    """Forget the tokenizers loaded in this process (tests use this)."""
    with _lock:
        _loaded.clear()
