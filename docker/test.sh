#!/usr/bin/env bash
# Tests the Docker deployment of Halley, here, without a registry or a Docker daemon:
#   1. the SIGTERM drain of the plain binary (outside containers);
#   2. installs podman, runc and debootstrap if missing (root, apt);
#   3. makes the base image localhost/halley-base:bookworm once (docker/base-image.sh; cached);
#   4. builds docker/Dockerfile's `runtime` stage with the binary built on this host
#      (BINARY_STAGE=prebuilt, RUNTIME_BASE=the local base) as localhost/halley:test;
#   5. checks the image (non-root user, port, HEALTHCHECK, size), starts it, waits for /health,
#      runs the health check, the drain checks and the Node client suite (CometD JS, Faye) against it.
# Exits 0 with a loud "SKIPPED: podman cannot run here because …" only when podman cannot run
# containers on this machine; any other problem is a failure.
# Environment: HALLEY_BIN (binary to test, default target/release/halley, rebuilt when stale),
# PODMAN (default "podman --storage-driver vfs --runtime runc"), HALLEY_REBUILD_BASE=1 (redo the base).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$(pwd)
export PODMAN=${PODMAN:-podman --storage-driver vfs --runtime runc}
read -r -a podman <<<"$PODMAN"
base_image=localhost/halley-base:bookworm
export HALLEY_IMAGE=localhost/halley:test
context=$root/docker/context
started=()

