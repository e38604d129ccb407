#!/usr/bin/env bash
# A RabbitMQ cluster of three nodes on this machine, for trying failover and for the
# cluster test: distinct node names and ports, no plugins, data under DIR (run as root;
# the nodes run as the rabbitmq user). The machine's own RabbitMQ is not touched.
#
#   deploy/rabbitmq-cluster.sh start DIR [BASE_PORT]   starts it; prints amqp.url for all nodes
#                                                      (keep BASE_PORT below 32768, out of the
#                                                      ephemeral port range)
#   deploy/rabbitmq-cluster.sh node DIR N               prints node N's name (N = 1, 2, 3)
#   deploy/rabbitmq-cluster.sh stop-node DIR N          stops node N (as a failing node would)
#   deploy/rabbitmq-cluster.sh start-node DIR N         starts node N again; it rejoins
#   deploy/rabbitmq-cluster.sh stop DIR                 stops every node and removes DIR
#
# Node N listens for AMQP on BASE_PORT + N and for clustering on BASE_PORT + 10 + N.
set -euo pipefail
command=${1:?usage: rabbitmq-cluster.sh start|node|stop-node|stop DIR [N|BASE_PORT]}
dir=${2:?the folder of the cluster}
name() { echo "vitc$(basename "$dir" | tr -dc 'a-z0-9' | tail -c 12)$1@localhost"; }
# Starts node $1 in the background and waits until it runs.
start_node() {
  local n=$1 node=$dir/node$1 base
  base=$(cat "$dir/base_port")
  # The whole background job writes to the node's file, not to this script's output, so
  # that a caller reading that output sees its end.
  (cd "$node" && RABBITMQ_NODENAME=$(name "$n") RABBITMQ_DIST_PORT=$((base + 10 + n)) \
    RABBITMQ_CONFIG_FILE=$node/rabbitmq.conf RABBITMQ_MNESIA_BASE=$node/mnesia \
    RABBITMQ_LOG_BASE=$node/log RABBITMQ_ENABLED_PLUGINS_FILE=$node/plugins \
    RABBITMQ_PID_FILE=$node/pid exec setsid rabbitmq-server) >>"$node/server.out" 2>&1 </dev/null &
}
wait_node() {
  rabbitmqctl -q -n "$(name "$1")" wait "$dir/node$1/pid" --timeout 90 >/dev/null
}

case "$command" in
start)
  base=${3:-21000}
  mkdir -p "$dir"
  for n in 1 2 3; do
    node=$dir/node$n
    mkdir -p "$node/mnesia" "$node/log"
    echo "[]." > "$node/plugins"
    echo "listeners.tcp.local = 127.0.0.1:$((base + n))" > "$node/rabbitmq.conf"
  done
  echo "$base" > "$dir/base_port"
  chown -R rabbitmq:rabbitmq "$dir"
  for n in 1 2 3; do start_node $n; done
  for n in 1 2 3; do wait_node $n; done
  for n in 2 3; do
    rabbitmqctl -q -n "$(name $n)" stop_app
    rabbitmqctl -q -n "$(name $n)" join_cluster "$(name 1)"
    rabbitmqctl -q -n "$(name $n)" start_app
  done
  urls=()
  for n in 1 2 3; do urls+=("amqp://guest:guest@127.0.0.1:$((base + n))/%2f"); done
  (IFS=,; echo "${urls[*]}")
  ;;
node)
  name "${3:?which node}"
  ;;
stop-node)
  rabbitmqctl -q -n "$(name "${3:?which node}")" stop
  ;;
start-node)
  rm -f "$dir/node$3/pid"
  start_node "${3:?which node}"
  wait_node "$3"
  ;;
stop)
  for n in 1 2 3; do rabbitmqctl -q -n "$(name $n)" stop >/dev/null 2>&1 || true; done
  rm -rf "$dir"
  ;;
*)
  echo "unknown command $command" >&2
  exit 2
  ;;
esac
