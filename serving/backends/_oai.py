"""Reading OpenAI-shaped chat-completion replies (vLLM, llama.cpp's server, xllamacpp)."""

from __future__ import annotations

import re
from typing import Any

from serving.base import BackendError, ChatRequest, ChatResponse, ContextOverflowError, Usage


def response_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema, "strict": True}}


def parse_reply(data: dict[str, Any], *, model: str, latency_s: float) -> ChatResponse:
    try:
        choice = data["choices"][0]
    except (KeyError, IndexError, TypeError):
        raise BackendError(
            f"the model server sent a reply without choices: {str(data)[:200]}",
            "check the server's log; is it an OpenAI-compatible chat-completions endpoint?",
        ) from None
    message = choice.get("message") or {}
    text = message.get("content")
    if text is None:  # reasoning models may put everything in the reasoning field
        text = message.get("reasoning_content") or message.get("reasoning") or ""
    usage = data.get("usage") or {}
    return ChatResponse(
        text=text,
        usage=Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0),
                    cached_tokens(usage)),
        latency_s=latency_s,
        model=str(data.get("model") or model),
        finish_reason=choice.get("finish_reason"),
    )


def cached_tokens(usage: dict[str, Any]) -> int:
    """Prompt tokens served from the prefix cache: OpenAI's and vLLM's
    ``prompt_tokens_details.cached_tokens`` (llama.cpp's server reports it there too)."""
    details = usage.get("prompt_tokens_details") or {}
    try:
        return int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
    except (TypeError, ValueError):
        return 0


_CONTEXT_PATTERNS = re.compile(
    r"maximum context length|exceeds the available context|context length|"
    r"exceed_context_size|too many tokens|prompt is too long",
    re.IGNORECASE,
)


def error_message(data: Any) -> str:
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            return str(err.get("message") or err)
        return str(err)
    return str(data)


def is_context_error(data: Any) -> bool:
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        if data["error"].get("type") == "exceed_context_size_error":
            return True
    return bool(_CONTEXT_PATTERNS.search(error_message(data)))


def context_error(message: str, request: ChatRequest, window: int, model: str) -> ContextOverflowError:
    from serving.base import OVERFLOW_FIX

    return ContextOverflowError(
        f"{model} refused the prompt: it does not fit the {window:,}-token window ({message})",
        OVERFLOW_FIX, max_tokens=request.max_tokens, context_window=window,
    )
