#!/bin/sh
# First start of the PostgreSQL volume only: a database and a role of its own for sopflow's records, so the
# application never holds the credentials of Temporal's databases.
set -eu
: "${SOPFLOW_DB_PASSWORD:?}"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    --set=password="$SOPFLOW_DB_PASSWORD" <<'SQL'
CREATE ROLE sopflow LOGIN PASSWORD :'password';
CREATE DATABASE sopflow OWNER sopflow;
SQL
