#!/usr/bin/env bash
# Brings the whole stack up on this machine and runs the seed's example import end to end:
# POST a batch -> RabbitMQ -> worker downloads and upserts -> notifier POSTs the signed
# webhook with the caller's context. Stops everything it started when done
# (--keep leaves the api, worker and notifier running; --clean removes the demo's database,
# queues and files afterwards; without it they stay, and the last lines say where).
# Every run uses free ports and a database, queue prefix and folder of its own, so it never
# meets a service of yours or an earlier run.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
keep=
clean=
for arg in "$@"; do
  case "$arg" in
    --keep) keep=--keep ;;
    --clean) clean=--clean ;;
    *) echo "usage: deploy/demo.sh [--keep] [--clean]" >&2; exit 2 ;;
  esac
done

deploy/services.sh
echo "building the binaries (the first build takes a few minutes; cargo shows its progress)"
cargo build --workspace --bins
bin=$root/target/debug

work=$(mktemp -d)
run=$(date +%s)
db=video_import_demo_$run
prefix=video-import-demo-$run
# Five free ports on 127.0.0.1: files, webhooks, api, worker metrics, notifier metrics.
read -r files_port hook_port api_port worker_port notifier_port < <(python3 - <<'PY'
import socket
socks = [socket.socket() for _ in range(5)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
)
api=http://127.0.0.1:$api_port
export VIDEO_IMPORT__DATABASE__URL=postgres://postgres@127.0.0.1:5432/$db
export VIDEO_IMPORT__API__LISTEN=127.0.0.1:$api_port
export VIDEO_IMPORT__STORAGE__ROOT=$work/videos
# The demo serves its video and receives its webhook on 127.0.0.1, which private-network
# protection refuses unless admitted: importing from your own machine needs the same.
export VIDEO_IMPORT__FETCH__ALLOWED_NETWORKS=127.0.0.1/32
export VIDEO_IMPORT__WEBHOOK__ALLOWED_NETWORKS=127.0.0.1/32
export VIDEO_IMPORT__AMQP__PREFIX=$prefix
export VIDEO_IMPORT__LOG__FILTER=warn

psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $db"
"$bin/video-import-api" migrate

handle=demo-$(date +%s)
project=$("$bin/video-import-api" project create "$handle")
secret=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["webhookSecret"])' <<<"$project")
token=$("$bin/video-import-api" token create --project "$handle" --scope public-api:write --scope public-api:read \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
echo "project $handle created"

pids=()
cleanup() {
  [ "$keep" = "--keep" ] && return
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  if [ "$clean" = "--clean" ]; then
    psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
    for q in fetch webhook dead.fetch dead.webhook; do
      rabbitmqctl -q delete_queue "$prefix.$q" >/dev/null 2>&1 || true
    done
    rm -rf "$work"
    echo "removed the demo's database, queues and files"
  else
    echo "left behind (run with --clean to remove them): database $db, RabbitMQ queues $prefix.*, folder $work"
  fi
}
trap cleanup EXIT
python3 -m http.server "$files_port" --bind 127.0.0.1 --directory tests/fixtures >/dev/null 2>&1 & pids+=($!)
python3 deploy/webhook-receiver.py "$hook_port" "$secret" "$work/webhooks.jsonl" >/dev/null & pids+=($!)
"$bin/video-import-api" serve & pids+=($!)
VIDEO_IMPORT__METRICS__LISTEN=127.0.0.1:$worker_port "$bin/video-import-worker" & pids+=($!)
VIDEO_IMPORT__METRICS__LISTEN=127.0.0.1:$notifier_port "$bin/video-import-notifier" & pids+=($!)
for _ in $(seq 1 50); do curl -fs "$api/readyz" >/dev/null && break; sleep 0.2; done

echo "POST /api/v1/import/videos"
job=$(curl -fsS -X POST $api/api/v1/import/videos \
  -H "Authorization: Bearer $token" \
  -H "Content-Type: application/json; charset=utf-8" \
  --data-binary @- <<JSON
{
  "systemName": "identifier-for-your-system",
  "webhook": "http://127.0.0.1:$hook_port/webhooks/video-import",
  "context": {
    "myIdentifier": "some-identifier-sent-to-the-webhook"
  },
  "videos": [
    {
      "url": "http://127.0.0.1:$files_port/sample.mp4",
      "id": "123abc",
      "fileName": "foo",
      "metadata": {
        "title": "sample video",
        "credit": "LC"
      }
    }
  ]
}
JSON
)
echo "$job"
id=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])' <<<"$job")

for _ in $(seq 1 100); do [ -s "$work/webhooks.jsonl" ] && break; sleep 0.2; done
echo "webhook received (signature verified with Python's hmac):"
cat "$work/webhooks.jsonl"
echo "GET /api/v1/import/videos/status?id=$id"
curl -fsS "$api/api/v1/import/videos/status?id=$id" -H "Authorization: Bearer $token"
echo
grep -q '"verified": true' "$work/webhooks.jsonl" && grep -q some-identifier-sent-to-the-webhook "$work/webhooks.jsonl"
media=$(curl -fsS "$api/api/v1/import/videos/status?id=$id" -H "Authorization: Bearer $token" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["videos"][0]["video"]["mediaId"])')
key=$(curl -fsS "$api/api/v1/mediaLibrary/$media" -H "Authorization: Bearer $token" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["asset"]["key"])')
echo "demo import succeeded"
echo "the video is stored at $VIDEO_IMPORT__STORAGE__ROOT/$key"
if [ "$keep" = "--keep" ]; then
  echo "stack left running (api $api); token: $token"
  echo "its media-library entry: curl $api/api/v1/mediaLibrary/$media -H \"Authorization: Bearer $token\""
else
  echo "the api has stopped: run with --keep to read the entry with curl afterwards"
fi
