#!/usr/bin/env bash
# Install the non-Python peers of the interop tests (tests/interop/test_node_ws.py and
# tests/interop/test_chromium.py):
#
#   - Debian's Chromium (/usr/bin/chromium), driven headless by playwright-core;
#   - the Node packages of tests/interop/node (ws 8.x, playwright-core), exactly as
#     package-lock.json pins them.
#
# Idempotent and quick when everything is there: `apt-get update` runs only when
# Chromium is missing, `npm ci` only when node_modules does not hold the locked
# versions. Prints what it did. Needs root (or sudo) for apt, and Node.js with npm.
#
# Environment:
#   TETHER_SKIP_CHROMIUM=1   do not install Chromium (the Node ws tests still run)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
node_dir="$repo/tests/interop/node"
start=$SECONDS

log() { printf 'install-peers: %s\n' "$*"; }

# ---------------------------------------------------------------------------- Chromium

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        log "need root for: $*"
        return 1
    fi
}

chromium_works() {
    [ -x /usr/bin/chromium ] && timeout 30 /usr/bin/chromium --version >/dev/null 2>&1
}

if [ "${TETHER_SKIP_CHROMIUM:-0}" = "1" ]; then
    log "Chromium: skipped (TETHER_SKIP_CHROMIUM=1)"
elif chromium_works; then
    log "Chromium: already installed ($(/usr/bin/chromium --version 2>/dev/null))"
else
    if ! command -v apt-get >/dev/null 2>&1; then
        log "Chromium: missing, and no apt-get to install it with"
        exit 1
    fi
    log "Chromium: missing; apt-get update"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -qq
    log "Chromium: apt-get install -y chromium"
    as_root apt-get install -y -qq --no-install-recommends chromium >/dev/null
    if ! chromium_works; then
        log "Chromium: installed, but '/usr/bin/chromium --version' fails"
        exit 1
    fi
    log "Chromium: installed ($(/usr/bin/chromium --version 2>/dev/null))"
fi

# ------------------------------------------------------------------------- Node peers

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    log "Node.js and npm are needed (apt-get install nodejs npm, or the machine's Node)"
    exit 1
fi

# True when node_modules holds exactly the versions that package-lock.json pins.
node_modules_current() {
    (cd "$node_dir" && node -e '
        const lock = require("./package-lock.json");
        for (const [path, meta] of Object.entries(lock.packages)) {
            if (!path.startsWith("node_modules/")) continue;
            let installed;
            try { installed = require("./" + path + "/package.json").version; }
            catch (e) { process.exit(1); }
            if (installed !== meta.version) process.exit(1);
        }
        require("ws");
        require("playwright-core");
    ' >/dev/null 2>&1)
}

if [ ! -f "$node_dir/package-lock.json" ]; then
    log "Node peers: no package-lock.json; npm install (writes one: commit it)"
    (cd "$node_dir" && npm install --no-audit --no-fund --loglevel=error)
elif node_modules_current; then
    log "Node peers: node_modules up to date ($node_dir)"
else
    log "Node peers: npm ci in $node_dir"
    (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error)
    if ! node_modules_current; then
        log "Node peers: node_modules does not match package-lock.json after npm ci"
        exit 1
    fi
fi
log "Node peers: ws $(cd "$node_dir" && node -p 'require("ws/package.json").version'),"\
" playwright-core $(cd "$node_dir" && node -p 'require("playwright-core/package.json").version')"
log "done in $((SECONDS - start)) s"
