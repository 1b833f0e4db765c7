#!/usr/bin/env bash
# WebSocket conformance: the Autobahn TestSuite fuzzing-client cases (kosoku, from PyPI) against Halley's
# test-only echo endpoint (`--websocket-echo-path /echo`), which uses the Bayeux socket's settings and close codes.
# Sections 12 and 13 (permessage-deflate) are excluded: Halley negotiates no compression, so they report
# UNIMPLEMENTED. Every other case must pass (exit status non-zero otherwise). Takes ~10 s.
# Binary: $HALLEY_BIN or <repo>/target/release/halley. Reports (HTML/JSON per case) land in reports/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

HALLEY_BIN="${HALLEY_BIN:-$(cd ../.. && pwd)/target/release/halley}"
[ -x "$HALLEY_BIN" ] || { echo "autobahn/run.sh: $HALLEY_BIN missing (cargo build --release --bin halley)" >&2; exit 1; }

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt

log=$(mktemp)
"$HALLEY_BIN" --listen 127.0.0.1:0 --websocket-echo-path /echo >"$log" 2>&1 &
halley=$!
trap 'kill "$halley" 2>/dev/null || true; wait "$halley" 2>/dev/null || true; rm -f "$log"' EXIT
url=""
for _ in $(seq 1 100); do
    url=$(sed -n 's/.*listening on \(http:\/\/[^ /]*\).*/\1/p' "$log" | head -n 1)
    [ -n "$url" ] && break
    kill -0 "$halley" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.1
done
[ -n "$url" ] || { echo "autobahn/run.sh: halley did not start" >&2; cat "$log" >&2; exit 1; }

rm -rf reports
timeout --kill-after=10 120 .venv/bin/kosoku --parallelism 2 --exclude '12.*' --exclude '13.*' \
    --outdir reports "ws://${url#http://}/echo" >reports.txt 2>&1 || status=$?
tail -n 1 reports.txt
if [ "${status:-0}" -ne 0 ]; then
    grep -v 'behavior=OK, behaviorClose=OK' reports.txt >&2 || true
    rm -f reports.txt
    exit 1
fi
rm -f reports.txt
