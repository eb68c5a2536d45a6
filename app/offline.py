"""Offline loading, scoped: the embedder and tokenizer loaders read only local files, but
the Hugging Face libraries would still try the hub. Setting HF_HUB_OFFLINE for the whole
process broke a later ``vllm-local`` load that was meant to download; so it is set for
the load alone and restored after."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def hub_offline() -> Iterator[None]:
    before = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    # huggingface_hub reads the variable once, at import: follow it where it is loaded.
    constants = sys.modules.get("huggingface_hub.constants")
    had = getattr(constants, "HF_HUB_OFFLINE", None) if constants else None
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = before
        constants = sys.modules.get("huggingface_hub.constants")
        if constants is not None:
            constants.HF_HUB_OFFLINE = had if had is not None else before not in (None, "", "0")
