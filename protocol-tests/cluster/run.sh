#!/usr/bin/env bash
# Runs the cluster suite (issue 15): redis-server, three Halley nodes on the Redis engine and HAProxy
# (round-robin, no stickiness) in front, started by the tests themselves; real CometD JS 9 (long-polling and
# WebSocket) and Faye clients through it; node kills, a Redis restart, a node cut from Redis with iptables.
# Binary: $HALLEY_BIN or <repo>/target/release/halley. Works from any directory.
# HALLEY_CLUSTER_ENGINE=memory: the self-check (one memory-engine node behind HAProxy; tests that need several
# nodes or Redis skip loudly).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
[ -x "${HAPROXY_BIN:-/usr/sbin/haproxy}" ] || missing+=(haproxy)
command -v iptables >/dev/null 2>&1 || missing+=(iptables)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "run.sh: installing ${missing[*]} with apt-get" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get -o DPkg::Lock::Timeout=600 update -qq
        # iptables is optional (the cut-from-Redis test skips loudly without it).
        apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${missing[@]}" >/dev/null \
            || echo "run.sh: apt-get install ${missing[*]} failed" >&2
    fi
fi
command -v redis-server >/dev/null 2>&1 || { echo "run.sh: redis-server missing (apt-get install redis-server)" >&2; exit 1; }
[ -x "${HAPROXY_BIN:-/usr/sbin/haproxy}" ] || { echo "run.sh: haproxy missing (apt-get install haproxy)" >&2; exit 1; }

# The clients are ../node's (same pinned versions): one install, shared through a symlink so that the tests'
# bare imports ("cometd", "faye") resolve to the very modules ../node/helpers.mjs uses.
if [ ! -d ../node/node_modules ] || [ ../node/package-lock.json -nt ../node/node_modules ]; then
    (cd ../node && npm ci --no-audit --no-fund --loglevel=error && touch node_modules)
fi
ln -sfn ../node/node_modules node_modules

# Arguments: test files (default test/*.test.mjs) and `node --test` options (e.g. --test-name-pattern=kill).
files=()
options=()
for arg in "$@"; do
    case "$arg" in
        --*) options+=("$arg") ;;
        *) files+=("$arg") ;;
    esac
done
[ ${#files[@]} -gt 0 ] || files=(test/*.test.mjs)
# Every wait in the tests is bounded; --test-timeout is the backstop for one hung test, `timeout` for the run.
exec timeout --kill-after=10 420 \
    node --test --test-concurrency=1 --test-timeout=150000 --test-force-exit ${options[@]+"${options[@]}"} "${files[@]}"
