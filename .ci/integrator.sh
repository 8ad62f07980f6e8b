#!/usr/bin/env bash
# A Kafka-native integrator against the real `esh` on a real Kafka-protocol broker: starts
# `tansu` on a free loopback port, `esh` with ESH_LOG=kafka://… and an integrator principal
# allowed to send as a business, then runs examples/kafka-integrator/integrator.py (Python
# confluent-kafka and fastavro, installed from PyPI if missing): a SendRequest produced to
# esh.ingest.v1 with the schema fetched from the schema endpoints, its outcome and the
# message's `delivered` status decoded from esh.status.v1 after a WebSocket client acks.
set -euo pipefail

cd "$(dirname "$0")/.."

if ! python3 -c 'import confluent_kafka, fastavro, websockets' 2>/dev/null; then
    echo "installing: confluent-kafka fastavro websockets" >&2
    # Debian's system Python refuses pip installs unless told it may (PEP 668).
    python3 -m pip install --quiet confluent-kafka fastavro websockets 2>/dev/null \
        || python3 -m pip install --quiet --break-system-packages confluent-kafka fastavro websockets
fi

. .ci/esh.sh
build_esh

work=$(mktemp -d)
pids=()
server_pid=""
cleanup() {
    for pid in "${pids[@]}" $server_pid; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# tansu 0.6.0 gives a produced batch of several records one offset: esh produces one record
# a batch on it (backends/src/testsuite/kafka.rs, KafkaBroker::client_properties).
kafka_port=$(free_port)
broker="127.0.0.1:$kafka_port"
tansu broker --listener-url "tcp://$broker" --advertised-listener-url "tcp://$broker" \
    --storage-engine memory://tansu/ >"$work/tansu.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $kafka_port), 1)" 2>/dev/null && break
    sleep 0.2
done

admin_token="integrator-admin-$RANDOM$RANDOM"
ESH_ADMIN_TOKEN="$admin_token" ESH_LOG="kafka://$broker" ESH_LOG_PARTITIONS=2 ESH_KAFKA_BATCH_NUM_MESSAGES=1 \
    ESH_INTEGRATORS="shop-integration=shop" start_esh "$work"
echo "esh on $base, log on tansu at $broker" >&2

api POST /v1/users "$admin_token" '{"id":"shop","kind":"business","display_name":"Shop","permissions":["send"]}' >/dev/null
api POST /v1/users "$admin_token" '{"id":"mona","kind":"mobile","display_name":"Mona","verified":true}' >/dev/null
mona_token=$(api POST /v1/users/mona/tokens "$admin_token" '{}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')

if ! python3 examples/kafka-integrator/integrator.py --brokers "$broker" --http "$base" \
    --principal shop-integration --sender shop --recipient mona --recipient-token "$mona_token"; then
    echo "--- esh stderr" >&2
    tail -n 50 "$work/stderr" >&2
    exit 1
fi
