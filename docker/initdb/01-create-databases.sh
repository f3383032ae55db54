#!/usr/bin/env bash
# First start of the `db` service only: the postgres image runs /docker-entrypoint-initdb.d/*
# once, when the data volume is empty (never again, so later password changes are made with
# ALTER ROLE by hand; see README.md ("Deploy")).
#
# Creates one login role and one database for each user of the server:
#   CRM_DB_USER / CRM_DB_NAME         the app's tables (Alembic, `python -m app ...`)
#   DAGSTER_PG_USER / DAGSTER_PG_DB   Dagster's run, event and schedule storage
# Each database belongs to its role and is closed to everyone else (REVOKE ... FROM PUBLIC).
# Idempotent: a role or database that already exists is left alone (its password is reset to the
# configured one), so running it again does no harm.
# Passwords reach psql through the environment (\getenv), never through argv or the SQL text,
# and values are quoted by format(%I, %L), so no name or password can inject SQL.
set -Eeo pipefail

: "${POSTGRES_USER:?}"
: "${CRM_DB_USER:?CRM_DB_USER is not set}"
: "${CRM_DB_NAME:?CRM_DB_NAME is not set}"
: "${CRM_DB_PASSWORD:?CRM_DB_PASSWORD is not set}"
: "${DAGSTER_PG_USER:?DAGSTER_PG_USER is not set}"
: "${DAGSTER_PG_DB:?DAGSTER_PG_DB is not set}"
: "${DAGSTER_PG_PASSWORD:?DAGSTER_PG_PASSWORD is not set}"

create_role_and_database() {
    local role="$1" database="$2" password_var="$3"
    psql --no-psqlrc -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
        --set=role="$role" --set=database="$database" --set=password_var="$password_var" <<'SQL'
\getenv password :password_var
SELECT format('CREATE ROLE %I LOGIN', :'role')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role')\gexec
SELECT format('ALTER ROLE %I WITH LOGIN PASSWORD %L', :'role', :'password')\gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'database', :'role')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'database')\gexec
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', :'database')\gexec
SELECT format('GRANT ALL ON DATABASE %I TO %I', :'database', :'role')\gexec
SQL
    echo "initdb: role ${role} owns database ${database}"
}

create_role_and_database "$CRM_DB_USER" "$CRM_DB_NAME" CRM_DB_PASSWORD
create_role_and_database "$DAGSTER_PG_USER" "$DAGSTER_PG_DB" DAGSTER_PG_PASSWORD
