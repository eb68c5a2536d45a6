"""What every pipeline returns: the answer and what it rests on."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Provenance:
    chunk_id: int
    document_id: int
    title: str
    start: int  # the chunk's span in the document's text
    end: int
    page: int | None = None
    quote: str = ""  # a short excerpt of the chunk that bears on the answer


@dataclass
class Result:
    answer: str
    provenance: list[Provenance] = field(default_factory=list)
    run_id: str = ""
    pipeline: str = ""
    calls: int = 0  # backend requests (cache hits not counted)
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    # Of prompt_tokens, those the server read from its prefix cache (where it says).
    cached_tokens: int = 0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Result:
        data = dict(data)
        data["provenance"] = [Provenance(**p) for p in data.get("provenance", [])]
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})
