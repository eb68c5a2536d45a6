"""Backends by name. A backend's module is imported only when it is chosen, so the
default install never imports vLLM (or even xllamacpp, unless it is used)."""

from __future__ import annotations

import importlib
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


def register(name: str, target: str) -> None:
    _BACKENDS[name] = target


def names() -> list[str]:
    return sorted(_BACKENDS)


def backend_class(name: str) -> type[Backend]:
    try:
        target = _BACKENDS[name]
    except KeyError:
        raise BackendError(
            f"unknown backend {name!r}; choose one of: {', '.join(names())}"
        ) from None
    module_name, _, cls_name = target.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, cls_name)


def create(name: str, **kwargs: Any) -> Backend:
    return backend_class(name)(**kwargs)
