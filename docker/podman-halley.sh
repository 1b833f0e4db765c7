#!/usr/bin/env bash
# Stands in for the halley binary (HALLEY_BIN=docker/podman-halley.sh) so that test suites which
# spawn the broker — protocol-tests/node — run it inside the container image instead.
# Arguments go to the container's entrypoint; --network host, so `--listen 127.0.0.1:PORT` works;
# files named by absolute path in the arguments are mounted read-only at the same path.
# SIGTERM/SIGINT are passed to the container (its drain); if this script is SIGKILLed, a watchdog
# SIGKILLs the container, as a crash of the process would.
# Environment: HALLEY_IMAGE (default localhost/halley:test), PODMAN, PODMAN_RUN_OPTS (extra options).
set -u
image=${HALLEY_IMAGE:-localhost/halley:test}
read -r -a podman <<<"${PODMAN:-podman --storage-driver vfs --runtime runc}"
read -r -a extra <<<"${PODMAN_RUN_OPTS:-}"
name="halley-test-$$-$RANDOM"
self=$$

# Watchdog: outlives a SIGKILL of this script and removes the container then.
(
  trap '' TERM INT
  while kill -0 "$self" 2>/dev/null; do sleep 0.1; done
  "${podman[@]}" kill --signal KILL "$name"
  "${podman[@]}" rm -f "$name"
) </dev/null >/dev/null 2>&1 &

# Files named on the command line (--config FILE, --jwt-rs256-public-key FILE) are mounted read-only
# at the same path, so the container sees what the caller meant.
mounts=()
for arg in "$@"; do
  file=${arg#--*=}
  if [[ $file == /* && -f $file ]]; then mounts+=(-v "$file:$file:ro"); fi
done

forward() {
  "${podman[@]}" kill --signal "$1" "$name" >/dev/null 2>&1
}
trap 'forward TERM' TERM
trap 'forward INT' INT

# Healthcheck timers need systemd, which is absent here; podman's complaint about it is noise.
"${podman[@]}" run --rm --name "$name" --network host --sig-proxy=false "${mounts[@]}" "${extra[@]}" "$image" "$@" \
  2> >(grep -v --line-buffered 'systemd connection' >&2) &
child=$!
while :; do
  wait "$child"
  rc=$?
  # wait returns early (rc > 128) when a trapped signal arrives; keep waiting for the container.
  if kill -0 "$child" 2>/dev/null; then continue; fi
  exit "$rc"
done
