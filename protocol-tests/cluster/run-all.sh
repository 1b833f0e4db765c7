#!/usr/bin/env bash
# The whole cluster stage of scripts/test: the Node suite (./run.sh, which installs redis-server, haproxy and
# iptables when missing), then aiocometd (../python, marker `cluster`) and the browsers (../browser/test-cluster)
# against the same kind of cluster. Each part runs even when an earlier one failed; the exit code says if any did.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
status=0
bash run.sh || status=1
bash ../python/run.sh -m cluster || status=1
(cd ../browser && bash run.sh test-cluster/*.test.mjs) || status=1
exit "$status"
