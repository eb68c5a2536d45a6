"""How text is measured in tokens: the protocol the core chunks with, and a cheap
stand-in. The core needs only this; serving supplies real model tokenizers
(serving/tokenizers.py) and the API passes one in."""

from __future__ import annotations

import re
from typing import Protocol


class Tokenizer(Protocol):
    name: str

    def count(self, text: str) -> int: ...

    def count_many(self, texts: list[str]) -> list[int]: ...


class ApproxTokenizer:
    """A cheap stand-in when no model tokenizer is chosen: words and punctuation
    marks, each long word counted as several pieces the way BPE splits them."""

    name = "approx"
    approximate = True
    _pieces = re.compile(r"\w{1,6}|[^\w\s]")

    def count(self, text: str) -> int:
        return len(self._pieces.findall(text))

    def count_many(self, texts: list[str]) -> list[int]:
        findall = self._pieces.findall
        return [len(findall(t)) for t in texts]
