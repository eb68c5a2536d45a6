#!/usr/bin/env bash
# The main job on the embedded default model: ingest a sample book, summarize it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
DOC="${1:-../shared/data/books/a_modest_proposal.txt}"
.venv/bin/tomes ingest "$DOC" --corpus samples
.venv/bin/tomes summarize "$(basename "$DOC")"