say() { printf '\n--- docker/test.sh: %s\n' "$*"; }
fail() { printf '\ndocker/test.sh: FAILED: %s\n' "$*" >&2; exit 1; }
skip() {
  printf '\n%s\n' '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!'
  printf 'SKIPPED: podman cannot run here because %s\n' "$*"
  printf '%s\n' 'The container image was NOT tested (the plain-binary drain test above did run).'
  printf '%s\n' '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!'
  exit 0
}
cleanup() {
  local name
  for name in "${started[@]}"; do
    "${podman[@]}" rm -f "$name" >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT
# podman schedules HEALTHCHECKs with systemd timers; without systemd it complains (harmlessly).
quiet_podman() { "${podman[@]}" "$@" 2> >(grep -v 'systemd connection' >&2); }
free_port() { node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'; }

command -v node >/dev/null || fail "node (18+) is required"

# --- 1. The binary, and its drain outside containers.
bin=${HALLEY_BIN:-$root/target/release/halley}
if [ -z "${HALLEY_BIN:-}" ]; then
  newest=$(find src Cargo.toml Cargo.lock -type f -newer "$bin" -print -quit 2>/dev/null || true)
  if [ ! -x "$bin" ] || [ -n "$newest" ]; then
    say "building $bin (missing or older than the sources)"
    cargo build --release --bin halley
  fi
fi
[ -x "$bin" ] || fail "no broker binary at $bin"
say "drain of the plain binary (no container): held connect, SIGTERM, exit"
HALLEY_BIN=$bin node docker/drain-check.mjs binary --scenario drain --shutdown-timeout 3000 || fail "plain-binary drain"
HALLEY_BIN=$bin node docker/drain-check.mjs binary --scenario deadline --shutdown-timeout 2000 || fail "plain-binary deadline"

# --- 2. podman, runc, debootstrap.
missing=()
for tool in podman runc debootstrap; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    skip "${missing[*]} missing and cannot be installed (needs root and apt-get)"
  fi
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq podman runc debootstrap >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq podman runc debootstrap >/dev/null; } \
    || fail "apt-get install podman runc debootstrap"
fi
[ "$(id -u)" = 0 ] || skip "it runs rootful here (vfs storage, runc) and this is not root"
info_err=$("${podman[@]}" info 2>&1 >/dev/null) || skip "\`$PODMAN info\` fails: $info_err"

# Without CAP_SYS_RESOURCE podman's default rlimits (nofile/nproc 1048576) cannot be set: stay
# within this shell's hard limits.
hard_nofile=$(ulimit -Hn); [ "$hard_nofile" = unlimited ] && hard_nofile=1048576
hard_nproc=$(ulimit -Hu); [ "$hard_nproc" = unlimited ] && hard_nproc=1048576
nofile=$(( hard_nofile < 65536 ? hard_nofile : 65536 ))
nproc=$(( hard_nproc / 2 < 4096 ? hard_nproc / 2 : 4096 ))
export PODMAN_RUN_OPTS="--ulimit nofile=$nofile:$nofile --ulimit nproc=$nproc:$nproc"
read -r -a run_opts <<<"$PODMAN_RUN_OPTS"

# --- 3. The base image (cached in podman's storage).
if [ "${HALLEY_REBUILD_BASE:-0}" = 1 ] || ! "${podman[@]}" image exists "$base_image"; then
  say "making $base_image (debootstrap; once)"
  timeout 1200 bash docker/base-image.sh "$base_image" || fail "docker/base-image.sh"
else
  say "$base_image exists (HALLEY_REBUILD_BASE=1 remakes it)"
fi
if ! run_err=$("${podman[@]}" run --rm --network host "${run_opts[@]}" "$base_image" 2>&1); then
  if grep -qiE 'permission denied|not permitted|namespace|cgroup|newuidmap|not supported|mount|seccomp' <<<"$run_err"; then
    skip "a trivial container does not start: $run_err"
  fi
  fail "a trivial container does not start: $run_err"
fi

# --- 4. The image, through the same runtime stage users get.
say "building $HALLEY_IMAGE (BINARY_STAGE=prebuilt, RUNTIME_BASE=$base_image)"
rm -rf "$context"
mkdir -p "$context"
strip -o "$context/halley" "$bin" 2>/dev/null || cp "$bin" "$context/halley"
rustc --edition 2021 -C opt-level=s -C strip=symbols -C panic=abort -o "$context/halley-probe" docker/probe.rs
old_id=$("${podman[@]}" image inspect --format '{{.Id}}' "$HALLEY_IMAGE" 2>/dev/null || true)
timeout 600 "${podman[@]}" build --format docker -f docker/Dockerfile \
  --build-arg BINARY_STAGE=prebuilt --build-arg RUNTIME_BASE="$base_image" -t "$HALLEY_IMAGE" "$context" \
  || fail "podman build"
new_id=$("${podman[@]}" image inspect --format '{{.Id}}' "$HALLEY_IMAGE")
# The previous test image and the prebuilt stage's intermediate images would pile up run after run.
[ -z "$old_id" ] || [ "$old_id" = "$new_id" ] || "${podman[@]}" rmi "$old_id" >/dev/null 2>&1 || true
for id in $("${podman[@]}" images -q --filter dangling=true --filter label=halley.stage=prebuilt); do
  "${podman[@]}" rmi "$id" >/dev/null 2>&1 || true
done

say "image checks"
inspect() { "${podman[@]}" image inspect --format "$1" "$HALLEY_IMAGE"; }
user=$(inspect '{{.Config.User}}')
uid=${user%%:*}
[[ $uid =~ ^[0-9]+$ && $uid != 0 ]] || fail "image user is '$user', not a numeric non-root uid"
echo "ok   runs as $user"
[[ $(inspect '{{json .Config.ExposedPorts}}') == *'"8080/tcp"'* ]] || fail "8080/tcp not exposed"
echo "ok   exposes 8080/tcp"
hc=$(inspect '{{json .Config.Healthcheck}}')
[[ $hc == *halley-probe*/health* ]] || fail "no HEALTHCHECK on /health: $hc"
echo "ok   HEALTHCHECK $hc"
[[ $(inspect '{{.Config.StopSignal}}') == SIGTERM ]] || fail "stop signal is not SIGTERM"
echo "ok   stop signal SIGTERM"
size=$(inspect '{{.Size}}')
echo "ok   image size: $size bytes ($(( size / 1024 / 1024 )) MiB; binary $(stat -c %s "$context/halley") bytes)"

python3 - <<'PY' || fail "docker/compose.yaml"
import os, sys
try:
    import yaml
except ImportError:
    print("note: PyYAML is not installed, docker/compose.yaml not parsed")
    sys.exit(0)
compose = yaml.safe_load(open("docker/compose.yaml"))
halley = compose["services"]["halley"]
assert halley["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}, halley["build"]
assert halley["healthcheck"]["test"] == ["CMD", "/usr/local/bin/halley-probe", "/health"], halley["healthcheck"]
assert halley["environment"]["HALLEY_CONFIG"] == "/etc/halley/halley.toml"
source = halley["volumes"][0].split(":")[0]
assert os.path.isfile(os.path.join("docker", source)), source
print("ok   docker/compose.yaml: builds docker/Dockerfile, mounts", source, "and checks /health")
PY

# --- 5. Run it.
start_container() { # name port [podman run options...]
  local name=$1 port=$2; shift 2
  started+=("$name")
  quiet_podman run -d --name "$name" --network host "${run_opts[@]}" \
    -e HALLEY_LISTEN="127.0.0.1:$port" "$@" "$HALLEY_IMAGE" >/dev/null || fail "podman run $name"
  local deadline=$((SECONDS + 20))
  until "$context/halley-probe" /health "127.0.0.1:$port" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ] || [ "$("${podman[@]}" inspect --format '{{.State.Running}}' "$name")" != true ]; then
      "${podman[@]}" logs "$name" >&2 || true
      fail "container $name did not serve /health on port $port within 20 s"
    fi
    sleep 0.2
  done
  echo "ok   $name serves /health on 127.0.0.1:$port"
}

name=halley-test-main-$$
port=$(free_port)
say "container $name: health, configuration (compose's halley.toml + environment), drain on SIGTERM"
start_container "$name" "$port" -v "$root/docker/halley.toml:/etc/halley/halley.toml:ro" \
  -e HALLEY_CONFIG=/etc/halley/halley.toml -e HALLEY_TIMEOUT=4000
quiet_podman healthcheck run "$name" >/dev/null || fail "podman healthcheck run $name"
echo "ok   the image's HEALTHCHECK passes (podman healthcheck run)"
[ "$("${podman[@]}" inspect --format '{{.State.Health.Status}}' "$name")" = healthy ] || fail "container not healthy"
echo "ok   container health status: healthy"
"${podman[@]}" exec "$name" /usr/local/bin/halley-probe /ready | grep -q '"ready"' || fail "/ready inside the container"
echo "ok   /ready answers ready inside the container"
puser=$("${podman[@]}" top "$name" user huser | awk 'NR==2 {print $1, $2}')
[ "$puser" = "10001 10001" ] || fail "process user (container, host) is '$puser', expected 10001 10001"
echo "ok   the broker process runs as uid 10001 (in the container and on the host)"
node docker/drain-check.mjs external --url "http://127.0.0.1:$port/cometd" \
  --term-cmd "${PODMAN} kill --signal TERM $name >/dev/null" --wait-cmd "${PODMAN} wait $name >/dev/null" \
  --shutdown-timeout 8000 --expect-timeout 4000 || fail "container drain"
code=$("${podman[@]}" inspect --format '{{.State.ExitCode}}' "$name")
[ "$code" = 0 ] || fail "container exit code $code"
echo "ok   container exited with code 0"
"${podman[@]}" rm "$name" >/dev/null

name=halley-test-deadline-$$
port=$(free_port)
say "container $name: a stalled request, exit by HALLEY_SHUTDOWN_TIMEOUT=2000"
start_container "$name" "$port" -e HALLEY_SHUTDOWN_TIMEOUT=2000
node docker/drain-check.mjs external --url "http://127.0.0.1:$port/cometd" --scenario deadline \
  --term-cmd "${PODMAN} kill --signal TERM $name >/dev/null" --wait-cmd "${PODMAN} wait $name >/dev/null" \
  --shutdown-timeout 2000 || fail "container deadline"
"${podman[@]}" rm "$name" >/dev/null

say "Node client suite (CometD JS, Faye) against the container (HALLEY_BIN=docker/podman-halley.sh)"
HALLEY_BIN=$root/docker/podman-halley.sh timeout 900 bash protocol-tests/node/run.sh || fail "Node client suite against the container"

leftover=$("${podman[@]}" ps -a --filter name=halley-test- --format '{{.Names}}')
[ -z "$leftover" ] || fail "containers left behind: $leftover"

say "all checks passed; image $HALLEY_IMAGE is $size bytes"
