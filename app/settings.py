"""Global settings with scoped overrides.

Values come from defaults, then ``TOMES_*`` environment variables, then code:
``configure(backend="openai")`` changes them for the process, ``with
override(backend="scripted"):`` changes them for one block (and its tasks, since the
override lives in a context variable).
"""

from __future__ import annotations

import contextvars
import dataclasses
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from app.errors import TomesError


def _default_home() -> Path:
    return Path(os.environ.get("TOMES_HOME") or Path.home() / ".tomes")


@dataclass(frozen=True)
class Settings:
    # Where the SQLite database, FAISS indexes and run checkpoints live.
    home: Path = field(default_factory=_default_home)
    # Derived artefacts that are costly to rebuild and safe to share between homes
    # (e.g. a tokenizer converted from a GGUF file). Default: <home>/cache.
    cache_root: Path | None = field(
        default_factory=lambda: Path(p) if (p := os.environ.get("TOMES_CACHE_DIR")) else None
    )
    # The store (and run checkpoints): a SQLAlchemy URL, e.g.
    # postgresql+psycopg://user@host/db for a store several machines share. None: SQLite
    # under home.
    database_url: str | None = None
    # FAISS and BM25 files; may be shared storage. None: <home>/indexes.
    index_root: Path | None = field(
        default_factory=lambda: Path(p) if (p := os.environ.get("TOMES_INDEX_ROOT")) else None
    )

    # Serving: which backend answers, which model it serves.
    backend: str = "embedded"
    model: str | None = None  # None: the backend's default model
    base_url: str = "http://127.0.0.1:8000/v1"
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int | None = None  # None: the backend's own capacity
    # A model server's whole reply to one request, and one call with its retries: a hung
    # server is an error after call_timeout at most, never 4 x 600 s of silence.
    request_timeout: float = 300.0
    call_timeout: float = 600.0
    cache: bool = True

    # Pipelines. Tokens of text per map call. None: consecutive chunks up to what the
    # window leaves (at most 16,000): fewer calls, less repeated instruction, and a
    # target that fits one call is answered by one call. 0: each chunk alone.
    map_tokens: int | None = None
    # How map records are kept true to the text (pipelines/mapreduce.py GROUNDINGS):
    # auto = "select" for models whose preset says they write poorly, else "verify".
    grounding: str = "auto"

    # Ingestion.
    max_file_mb: float = 50.0
    chunk_tokens: int = 512
    chunk_overlap: int = 0

    # Retrieval.
    embedder: str = "minilm"  # registered name, a local path or a sentence-transformers id
    embed_on_ingest: bool = True
    embed_batch_size: int = 32  # chunks per embedding step (one progress event each)
    # From this many vectors a corpus's dense index becomes approximate (IVF). Measured
    # (bench/retrieval.py): exact search at 100k vectors ~25 ms, as long as embedding the
    # query; IVF with nprobe 32 ~1.5 ms at recall@10 0.95 (synthetic) to 1.0 (real).
    ann_threshold: int = 100_000
    ann_nprobe: int = 32  # IVF lists probed per query: recall against speed
    fusion: str = "rrf"  # hybrid search: rrf (reciprocal rank) | score (relative score)

    def __post_init__(self) -> None:
        _validate(self)

    @cached_property  # every model call opens the store through it (frozen: safe to keep)
    def db_path(self) -> Path:
        return self.home / "tomes.db"

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.db_path}"

    @property
    def store(self) -> Path | str:
        """What app.store.open_store opens: the database URL, else the SQLite file."""
        return self.database_url or self.db_path

    @property
    def index_dir(self) -> Path:
        return self.index_root or self.home / "indexes"

    @property
    def cache_dir(self) -> Path:
        return self.cache_root or self.home / "cache"

    @property
    def checkpoint_path(self) -> Path:
        return self.home / "checkpoints.db"


class SettingsError(TomesError, ValueError):
    """A setting outside what tomes can work with (ValueError too: it is one)."""


FUSIONS = ("rrf", "score")
GROUNDINGS = ("auto", "select", "verify", "off")


