#!/usr/bin/env bash
# The real-browser UI test (tests/test_browser.py) drives Debian's Chromium through its
# chromedriver. Tools that download browsers at run time cannot work on these machines,
# so both come from apt. Idempotent: does nothing when both are already installed.
set -euo pipefail

if [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
    exit 0
fi

SUDO=""
if [[ "$(id -u)" != 0 ]]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver
/usr/bin/chromium --version
/usr/bin/chromedriver --version
