#!/usr/bin/env bash
# Checks the real `esh` server against its own OpenAPI document (GET /v1/openapi.json) with
# schemathesis: no 5xx, no status code the document does not list, no answer that does not
# match its schema or content type, invalid requests refused, valid requests accepted.
#
# It builds `esh`, starts it on a free port with a fresh data directory, creates a business
# user (send, chat) and a verified mobile user whose ids the generated bodies can name,
# then runs schemathesis once with the business user's token and once with the admin
# token. Exits non-zero on any failure. Settings: ST_MAX_EXAMPLES (test cases per
# operation and phase, default 30), ST_MAX_TIME (seconds per run, default 150).
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if ! command -v schemathesis >/dev/null 2>&1; then
    if ! python3 -m pip --version >/dev/null 2>&1; then
        echo "installing: python3-pip" >&2
        as_root apt-get update
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-pip curl
    fi
    echo "installing: schemathesis" >&2
    # Debian's system Python refuses pip installs unless told it may (PEP 668).
    python3 -m pip install --quiet schemathesis 2>/dev/null \
        || python3 -m pip install --quiet --break-system-packages schemathesis
    export PATH="$HOME/.local/bin:$PATH"
fi
command -v curl >/dev/null 2>&1 || { as_root apt-get update; as_root apt-get install -y --no-install-recommends curl; }

. .ci/esh.sh
build_esh

work=$(mktemp -d)
admin_token="schemathesis-admin-$RANDOM$RANDOM"
server_pid=""
cleanup() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# Limits raised so that generated sends are judged on their content, not throttled.
ESH_ADMIN_TOKEN="$admin_token" ESH_RATE_LIMIT_PER_MINUTE=1000000 ESH_BROADCAST_RECIPIENTS_PER_HOUR=1000000000 \
    start_esh "$work"
echo "esh on $base" >&2

api POST /v1/users "$admin_token" '{"id":"st-business","kind":"business","display_name":"Schemathesis","permissions":["send","chat"]}' >/dev/null
api POST /v1/users "$admin_token" '{"id":"st-mobile","kind":"mobile","display_name":"Mobile","verified":true}' >/dev/null
business_token=$(api POST /v1/users/st-business/tokens "$admin_token" '{}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
# A message and a conversation, so that reads of existing ids have something to find.
api POST /v1/messages "$business_token" '{"recipient_id":"st-mobile","content":"hello"}' >/dev/null
api POST /v1/chat/messages "$business_token" '{"to":"st-mobile","content":"hello"}' >/dev/null

checks=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance,negative_data_rejection,positive_data_acceptance

# One worker: with two, schemathesis 4.32 on Python 3.11 sometimes fails inside hypothesis
# (describing a filter through `ast` from two threads), an error of the tool, not the API.
status=0
for who in business admin; do
    if [ "$who" = business ]; then token=$business_token; else token=$admin_token; fi
    echo "schemathesis as $who" >&2
    # From the scratch directory: schemathesis keeps a cache of crashes in the working directory.
    (cd "$work" && schemathesis --config-file "$root/.ci/schemathesis.toml" run "$base/v1/openapi.json" \
        --checks "$checks" \
        --header "Authorization: Bearer $token" \
        --max-examples "${ST_MAX_EXAMPLES:-30}" \
        --max-time "${ST_MAX_TIME:-150}" \
        --workers 1 \
        --seed 1 \
        --request-timeout 10 \
        --continue-on-failure) \
        || status=1
done

if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "esh stopped during the run" >&2
    cat "$work/stderr" >&2
    status=1
fi
exit "$status"
