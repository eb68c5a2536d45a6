"""The model boundary. Pipelines use ``get_lm()`` and the ``LM`` it returns."""

from serving.base import (
    ApproxTokenizer,
    Backend,
    BackendError,
    ChatRequest,
    ChatResponse,
    ContextOverflowError,
    Tokenizer,
    Usage,
)
from serving.lm import LM, get_lm, parent_scope, run_scope

__all__ = [
    "LM",
    "ApproxTokenizer",
    "Backend",
    "BackendError",
    "ChatRequest",
    "ChatResponse",
    "ContextOverflowError",
    "Tokenizer",
    "Usage",
    "get_lm",
    "parent_scope",
    "run_scope",
]
