#!/usr/bin/env bash
# Counts the disk syncs (fsync + fdatasync) the server makes per accepted send, with one
# sender and one request in flight: a 202 must mean "synced to disk", and a kill -9 test
# cannot see a missing sync (the page cache survives the process), so this counts them.
#
#   benches/scripts/syncs.sh [ESH_BINARY] [SENDS]     (default target/release/esh, 200)
#
# Needs strace and curl. Prints the syncs per accepted send and the raw counts.
set -euo pipefail
cd "$(dirname "$0")/../.."
binary="${1:-target/release/esh}"
sends="${2:-200}"
data=$(mktemp -d /tmp/esh-syncs.XXXXXX)
trace="$data/strace.txt"
port=$((20000 + RANDOM % 20000))
addr="127.0.0.1:$port"
export ESH_DATA_DIR="$data/data" ESH_HTTP_ADDR="$addr" ESH_ADMIN_TOKEN=syncs-admin RUST_LOG=warn
export ESH_RATE_LIMIT_PER_MINUTE=1000000000
strace -f -qq -e trace=fsync,fdatasync -o "$trace" "$binary" >"$data/server.log" 2>&1 &
server=$!
# SIGTERM to esh itself (strace passes it on only to a traced child it was sent to).
trap 'pkill -TERM -P "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$data"' EXIT
for _ in $(seq 1 200); do curl -fsS "http://$addr/health/live" >/dev/null 2>&1 && break; sleep 0.1; done
api() { curl -fsS -H "authorization: Bearer $1" -H 'content-type: application/json' "${@:2}"; }
api syncs-admin -d '{"id":"acme","kind":"business","display_name":"Acme","permissions":["send"]}' "http://$addr/v1/users" >/dev/null
api syncs-admin -d '{"id":"mona","kind":"mobile","display_name":"Mona"}' "http://$addr/v1/users" >/dev/null
token=$(api syncs-admin -d '{}' "http://$addr/v1/users/acme/tokens" | sed 's/.*"token":"\([^"]*\)".*/\1/')
sleep 1
# Count calls, not lines: with -f a call may be split into "unfinished" and "resumed" lines.
calls() { grep -cE '^[0-9]+ +f(data)?sync\(' "$trace" || true; }
before=$(calls)
accepted=0
for i in $(seq 1 "$sends"); do
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "authorization: Bearer $token" -H 'content-type: application/json' \
        -d "{\"recipient_id\":\"mona\",\"content\":\"sync $i\"}" "http://$addr/v1/messages")
    [ "$code" = 202 ] && accepted=$((accepted + 1))
done
sleep 1
after=$(calls)
syncs=$((after - before))
echo "accepted sends: $accepted, syncs meanwhile: $syncs, syncs per send: $(awk "BEGIN {printf \"%.2f\", $syncs / $accepted}")"
