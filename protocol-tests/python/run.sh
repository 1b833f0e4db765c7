#!/usr/bin/env bash
# Runs the Python real-client suite (aiocometd 0.4.5 over long-polling, aiocometd-ng 0.5.6 over websocket, the Node CometD echo peer) against the Halley binary.
# Binary: $HALLEY_BIN or <repo>/target/release/halley. Works from any directory.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt

# The echo peer runs from ../node and needs its node_modules.
if [ ! -d ../node/node_modules ] || [ ../node/package-lock.json -nt ../node/node_modules ]; then
    (cd ../node && npm ci --no-audit --no-fund --loglevel=error && touch node_modules)
fi

set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests: treating as failure" >&2
    exit 1
fi
exit "$status"
