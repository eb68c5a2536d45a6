#!/usr/bin/env bash
# The test suite (CPU only). Extra arguments go to pytest, e.g. -m "not slow".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Debian Chromium + chromedriver for the real-browser UI test (nothing when present).
bash scripts/browser-deps.sh
exec .venv/bin/pytest "$@"