def _validate(s: Settings) -> None:
    def bad(name: str, value: object, allowed: str) -> SettingsError:
        return SettingsError(f"TOMES_{name.upper()}={value!r} is out of range: {allowed}",
                             f"set TOMES_{name.upper()} (or {name}=) to a value in that range, "
                             "or unset it for the default")

    positive = ("chunk_tokens", "embed_batch_size", "ann_threshold", "ann_nprobe")
    for name in positive:
        if getattr(s, name) < 1:
            raise bad(name, getattr(s, name), "a whole number of at least 1")
    if s.chunk_overlap < 0 or s.chunk_overlap >= s.chunk_tokens:
        raise bad("chunk_overlap", s.chunk_overlap,
                  f"0 up to TOMES_CHUNK_TOKENS - 1 (chunks are {s.chunk_tokens} tokens)")
    if s.max_file_mb <= 0:
        raise bad("max_file_mb", s.max_file_mb, "a size in MB above 0")
    if s.request_timeout <= 0:
        raise bad("request_timeout", s.request_timeout, "seconds above 0")
    if s.call_timeout <= 0:
        raise bad("call_timeout", s.call_timeout, "seconds above 0")
    if s.concurrency is not None and s.concurrency < 1:
        raise bad("concurrency", s.concurrency, "at least 1 (or unset: the backend's capacity)")
    if s.map_tokens is not None and s.map_tokens < 0:
        raise bad("map_tokens", s.map_tokens, "0 (one chunk per call) or more tokens")
    if s.database_url is not None and not s.database_url.startswith(
            ("sqlite:", "postgresql:", "postgresql+psycopg:", "postgres:")):
        raise SettingsError(
            f"TOMES_DATABASE_URL={s.database_url!r} is not a database tomes can use",
            "give a postgresql+psycopg://user[:password]@host[:port]/database URL (or a "
            "sqlite:///path one), or unset it for SQLite under TOMES_HOME")
    if s.fusion not in FUSIONS:
        raise bad("fusion", s.fusion, f"one of {', '.join(FUSIONS)}")
    if s.grounding not in GROUNDINGS:
        raise bad("grounding", s.grounding, f"one of {', '.join(GROUNDINGS)}")


_ENV: dict[str, type] = {
    "backend": str,
    "model": str,
    "base_url": str,
    "api_key_env": str,
    "database_url": str,
    "concurrency": int,
    "request_timeout": float,
    "call_timeout": float,
    "map_tokens": int,
    "grounding": str,
    "max_file_mb": float,
    "chunk_tokens": int,
    "chunk_overlap": int,
    "embedder": str,
    "embed_batch_size": int,
    "ann_threshold": int,
    "ann_nprobe": int,
    "fusion": str,
}


def _from_env() -> Settings:
    values: dict[str, object] = {}
    for name, kind in _ENV.items():
        raw = os.environ.get(f"TOMES_{name.upper()}")
        if raw:
            try:
                values[name] = kind(raw)
            except ValueError as exc:
                kinds = {int: "a whole number", float: "a number"}
                raise SettingsError(
                    f"TOMES_{name.upper()}={raw!r} is not {kinds.get(kind, kind.__name__)}",
                    f"fix or unset TOMES_{name.upper()}",
                ) from exc
    if os.environ.get("TOMES_CACHE", "").lower() in {"0", "false", "off"}:
        values["cache"] = False
    return Settings(**values)  # type: ignore[arg-type]


_global: Settings | None = None
_scoped: contextvars.ContextVar[Settings | None] = contextvars.ContextVar(
    "tomes_settings", default=None
)


def get_settings() -> Settings:
    global _global
    scoped = _scoped.get()
    if scoped is not None:
        return scoped
    if _global is None:
        _global = _from_env()
    return _global


def configure(**changes: object) -> Settings:
    """Change settings for the whole process."""
    global _global
    # From the process-wide settings, never a scoped override's: configure() inside
    # override() must not leak the block's values into the whole process.
    base = _global if _global is not None else _from_env()
    _global = dataclasses.replace(base, **_coerce(changes))
    return _global


def reset() -> None:
    """Forget process-wide changes and re-read the environment (tests use this)."""
    global _global
    _global = None


@contextmanager
def override(**changes: object) -> Iterator[Settings]:
    """Change settings inside one block only."""
    token = _scoped.set(dataclasses.replace(get_settings(), **_coerce(changes)))
    try:
        yield get_settings()
    finally:
        _scoped.reset(token)


def _coerce(changes: dict[str, object]) -> dict[str, object]:
    out = {k: v for k, v in changes.items() if v is not None or k == "model"}
    for key in ("home", "cache_root", "index_root"):
        if out.get(key) is not None:
            out[key] = Path(out[key])  # type: ignore[arg-type]
    return out
