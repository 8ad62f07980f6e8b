#!/usr/bin/env bash
# Starts a fresh embedded Esh3ar (target/release/esh) for load tests, in the background,
# with the limits a load test needs raised, and waits until it answers.
#
#   benches/scripts/server.sh [DATA_DIR]      (default /tmp/esh-bench)
#
# Writes DATA_DIR/server.pid and DATA_DIR/server.log. ESH_ADMIN_TOKEN defaults to
# "bench-admin". Stop it with: kill "$(cat DATA_DIR/server.pid)".
set -euo pipefail
cd "$(dirname "$0")/../.."
data="${1:-/tmp/esh-bench}"
if [ -f "$data/server.pid" ] && kill -0 "$(cat "$data/server.pid")" 2>/dev/null; then
    echo "a server from $data is still running (pid $(cat "$data/server.pid"))" >&2
    exit 1
fi
rm -rf "$data"
mkdir -p "$data"
# Many sockets need many open files (raised as far as the hard limit allows).
ulimit -Hn 1048576 2>/dev/null || true
ulimit -n "$(ulimit -Hn)"
export ESH_DATA_DIR="$data"
export ESH_HTTP_ADDR="${ESH_HTTP_ADDR:-127.0.0.1:8080}"
export ESH_ADMIN_TOKEN="${ESH_ADMIN_TOKEN:-bench-admin}"
# Load tests send far more than 100 messages a minute per sender (API.md: configurable for this).
export ESH_RATE_LIMIT_PER_MINUTE="${ESH_RATE_LIMIT_PER_MINUTE:-1000000000}"
export ESH_BROADCAST_RECIPIENTS_PER_HOUR="${ESH_BROADCAST_RECIPIENTS_PER_HOUR:-1000000000}"
export RUST_LOG="${RUST_LOG:-warn}"
# ESH_BIN picks another build (e.g. an older one, to compare on the same machine).
nohup "${ESH_BIN:-target/release/esh}" >"$data/server.log" 2>&1 &
echo $! >"$data/server.pid"
for _ in $(seq 1 100); do
    if curl -fsS "http://$ESH_HTTP_ADDR/health/live" >/dev/null 2>&1; then
        echo "esh running: pid $(cat "$data/server.pid"), data $data, admin token $ESH_ADMIN_TOKEN"
        exit 0
    fi
    sleep 0.1
done
echo "esh did not answer /health/live within 10 s; see $data/server.log" >&2
exit 1
