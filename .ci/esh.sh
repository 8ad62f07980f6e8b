# Shared by the .ci scripts that check the real `esh` binary from outside (source it):
#   build_esh            builds it (debug) and sets $esh
#   start_esh WORK_DIR   starts it on a free port (the caller's ESH_* variables apply),
#                        data in WORK_DIR/data, output in WORK_DIR/{stdout,stderr}; sets
#                        $server_pid and $base (http://host:port) once it listens
#   api METHOD PATH TOKEN [BODY]   one JSON call to $base

build_esh() {
    cargo build --bin esh
    local target_dir
    target_dir=$(cargo metadata --format-version 1 --no-deps \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
    esh="$target_dir/debug/esh"
}

start_esh() {
    local work="$1"
    ESH_HTTP_ADDR=127.0.0.1:0 ESH_DATA_DIR="$work/data" RUST_LOG="${RUST_LOG:-warn}" \
        "$esh" >"$work/stdout" 2>"$work/stderr" &
    server_pid=$!
    base=""
    for _ in $(seq 1 300); do
        base=$(sed -n 's/^esh3ar listening on \(http:\/\/[^ ]*\)$/\1/p' "$work/stdout")
        [ -n "$base" ] && return 0
        kill -0 "$server_pid" 2>/dev/null || { cat "$work/stderr" >&2; echo "esh did not start" >&2; exit 1; }
        sleep 0.2
    done
    cat "$work/stderr" >&2
    echo "esh did not report its address" >&2
    exit 1
}

api() {
    curl -sS --fail-with-body -X "$1" -H "authorization: Bearer $3" -H 'content-type: application/json' \
        ${4:+-d "$4"} "$base$2"
}
