"""Backends by name. A backend's module is imported only when it is chosen, so the
default install never imports vLLM (or even xllamacpp, unless it is used)."""

from __future__ import annotations

import atexit
import importlib
import threading
from typing import Any

from serving.base import Backend, BackendError

# name -> "module:Class"; plugins may add entries with register().
_BACKENDS: dict[str, str] = {
    "scripted": "serving.backends.scripted:ScriptedBackend",
    "embedded": "serving.backends.embedded:EmbeddedBackend",
    "transformers": "serving.backends.transformers_gguf:TransformersBackend",
    "openai": "serving.backends.openai_http:OpenAIBackend",
    "vllm-local": "serving.backends.vllm_inprocess:VLLMBackend",
}

_lock = threading.Lock()
_instances: dict[tuple[Any, ...], Backend] = {}


def register(name: str, target: str) -> None:
    _BACKENDS[name] = target


def names() -> list[str]:
    return sorted(_BACKENDS)


def backend_class(name: str) -> type[Backend]:
    try:
        target = _BACKENDS[name]
    except KeyError:
        raise BackendError(
            f"unknown backend {name!r}", f"choose one of: {', '.join(names())}"
        ) from None
    module_name, _, cls_name = target.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, cls_name)


def create(name: str, **kwargs: Any) -> Backend:
    """A new backend instance."""
    return backend_class(name)(**kwargs)


def get(name: str, **kwargs: Any) -> Backend:
    """The process's instance of a backend for the current settings and ``kwargs``
    (created on first use); backends that are not ``shared`` are created every time."""
    from app.settings import get_settings

    cls = backend_class(name)
    if not cls.shared:
        return cls(**kwargs)
    s = get_settings()
    try:
        key = (name, s.model, s.base_url, s.api_key_env, s.concurrency, s.request_timeout,
               frozenset(kwargs.items()))
        hash(key)
    except TypeError:  # unhashable arguments: not worth sharing
        return cls(**kwargs)
    with _lock:
        backend = _instances.get(key)
        if backend is None:
            backend = _instances[key] = cls(**kwargs)
    return backend


def loaded() -> list[Backend]:
    with _lock:
        return list(_instances.values())


def close_all() -> None:
    """Release shared backends (loaded models); the next ``get`` loads them again."""
    with _lock:
        backends = list(_instances.values())
        _instances.clear()
    for backend in backends:
        close = getattr(backend, "close", None)
        if callable(close):
            close()


atexit.register(close_all)
