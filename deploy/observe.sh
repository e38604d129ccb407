#!/usr/bin/env bash
# Watches a stack running on this machine with the machine's Prometheus (Debian's
# `prometheus` package; deploy/services.sh installs it): scrapes the API, the workers and
# the notifiers with the alert rules of deploy/prometheus/alerts.yml, and prints the URLs
# to open. Runs in the foreground until Ctrl-C.
#
#   deploy/observe.sh [--api HOST:PORT] [--worker HOST:PORT]... [--notifier HOST:PORT]...
#                     [--listen HOST:PORT] [--scrape-interval 15s] [--data DIR]
#
# Defaults: the API on 127.0.0.1:8080, one worker on 127.0.0.1:9091, one notifier on
# 127.0.0.1:9092 (the binaries' default addresses), Prometheus on 127.0.0.1:9090, its data
# in a temporary folder removed at the end (kept when --data is given).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

api=127.0.0.1:8080
workers=()
notifiers=()
listen=127.0.0.1:9090
interval=15s
data=
while [ $# -gt 0 ]; do
  case "$1" in
    --api) api=$2; shift 2 ;;
    --worker) workers+=("$2"); shift 2 ;;
    --notifier) notifiers+=("$2"); shift 2 ;;
    --listen) listen=$2; shift 2 ;;
    --scrape-interval) interval=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "observe.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ ${#workers[@]} -gt 0 ] || workers=(127.0.0.1:9091)
[ ${#notifiers[@]} -gt 0 ] || notifiers=(127.0.0.1:9092)
command -v prometheus >/dev/null || { echo "observe.sh: prometheus is not installed; run deploy/services.sh" >&2; exit 2; }

temporary=no
if [ -z "$data" ]; then
  data=$(mktemp -d -t video-import-observe.XXXXXX)
  temporary=yes
fi
mkdir -p "$data"
list() { local IFS=,; printf '"%s"' "$*" | sed 's/,/", "/g'; }
# The job names are the binaries', as in deploy/prometheus/prometheus.yml for compose: the
# alert rules and the dashboard select on them.
cat > "$data/prometheus.yml" <<YAML
global: { scrape_interval: $interval, evaluation_interval: $interval }
rule_files: ["$root/deploy/prometheus/alerts.yml"]
scrape_configs:
  - job_name: video-import-api
    static_configs: [{ targets: [$(list "$api")] }]
  - job_name: video-import-worker
    static_configs: [{ targets: [$(list "${workers[@]}")] }]
  - job_name: video-import-notifier
    static_configs: [{ targets: [$(list "${notifiers[@]}")] }]
YAML
if command -v promtool >/dev/null; then
  promtool check config --syntax-only "$data/prometheus.yml" >/dev/null
fi

cat <<TEXT
Prometheus on http://$listen, scraping every $interval:
  targets  http://$listen/targets
  alerts   http://$listen/alerts
  graph    http://$listen/graph?g0.expr=rate(video_import_videos_processed_total%5B1m%5D)
Grafana: import deploy/grafana/video-import.json (Dashboards > New > Import) into any
Grafana whose Prometheus data source points at http://$listen.
TEXT
run=(prometheus --config.file="$data/prometheus.yml" --storage.tsdb.path="$data/tsdb"
  --web.listen-address="$listen" --log.level=warn)
if [ "$temporary" = no ]; then
  # Nothing to clean up: Prometheus takes this process over (a signal reaches it directly).
  exec "${run[@]}"
fi
"${run[@]}" & pid=$!
trap 'kill -TERM "$pid" 2>/dev/null || true' INT TERM
wait "$pid" || true
wait "$pid" 2>/dev/null || true
rm -rf "$data"
