#!/usr/bin/env bash
# Runs the Node real-client suite (CometD JS 9 + Faye 1.4.3) against the Halley binary.
# Binary: $HALLEY_BIN or <repo>/target/release/halley. Works from any directory.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules ]; then
    npm ci --no-audit --no-fund --loglevel=error
    touch node_modules
fi

# --test-force-exit: a leaked socket or timer must not keep the run alive after the tests finished.
exec node --test --test-concurrency=1 --test-timeout=60000 --test-force-exit test/*.test.mjs
