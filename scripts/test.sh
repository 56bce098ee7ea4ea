#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what it needs, then lint, types, tests.
#   bash scripts/test.sh              everything (Autobahn except the slow 9.* client side)
#   TETHER_AUTOBAHN_FULL=1 bash ...   also every Autobahn case on both sides
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

echo "== ruff"
.venv/bin/ruff check src tests bench examples
echo "== mypy --strict"
.venv/bin/mypy
echo "== pytest"
export TETHER_REQUIRE_AUTOBAHN=${TETHER_REQUIRE_AUTOBAHN:-1}
export PYTHONASYNCIODEBUG=${PYTHONASYNCIODEBUG:-0}
.venv/bin/python -m pytest "$@"
