#!/usr/bin/env bash
# Media upload figures (BENCHMARKS.md "Media uploads"): a fresh release `esh` on the local
# blob store, then one on S3 (a fresh s3s-fs on 127.0.0.1:9333), each measured by
# target/release/esh-media-bench.
#
#   benches/scripts/media.sh [PHOTOS] [LARGE]     (defaults 100 and 30)
set -euo pipefail
cd "$(dirname "$0")/../.."
photos="${1:-100}"
large="${2:-30}"
export ESH_HTTP_ADDR=127.0.0.1:18380 ESH_ADMIN_TOKEN=bench-admin

measure() {
    local data="$1"
    benches/scripts/server.sh "$data" >/dev/null
    target/release/esh-media-bench --base "http://$ESH_HTTP_ADDR" --server-pid "$(cat "$data/server.pid")" \
        --photos "$photos" --large "$large"
    kill "$(cat "$data/server.pid")"
    sleep 1
}

echo "== local blob store"
measure /tmp/esh-media-local

echo "== S3 (s3s-fs)"
s3dir=$(mktemp -d)
mkdir "$s3dir/esh-bench"
export AWS_ACCESS_KEY_ID=bench-key AWS_SECRET_ACCESS_KEY=bench-secret
s3s-fs --host 127.0.0.1 --port 9333 --access-key bench-key --secret-key bench-secret "$s3dir" >/dev/null 2>&1 &
s3pid=$!
trap 'kill $s3pid; rm -rf "$s3dir"' EXIT
sleep 1
export ESH_BLOBS="s3://esh-bench?endpoint=http://127.0.0.1:9333&region=us-east-1&path_style=true"
measure /tmp/esh-media-s3
