#!/usr/bin/env bash
# A throwaway PostgreSQL server on a local port for the tests (Debian's `postgresql` package).
#   bash .ci/postgres.sh        start it (installing the package if needed); prints the URL to export as
#                               TRAINLAB_TEST_POSTGRES_URL. A server already running there is reused.
#   bash .ci/postgres.sh stop   stop it.
# PGPORT_TEST (default 55432) and PGDATA_TEST (default /tmp/trainlab-pg) choose where.
set -euo pipefail
PORT="${PGPORT_TEST:-55432}"
DATA="${PGDATA_TEST:-/tmp/trainlab-pg}"
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  (export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get install -y -qq postgresql >/dev/null)
fi
BIN="$(dirname "$(ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")"
# The server refuses to run as root: run it as the package's `postgres` user when we are root.
as_pg() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/bash -c "$*"; else bash -c "$*"; fi; }
if [ "${1:-start}" = stop ]; then
  as_pg "'$BIN/pg_ctl' -D '$DATA' -m fast stop" >/dev/null 2>&1 || true
  exit 0
fi
if [ ! -f "$DATA/PG_VERSION" ]; then
  mkdir -p "$DATA"
  if [ "$(id -u)" = 0 ]; then chown postgres "$DATA"; fi
  as_pg "'$BIN/initdb' -D '$DATA' -U postgres --auth=trust -E UTF8 >/dev/null"
fi
if ! as_pg "'$BIN/pg_ctl' -D '$DATA' status" >/dev/null 2>&1; then
  # fsync off: a test server, thrown away afterwards.
  as_pg "'$BIN/pg_ctl' -D '$DATA' -l '$DATA/server.log' -w -o \"-p $PORT -k /tmp -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off\" start" >/dev/null
fi
echo "postgresql+psycopg://postgres@127.0.0.1:$PORT/postgres"
