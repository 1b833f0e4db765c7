#!/usr/bin/env bash
# Tests docker/compose.yaml's `cluster` profile here, with podman and podman-compose (no registry,
# no Docker daemon): Redis, three Halley nodes on `--engine redis://redis:6379`, HAProxy in front.
#   1. installs podman, runc, debootstrap and podman-compose if missing (root, apt);
#   2. makes the local Debian 12 images once (docker/base-image.sh, and --debian for the
#      stand-in of debian:bookworm-slim that docker/Dockerfile.cluster starts from; cached);
#   3. builds the Halley image from the host's binary (as docker/test.sh does) and, through
#      podman-compose, the redis and lb images from docker/Dockerfile.cluster (Debian's packages);
#   4. `podman-compose up -d lb` (lb and what it depends on: redis, halley-1..3) with the host
#      port HALLEY_CLUSTER_PORT on a free port; waits for /health through HAProxy, checks Redis
#      and every node's /ready inside its container;
#   5. docker/cluster-check.mjs through HAProxy: CometD JS (long-polling, WebSocket) and Faye
#      clients, every message once and in order; then SIGKILLs halley-2 and runs a second round;
#   6. `podman-compose down`, and nothing left behind.
# podman-compose 1.0.3 (Debian 12) knows no profiles: naming `lb` is what selects the cluster.
# Exits 0 with a loud SKIPPED when podman cannot run containers here, or when the binary has no
# Redis engine (then only the images and the compose file were checked). Anything else failing
# is a failure.
# Environment: HALLEY_BIN (default target/release/halley), PODMAN (default
# "podman --storage-driver vfs --runtime runc"), HALLEY_CLUSTER_DRY_RUN=1: for a build without the
# Redis engine, run everything anyway with the nodes on the memory engine and HAProxy sending every
# request to halley-1 (a compose override file): it tests the images, compose file, podman-compose
# and this script, not the cluster.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$(pwd)
export PODMAN=${PODMAN:-podman --storage-driver vfs --runtime runc}
read -r -a podman <<<"$PODMAN"
project=halley-cluster-test-$$
context=$root/docker/context-cluster
export HALLEY_IMAGE=localhost/halley:cluster-test
export HALLEY_REDIS_IMAGE=localhost/halley-redis:cluster-test
export HALLEY_HAPROXY_IMAGE=localhost/halley-haproxy:cluster-test
export DEBIAN_IMAGE=localhost/halley-debian:bookworm
up=0
scratch=$(mktemp -d)
compose_files=(-f docker/compose.yaml)

say() { printf '\n--- docker/cluster-test.sh: %s\n' "$*"; }
fail() { printf '\ndocker/cluster-test.sh: FAILED: %s\n' "$*" >&2; exit 1; }
skip() {
  printf '\n%s\n' '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!'
  printf 'SKIPPED: the compose cluster was not run because %s\n' "$*"
  printf '%s\n' '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!'
  exit 0
}
# podman-compose with this run's project and podman; bounded by COMPOSE_LIMIT seconds (300).
compose() {
  timeout "${COMPOSE_LIMIT:-300}" podman-compose -p "$project" "${compose_files[@]}" --podman-path "${podman[0]}" \
    --podman-args "${podman[*]:1}" --podman-build-args "--format docker --network host" "$@"
}
cleanup() {
  if [ "$up" = 1 ]; then
    compose down -t 5 >/dev/null 2>&1 || true
    # podman-compose 1.0.3 leaves containers that were restarting (restart: unless-stopped).
    local name
    for name in $("${podman[@]}" ps -a --filter "name=$project" --format '{{.Names}}'); do
      "${podman[@]}" rm -f -t 2 "$name" >/dev/null 2>&1 || true
    done
    "${podman[@]}" network rm -f "${project}_default" >/dev/null 2>&1 || true
  fi
  rm -rf "$scratch" "$context"
}
trap cleanup EXIT
# podman schedules HEALTHCHECKs with systemd timers; without systemd it complains (harmlessly).
quiet_podman() { "${podman[@]}" "$@" 2> >(grep -v 'systemd connection' >&2); }
free_port() { node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'; }

command -v node >/dev/null || fail "node (18+) is required"
bin=${HALLEY_BIN:-$root/target/release/halley}
[ -x "$bin" ] || fail "no broker binary at $bin (cargo build --release)"

# --- 1. Tools.
missing=()
for tool in podman runc debootstrap podman-compose; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    skip "${missing[*]} missing and cannot be installed (needs root and apt-get)"
  fi
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq podman runc debootstrap podman-compose >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq podman runc debootstrap podman-compose >/dev/null; } \
    || fail "apt-get install podman runc debootstrap podman-compose"
