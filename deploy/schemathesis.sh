#!/usr/bin/env bash
# Validates the OpenAPI document with openapi-spec-validator, then runs schemathesis against
# a running API with a fresh database, for every endpoint of the document. Fails on an
# invalid document, any 5xx, or a response (status, body or header) that breaks the schema.
set -euo pipefail
cd "$(dirname "$0")/.."
# schemathesis and openapi-spec-validator from PyPI, in a virtualenv under target/ (system
# Pythons refuse global installs).
venv=target/schemathesis-venv
if [ ! -x "$venv/bin/schemathesis" ] || [ ! -x "$venv/bin/openapi-spec-validator" ]; then
  [ -x "$venv/bin/pip" ] || python3 -m venv "$venv" 2>/dev/null || {
    apt-get install -y -qq python3-venv >/dev/null && python3 -m venv "$venv"
  }
  "$venv/bin/pip" install -q schemathesis openapi-spec-validator
fi
st=$venv/bin/schemathesis
bin=target/debug
db=video_import_schemathesis_$$
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export VIDEO_IMPORT__DATABASE__URL=postgres://postgres@127.0.0.1:5432/$db
export VIDEO_IMPORT__API__LISTEN=127.0.0.1:$port
export VIDEO_IMPORT__AMQP__PREFIX=schemathesis-$$
export VIDEO_IMPORT__LOG__FILTER=warn
psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $db"
api_pid=
cleanup() {
  [ -n "$api_pid" ] && kill "$api_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
  for q in fetch webhook dead.fetch dead.webhook; do rabbitmqctl -q delete_queue "schemathesis-$$.$q" >/dev/null 2>&1 || true; done
}
trap cleanup EXIT
"$bin/video-import-api" migrate
"$bin/video-import-api" project create schemathesis >/dev/null
token=$("$bin/video-import-api" token create --project schemathesis --scope public-api:write --scope public-api:read \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
"$bin/video-import-api" serve & api_pid=$!
for _ in $(seq 1 50); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.2; done
# The document itself must be valid OpenAPI (schemathesis does not check that).
curl -fsS "http://127.0.0.1:$port/api/v1/openapi.json" > "target/openapi-$$.json"
"$venv/bin/openapi-spec-validator" "target/openapi-$$.json"
rm -f "target/openapi-$$.json"
"$st" run "http://127.0.0.1:$port/api/v1/openapi.json" \
  --header "Authorization: Bearer $token" \
  --checks "${SCHEMATHESIS_CHECKS:-not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance,response_headers_conformance}" \
  --max-examples "${SCHEMATHESIS_EXAMPLES:-50}" \
  --generation-deterministic
