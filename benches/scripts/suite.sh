#!/usr/bin/env bash
# Runs the load-generator figures of BENCHMARKS.md, each against a fresh embedded server
# (benches/scripts/server.sh), appending one JSON line per run to $OUT.
#
#   cargo build --release -p esh-server -p esh-benches
#   benches/scripts/suite.sh [FIGURE...]      (default: all; names below)
#   TANSU=1 benches/scripts/suite.sh max-one-way   (the log on a fresh tansu broker each run)
#
# Loopback only; every run is bounded (seconds to a few minutes; `reads` seeds 1,000,000
# messages first and takes longest).
set -uo pipefail
cd "$(dirname "$0")/../.."
out="${OUT:-benches/results.jsonl}"
data="${DATA:-/tmp/esh-bench}"
load="${ESH_LOAD:-target/release/esh-load}"
export ESH_ADMIN_TOKEN="${ESH_ADMIN_TOKEN:-bench-admin}"

# With TANSU=1 each run gets a fresh tansu broker (in memory, 127.0.0.1:9092) and
# ESH_LOG=kafka://127.0.0.1:9092; one record a produced batch, as tansu 0.6.0 needs
# (backends/src/testsuite/kafka.rs).
broker_pid=""
start_broker() {
    [ "${TANSU:-}" = 1 ] || return 0
    tansu broker --listener-url tcp://127.0.0.1:9092 --advertised-listener-url tcp://127.0.0.1:9092 \
        --storage-engine memory://tansu/ >"/tmp/esh-bench-tansu.log" 2>&1 &
    broker_pid=$!
    for _ in $(seq 1 100); do
        (exec 3<>/dev/tcp/127.0.0.1/9092) 2>/dev/null && break
        sleep 0.1
    done
    export ESH_LOG=kafka://127.0.0.1:9092 ESH_KAFKA_BATCH_NUM_MESSAGES=1
}
stop_broker() {
    [ -n "$broker_pid" ] || return 0
    kill "$broker_pid"
    wait "$broker_pid" 2>/dev/null
    broker_pid=""
}

run() {
    local label="$1"
    shift
    start_broker
    if [ "${TANSU:-}" = 1 ]; then label="$label-kafka"; fi
    benches/scripts/server.sh "$data" || return 1
    local pid
    pid="$(cat "$data/server.pid")"
    echo "== $label: esh-load $*"
    "$load" --server-pid "$pid" --json "$out" --label "$label" --no-progress "$@"
    kill "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    stop_broker
}

figure() {
    case "$1" in
    max-one-way) run max-one-way one-way --clients 1000 --senders 20 --rate 0 --inflight 64 --duration 20 ;;
    # The same with 100 messages a request (POST /v1/messages/batch): 8 requests in flight
    # keep 800 messages in flight. Not in the default set.
    max-one-way-batch) run max-one-way-batch one-way --clients 1000 --senders 20 --rate 0 --inflight 8 --batch 100 --duration 20 ;;
    # The same two with an image in every message (each sender uploads one first). Not in
    # the default set.
    max-one-way-media) run max-one-way-media one-way --clients 1000 --senders 20 --rate 0 --inflight 64 --media --duration 20 ;;
    fixed-one-way-media) run fixed-one-way-media one-way --clients 1000 --senders 20 --rate 2000 --media --duration 30 ;;
    max-chat) run max-chat chat --pairs 500 --rate 0 --window 2 --duration 20 ;;
    fixed-one-way) run fixed-one-way one-way --clients 1000 --senders 20 --rate 2000 --duration 30 ;;
    fixed-chat) run fixed-chat chat --pairs 500 --rate 2000 --duration 30 ;;
    ping-pong) run ping-pong chat --pairs 100 --ping-pong --duration 20 ;;
    ping-pong-1) run ping-pong-1 chat --pairs 1 --ping-pong --duration 10 ;;
    backlog) run backlog backlog --users 100 --messages 10000 ;;
    broadcast-1k) run broadcast-1k broadcast --recipients 1000 --count 20 --interval 0.5 --online ;;
    broadcast-100k) run broadcast-100k broadcast --recipients 100000 --count 5 --interval 5 ;;
    # This sandbox caps open files at 20,000 a process (the hard limit cannot be raised):
    # 19,000 sockets, and the memory per connection extrapolated to 100,000.
    idle) run idle idle --connections 19000 --hold 10 --setup-concurrency 256 ;;
    reads) run reads reads --conversations 1000 --seed-chat 100000 --seed-broadcasts 900 --requests 1000 ;;
    *) echo "unknown figure $1" >&2; return 1 ;;
    esac
}

figures=("$@")
if [ ${#figures[@]} -eq 0 ]; then
    figures=(max-one-way max-chat fixed-one-way fixed-chat ping-pong ping-pong-1 backlog broadcast-1k broadcast-100k idle reads)
fi
for name in "${figures[@]}"; do
    figure "$name"
done