fi
[ "$(id -u)" = 0 ] || skip "it runs rootful here (vfs storage, runc) and this is not root"
info_err=$("${podman[@]}" info 2>&1 >/dev/null) || skip "\`$PODMAN info\` fails: $info_err"
(cd protocol-tests/node && { [ -d node_modules ] || npm ci --no-audit --no-fund --loglevel=error; }) \
  || fail "npm ci in protocol-tests/node"

# Without CAP_SYS_RESOURCE podman's default rlimits cannot be set: stay within this shell's hard
# limits, for every container podman-compose starts (containers.conf, this run only).
hard_nofile=$(ulimit -Hn); [ "$hard_nofile" = unlimited ] && hard_nofile=1048576
hard_nproc=$(ulimit -Hu); [ "$hard_nproc" = unlimited ] && hard_nproc=1048576
nofile=$(( hard_nofile < 65536 ? hard_nofile : 65536 ))
nproc=$(( hard_nproc / 2 < 4096 ? hard_nproc / 2 : 4096 ))
printf '[containers]\ndefault_ulimits = ["nofile=%s:%s", "nproc=%s:%s"]\n' "$nofile" "$nofile" "$nproc" "$nproc" \
  >"$scratch/containers.conf"
export CONTAINERS_CONF=$scratch/containers.conf

# --- 2. Local Debian images (cached in podman's storage).
for spec in "localhost/halley-base:bookworm" "$DEBIAN_IMAGE --debian"; do
  read -r image flag <<<"$spec"
  if ! "${podman[@]}" image exists "$image"; then
    say "making $image (debootstrap; once)"
    timeout 1200 bash docker/base-image.sh ${flag:+"$flag"} "$image" || fail "docker/base-image.sh $flag"
  fi
done

# --- 3. Images.
say "building $HALLEY_IMAGE from $bin"
rm -rf "$context"
mkdir -p "$context"
strip -o "$context/halley" "$bin" 2>/dev/null || cp "$bin" "$context/halley"
rustc --edition 2021 -C opt-level=s -C strip=symbols -C panic=abort -o "$context/halley-probe" docker/probe.rs
old_id=$("${podman[@]}" image inspect --format '{{.Id}}' "$HALLEY_IMAGE" 2>/dev/null || true)
timeout 600 "${podman[@]}" build -q --format docker -f docker/Dockerfile --build-arg BINARY_STAGE=prebuilt \
  --build-arg RUNTIME_BASE=localhost/halley-base:bookworm -t "$HALLEY_IMAGE" "$context" >/dev/null \
  || fail "podman build $HALLEY_IMAGE"
# As docker/test.sh: the previous image and the prebuilt stage's intermediates would pile up.
new_id=$("${podman[@]}" image inspect --format '{{.Id}}' "$HALLEY_IMAGE")
[ -z "$old_id" ] || [ "$old_id" = "$new_id" ] || "${podman[@]}" rmi "$old_id" >/dev/null 2>&1 || true
for id in $("${podman[@]}" images -q --filter dangling=true --filter label=halley.stage=prebuilt); do
  "${podman[@]}" rmi "$id" >/dev/null 2>&1 || true
done
say "building the redis and lb images through podman-compose (docker/Dockerfile.cluster on $DEBIAN_IMAGE)"
COMPOSE_LIMIT=900 compose build redis lb >"$scratch/build.log" 2>&1 || { tail -n 30 "$scratch/build.log" >&2; fail "podman-compose build"; }
quiet_podman run --rm --entrypoint redis-server "$HALLEY_REDIS_IMAGE" --version | grep -q 'v=7\.' \
  || fail "the redis image does not run Redis 7"
echo "ok   $(quiet_podman run --rm --entrypoint redis-server "$HALLEY_REDIS_IMAGE" --version | cut -d' ' -f1-3)"
quiet_podman run --rm -v "$root/docker/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" "$HALLEY_HAPROXY_IMAGE" \
  -c -f /usr/local/etc/haproxy/haproxy.cfg >/dev/null 2>&1 || fail "haproxy -c docker/haproxy.cfg in the lb image"
