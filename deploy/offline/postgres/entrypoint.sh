#!/usr/bin/env bash
# First start: a cluster with trust auth and the database POSTGRES_DB; then
# PostgreSQL in the foreground as the postgres user, listening on all
# addresses of the container's network.
set -euo pipefail
mkdir -p "$PGDATA" /run/postgresql
chown -R postgres:postgres "$PGDATA" /run/postgresql
chmod 700 "$PGDATA"
as_pg() { runuser -u postgres -- "$@"; }
if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
    as_pg initdb -D "$PGDATA" -U postgres --auth=trust >/dev/null
    printf 'host all all 0.0.0.0/0 trust\nhost all all ::/0 trust\n' >>"$PGDATA/pg_hba.conf"
    db="${POSTGRES_DB:-postgres}"
    if [[ "$db" != postgres ]]; then
        as_pg pg_ctl -D "$PGDATA" -w -o "-c listen_addresses=''" start >/dev/null
        as_pg psql -U postgres -d postgres -qc "CREATE DATABASE \"$db\""
        as_pg pg_ctl -D "$PGDATA" -w stop >/dev/null
    fi
fi
# setpriv execs (runuser would stay as PID 1 between Docker and PostgreSQL).
exec setpriv --reuid=postgres --regid=postgres --init-groups postgres -D "$PGDATA" -c listen_addresses='*'
