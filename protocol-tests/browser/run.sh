#!/usr/bin/env bash
# Runs the headless-browser suite (Debian's Chromium driven by playwright-core) against the Halley binary:
# CometD 9 over callback-polling, CORS long-polling and WebSocket (direct, through nginx and HAProxy, and its
# fallback behind an nginx that refuses upgrades), dojox.cometd 1.6 (both modes), the demo chat (over WebSocket),
# Faye's browser client over EventSource,
# the admin page (its screenshot is kept as output/admin.png).
# Binary: $HALLEY_BIN or <repo>/target/release/halley; browser: $CHROMIUM_BIN or /usr/bin/chromium.
# Works from any directory. Screenshots of failing tests land in output/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

CHROMIUM_BIN="${CHROMIUM_BIN:-/usr/bin/chromium}"

apt_busy() {
    # Another apt/dpkg run (e.g. someone else installing chromium right now) holds the lock.
    pgrep -x apt-get >/dev/null 2>&1 || pgrep -x apt >/dev/null 2>&1 || pgrep -x dpkg >/dev/null 2>&1
}

if [ ! -x "$CHROMIUM_BIN" ]; then
    # Wait (bounded) for a concurrent install to finish before starting our own.
    for _ in $(seq 1 120); do
        { [ -x "$CHROMIUM_BIN" ] || ! apt_busy; } && break
        sleep 5
    done
fi
if [ ! -x "$CHROMIUM_BIN" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "run.sh: $CHROMIUM_BIN is missing and we are not root; install Debian's chromium package" >&2
        exit 1
    fi
    echo "run.sh: installing chromium with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq chromium >/dev/null
fi
[ -x "$CHROMIUM_BIN" ] || { echo "run.sh: $CHROMIUM_BIN still missing" >&2; exit 1; }

# The websocket tests put Debian's nginx and HAProxy in front of the broker.
NGINX_BIN="${NGINX_BIN:-/usr/sbin/nginx}"
HAPROXY_BIN="${HAPROXY_BIN:-/usr/sbin/haproxy}"
if { [ ! -x "$NGINX_BIN" ] || [ ! -x "$HAPROXY_BIN" ]; } && [ "$(id -u)" -eq 0 ]; then
    echo "run.sh: installing nginx and haproxy with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq nginx haproxy >/dev/null
fi
for bin in "$NGINX_BIN" "$HAPROXY_BIN"; do
    [ -x "$bin" ] || { echo "run.sh: $bin missing; install Debian's nginx and haproxy packages" >&2; exit 1; }
done
export NGINX_BIN HAPROXY_BIN

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules ]; then
    npm ci --no-audit --no-fund --loglevel=error
    touch node_modules
fi

mkdir -p output
rm -f output/*.png  # admin.png is written again by test/admin.test.mjs
# Every test bounds its own waits (10-15 s); --test-timeout is the backstop for a hung test,
# `timeout` for the whole run (the suite takes well under a minute).
# Arguments: test files to run instead of test/*.test.mjs (the cluster stage runs test-cluster/*.test.mjs).
files=("$@")
[ ${#files[@]} -gt 0 ] || files=(test/*.test.mjs)
exec timeout --kill-after=10 300 \
    node --test --test-concurrency=1 --test-timeout=60000 --test-force-exit "${files[@]}"