echo "ok   $(quiet_podman run --rm --entrypoint haproxy "$HALLEY_HAPROXY_IMAGE" -v | head -n1 | cut -d' ' -f1-3); docker/haproxy.cfg is valid"

# The Redis engine is on the branch `redis`; a build without it stops here.
# (With the engine, the process keeps retrying an unreachable Redis: `timeout` ends it.)
engine_probe=$(timeout 5 "$bin" --listen 127.0.0.1:0 --engine redis://127.0.0.1:1 2>&1 || true)
if grep -q 'unknown engine' <<<"$engine_probe" && [ "${HALLEY_CLUSTER_DRY_RUN:-0}" = 1 ]; then
  say "DRY RUN: $bin has no Redis engine; nodes on the memory engine, HAProxy sends everything to halley-1"
  cat >"$scratch/dry-run.yaml" <<'EOF'
services:
  halley-1: {environment: {HALLEY_ENGINE: memory}}
  halley-2: {environment: {HALLEY_ENGINE: memory}}
  halley-3: {environment: {HALLEY_ENGINE: memory}}
  lb: {environment: {HALLEY_NODE_2: "halley-1:8080", HALLEY_NODE_3: "halley-1:8080"}}
EOF
  compose_files+=(-f "$scratch/dry-run.yaml")
elif grep -q 'unknown engine' <<<"$engine_probe"; then
  skip "$bin has no Redis engine (\`--engine redis://…\`: unknown engine); the images and docker/haproxy.cfg were checked"
fi

# --- 4. Up.
port=$(free_port)
export HALLEY_CLUSTER_PORT=$port
say "podman-compose up -d lb (redis, halley-1..3, lb; HAProxy on 127.0.0.1:$port)"
up=1
compose up -d lb >"$scratch/up.log" 2>&1 || { tail -n 30 "$scratch/up.log" >&2; fail "podman-compose up"; }
name() { echo "${project}_$1_1"; }
deadline=$((SECONDS + 60))
until curl -sf -o /dev/null "http://127.0.0.1:$port/health"; do
  if [ $SECONDS -ge $deadline ]; then
    for s in redis halley-1 lb; do "${podman[@]}" logs "$(name "$s")" 2>&1 | tail -n 10 >&2 || true; done
    fail "no /health through HAProxy on 127.0.0.1:$port within 60 s"
  fi
  sleep 0.5
done
echo "ok   GET /health through HAProxy (host port $port)"
[ "$(quiet_podman exec "$(name redis)" redis-cli ping)" = PONG ] || fail "redis-cli ping in the redis container"
echo "ok   redis answers PONG"
for n in 1 2 3; do
  deadline=$((SECONDS + 30))
  until quiet_podman exec "$(name "halley-$n")" /usr/local/bin/halley-probe /ready 2>/dev/null | grep -q '"ready"'; do
    [ $SECONDS -lt $deadline ] || fail "halley-$n not ready (/ready) within 30 s"
    sleep 0.5
  done
  echo "ok   halley-$n: /ready inside its container"
done

# --- 5. Real clients through HAProxy; a node SIGKILLed between the rounds.
say "real clients through HAProxy (docker/cluster-check.mjs), halley-2 SIGKILLed between the rounds"
timeout 300 node docker/cluster-check.mjs --url "http://127.0.0.1:$port/cometd" --rounds 2 \
  --between-cmd "${PODMAN} kill --signal KILL $(name halley-2) >/dev/null && sleep 6" \
  || fail "docker/cluster-check.mjs"
keys=$(quiet_podman exec "$(name redis)" redis-cli --scan --pattern 'halley:*' | wc -l)
echo "note Redis holds $keys keys under halley: after the rounds (sessions expire by TTL)"

# --- 6. Down.
say "podman-compose down"
COMPOSE_LIMIT=120 compose down -t 10 >"$scratch/down.log" 2>&1 || { tail -n 20 "$scratch/down.log" >&2; fail "podman-compose down"; }
up=0
"${podman[@]}" network rm -f "${project}_default" >/dev/null 2>&1 || true
leftover=$("${podman[@]}" ps -a --filter "name=$project" --format '{{.Names}}')
[ -z "$leftover" ] || fail "containers left behind: $leftover"
if [ "${#compose_files[@]}" -gt 2 ]; then
  say "all checks passed — DRY RUN on the memory engine: the Redis cluster itself was NOT tested"
else
  say "all checks passed"
fi
