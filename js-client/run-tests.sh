#!/usr/bin/env bash
# Builds halley-client and runs its whole suite: the core suite against Halley, Faye 1.4.3 and
# cometd-nodejs-server 1.2.1, the Halley- and ack-specific tests, the browser build in headless Chromium, and the
# WebSocket transport (against Faye and Halley over WebSocket, and its fallbacks).
# Works from any directory. Binary: $HALLEY_BIN or <repo>/target/release/halley; browser: $CHROMIUM_BIN or
# /usr/bin/chromium. Exits non-zero on any failure (including a browser bundle over its size budget).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

HALLEY_BIN="${HALLEY_BIN:-$(cd .. && pwd)/target/release/halley}"
if [ ! -x "$HALLEY_BIN" ]; then
    echo "run-tests.sh: $HALLEY_BIN missing, building it" >&2
    (cd .. && cargo build --release --bin halley)
fi
export HALLEY_BIN

CHROMIUM_BIN="${CHROMIUM_BIN:-/usr/bin/chromium}"
if [ ! -x "$CHROMIUM_BIN" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "run-tests.sh: $CHROMIUM_BIN is missing; install Debian's chromium package" >&2
        exit 1
    fi
    echo "run-tests.sh: installing chromium with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq chromium >/dev/null
fi
export CHROMIUM_BIN

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules ]; then
    npm ci --no-audit --no-fund --loglevel=error
    touch node_modules
fi

npm run --silent build

# Every test bounds its own waits; --test-timeout is the backstop for a hung test, `timeout` for the run.
timeout --kill-after=10 240 \
    node --test --test-concurrency=1 --test-timeout=60000 --test-force-exit \
    test/unit.test.mjs test/halley.test.mjs test/faye.test.mjs test/cometd.test.mjs test/browser.test.mjs
# The WebSocket suite needs Node's WHATWG WebSocket: a flag on Node 20, built in from Node 22.
ws_flag=()
node -e 'process.exit(typeof WebSocket == "function" ? 0 : 1)' || ws_flag=(--experimental-websocket)
exec timeout --kill-after=10 120 \
    node "${ws_flag[@]}" --no-warnings=ExperimentalWarning --test --test-concurrency=1 --test-timeout=60000 \
    --test-force-exit test/websocket.test.mjs
