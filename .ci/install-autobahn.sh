#!/usr/bin/env bash
# Install the Autobahn Testsuite's `wstest` into a Python 2.7 virtualenv.
#
# autobahntestsuite (wstest) is Python 2 code. This script builds a 2.7 virtualenv with
# CPython 2.7.18 from pyenv, using virtualenv==20.21.1 (the last release that can still
# create 2.7 environments) from a throwaway Python 3 venv, then installs the pinned
# requirements from tests/autobahn/requirements-py27.txt.
#
# Idempotent: if the venv already has a working wstest, it exits at once.
# Prints the path of wstest on its last line of stdout.
#
# Environment:
#   AUTOBAHN_VENV     target virtualenv   (default: $HOME/.cache/tether/autobahn-py27)
#   AUTOBAHN_PYTHON2  Python 2.7 binary   (default: ~/.pyenv/versions/2.7.18/bin/python2.7)
#   AUTOBAHN_PYTHON3  Python 3 used for the throwaway virtualenv venv (default: python3)
set -euo pipefail

AUTOBAHN_VERSION="25.10.1"
VIRTUALENV_VERSION="20.21.1"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
requirements="$repo/tests/autobahn/requirements-py27.txt"
venv="${AUTOBAHN_VENV:-$HOME/.cache/tether/autobahn-py27}"
python2="${AUTOBAHN_PYTHON2:-$HOME/.pyenv/versions/2.7.18/bin/python2.7}"
python3="${AUTOBAHN_PYTHON3:-python3}"
wstest="$venv/bin/wstest"

log() { printf 'install-autobahn: %s\n' "$*" >&2; }

wstest_works() {
    [ -x "$wstest" ] || return 1
    # `wstest --help` imports the whole test suite (Twisted, autobahn): a real smoke test.
    timeout 60 "$wstest" --help >/dev/null 2>&1 || return 1
    local installed
    installed="$("$venv/bin/python" -c \
        'import pkg_resources; print(pkg_resources.get_distribution("autobahntestsuite").version)' \
        2>/dev/null)" || return 1
    [ "$installed" = "$AUTOBAHN_VERSION" ]
}

if wstest_works; then
    log "wstest $AUTOBAHN_VERSION already installed"
    echo "$wstest"
    exit 0
fi

if [ ! -x "$python2" ]; then
    log "no Python 2.7 at $python2 (set AUTOBAHN_PYTHON2, or: pyenv install 2.7.18)"
    exit 1
fi
if [ ! -f "$requirements" ]; then
    log "missing $requirements"
    exit 1
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

log "creating a throwaway Python 3 venv for virtualenv==$VIRTUALENV_VERSION"
"$python3" -m venv "$tmp/py3"
"$tmp/py3/bin/python" -m pip install --quiet --disable-pip-version-check \
    "virtualenv==$VIRTUALENV_VERSION"

log "creating Python 2.7 virtualenv at $venv"
if [ -e "$venv" ]; then
    # Replace a broken or outdated venv, but never delete a directory that is not one.
    if [ ! -f "$venv/pyvenv.cfg" ] && [ ! -f "$venv/bin/activate" ]; then
        log "$venv exists and is not a virtualenv: remove it or set AUTOBAHN_VENV"
        exit 1
    fi
    rm -rf "$venv"
fi
mkdir -p "$(dirname "$venv")"
"$tmp/py3/bin/virtualenv" --quiet --no-download -p "$python2" "$venv"

log "installing autobahntestsuite==$AUTOBAHN_VERSION with pinned requirements"
# Old pip on 2.7: keep output short, no version check, no cache surprises.
PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONWARNINGS=ignore "$venv/bin/python" -m pip install \
    --quiet --no-cache-dir \
    -r "$requirements" "autobahntestsuite==$AUTOBAHN_VERSION"

if ! wstest_works; then
    log "wstest was installed but does not run: try '$wstest --help'"
    exit 1
fi
log "wstest $AUTOBAHN_VERSION installed"
echo "$wstest"
