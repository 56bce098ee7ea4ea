#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what it needs, then lint, types, tests.
#   bash scripts/test.sh                           everything (about 30 minutes on 2 cores)
#   TETHER_AUTOBAHN_SKIP_DEFLATE=1 bash scripts/test.sh   without Autobahn 12.*/13.*
#   bash scripts/test.sh tests/protocol            extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'

# The Autobahn Testsuite (wstest) runs on Python 2.7, in its own virtualenv.
bash .ci/install-autobahn.sh
# Real peers for interop tests: Node's ws and headless Chromium.
bash .ci/install-peers.sh

echo "== ruff"
.venv/bin/ruff check src tests bench examples
echo "== mypy --strict"
.venv/bin/mypy
echo "== pytest"
export TETHER_REQUIRE_AUTOBAHN=${TETHER_REQUIRE_AUTOBAHN:-1}
export TETHER_REQUIRE_PEERS=${TETHER_REQUIRE_PEERS:-1}
export PYTHONASYNCIODEBUG=${PYTHONASYNCIODEBUG:-0}
.venv/bin/python -m pytest "$@"

# The other supported Pythons (3.10 and 3.13, from pyenv when present): the fast suites.
for version in ${TETHER_OTHER_PYTHONS-3.10 3.13}; do
  python_bin=$(ls -d "$HOME"/.pyenv/versions/"$version".*/bin/python 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "$python_bin" ]; then
    echo "== Python $version not found under pyenv: skipped"
    continue
  fi
  echo "== pytest on Python $version ($python_bin)"
  venv=".venv-$version"
  [ -x "$venv/bin/python" ] || "$python_bin" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -e '.[dev]'
  "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/protocol tests/asyncio tests/sync tests/both \
    tests/interop/test_websockets.py tests/interop/test_aiohttp.py
done
