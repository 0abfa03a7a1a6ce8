#!/bin/sh
# Create Temporal's two databases and bring their schemas to the version this admin-tools image ships.
# Safe to run at every `docker compose up`: existing databases are kept, schemas only move forward.
set -eu

: "${POSTGRES_SEEDS:?}" "${POSTGRES_USER:?}" "${POSTGRES_PWD:?}"
DB_PORT="${DB_PORT:-5432}"
SCHEMA_DIR=/etc/temporal/schema/postgresql/v12

sql() {
    temporal-sql-tool --plugin postgres12 --ep "$POSTGRES_SEEDS" -p "$DB_PORT" -u "$POSTGRES_USER" \
        --pw "$POSTGRES_PWD" "$@"
}

# PostgreSQL is healthy before this runs (compose depends_on), so no waiting here.
for pair in "temporal:temporal" "temporal_visibility:visibility"; do
    db="${pair%%:*}"
    dir="${pair#*:}"
    sql --db "$db" create-database 2>/dev/null || echo "database $db exists"
    sql --db "$db" setup-schema -v 0.0
    sql --db "$db" update-schema -d "$SCHEMA_DIR/$dir/versioned"
done
echo "Temporal schemas are up to date"
