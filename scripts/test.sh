#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what it needs, then lint, types, tests.
#   bash scripts/test.sh                           everything (about 30 minutes)
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
