#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: installs what the tests need, then runs pytest.
# Usage: bash tests/run.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
if ! command -v mosquitto >/dev/null || ! command -v espeak-ng >/dev/null \
    || ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    mosquitto mosquitto-clients espeak-ng chromium chromium-driver >/dev/null
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test,dask]'
exec .venv/bin/python -m pytest "$@"
