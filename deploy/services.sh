#!/usr/bin/env bash
# Starts PostgreSQL and RabbitMQ on this machine if they are not running, installing them
# with apt-get where they are missing (Debian/Ubuntu, as root), and installs Prometheus
# (prometheus and promtool, which the tests run; it is not started here), Node.js and npm,
# the node clients the tests run (tests/clients) and moto's S3 server. Used by demo.sh and
# .ci/run.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

need_install=()
command -v pg_ctlcluster >/dev/null 2>&1 || need_install+=(postgresql)
command -v rabbitmq-server >/dev/null 2>&1 || need_install+=(rabbitmq-server)
command -v python3 >/dev/null 2>&1 || need_install+=(python3)
command -v curl >/dev/null 2>&1 || need_install+=(curl)
command -v promtool >/dev/null 2>&1 || need_install+=(prometheus)
# The durability test watches the worker's fsync calls.
command -v strace >/dev/null 2>&1 || need_install+=(strace)
# The e2e test that reads entries with Livingdocs' node SDK runs node. Debian packages npm
# apart from nodejs; a nodejs from elsewhere may bring its own npm, so each only if missing.
command -v node >/dev/null 2>&1 || need_install+=(nodejs)
command -v npm >/dev/null 2>&1 || need_install+=(npm)
if [ ${#need_install[@]} -gt 0 ]; then
  echo "installing ${need_install[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_install[@]}" >/dev/null
fi

# Local trust auth, as on the developer machines, whether or not PostgreSQL runs already
# (installing the package may have started it with password authentication).
reload=no
if [ -d /etc/postgresql ]; then
  version=$(ls /etc/postgresql | sort -n | tail -1)
  conf=/etc/postgresql/$version/main
  if ! grep -q "^host all all 127.0.0.1/32 trust" "$conf/pg_hba.conf"; then
    sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\nlocal all all trust' "$conf/pg_hba.conf"
    reload=yes
  fi
fi
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
elif [ "$reload" = yes ]; then
  pg_ctlcluster --skip-systemctl-redirect "$version" main reload
fi
for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
pg_isready -h 127.0.0.1 -p 5432

if ! rabbitmq-diagnostics -q check_port_connectivity >/dev/null 2>&1; then
  rabbitmq-server -detached >/dev/null 2>&1 || true
  for _ in $(seq 1 60); do
    rabbitmq-diagnostics -q check_port_connectivity >/dev/null 2>&1 && break
    sleep 1
  done
fi
rabbitmq-diagnostics -q check_port_connectivity >/dev/null && echo "RabbitMQ is up"

# The node clients at the versions of their committed lock file: installed when missing, and
# again when the lock file changed since (npm writes node_modules/.package-lock.json last).
clients=$root/tests/clients
if [ ! -f "$clients/node_modules/.package-lock.json" ] ||
  [ "$clients/package-lock.json" -nt "$clients/node_modules/.package-lock.json" ]; then
  echo "installing the test clients (npm ci --prefix tests/clients)"
  npm ci --prefix "$clients" --no-audit --no-fund --loglevel=error >/dev/null
fi

# The S3 tests run moto's server (PyPI) as their object storage: used from the PATH when it
# is there, else installed once into a virtualenv under target/ (system Pythons refuse
# global installs).
moto_venv=$root/target/moto-venv
if ! command -v moto_server >/dev/null 2>&1 && [ ! -x "$moto_venv/bin/moto_server" ]; then
  echo "installing moto's S3 server into target/moto-venv"
  [ -x "$moto_venv/bin/pip" ] || python3 -m venv "$moto_venv" 2>/dev/null || {
    apt-get install -y -qq python3-venv >/dev/null && python3 -m venv "$moto_venv"
  }
  "$moto_venv/bin/pip" install -q 'moto[server]'
fi
