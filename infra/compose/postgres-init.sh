#!/bin/bash
# Creates the roles and databases of MLflow, Prefect and the pipeline's state (requests, audit). The postgres image runs this once, when
# its data volume is empty (docker-entrypoint-initdb.d); later password changes need ALTER ROLE.
set -eo pipefail   # no -u: the image may source this file rather than run it

: "${MLFLOW_DB_PASSWORD:?must be set for the mlflow role}"
: "${PREFECT_DB_PASSWORD:?must be set for the prefect role}"
: "${STATE_DB_PASSWORD:?must be set for the unsir_state role}"

# psql quotes the passwords itself (:'name'), so no character in them can break the SQL.
psql --set ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    --set mlflow_password="$MLFLOW_DB_PASSWORD" \
    --set prefect_password="$PREFECT_DB_PASSWORD" \
    --set state_password="$STATE_DB_PASSWORD" <<'SQL'
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_password';
CREATE ROLE prefect LOGIN PASSWORD :'prefect_password';
CREATE ROLE unsir_state LOGIN PASSWORD :'state_password';

-- MLflow's tracking store and its basic-auth user store, each in a database of its own.
CREATE DATABASE mlflow OWNER mlflow;
CREATE DATABASE mlflow_auth OWNER mlflow;
CREATE DATABASE prefect OWNER prefect;
-- Deletion requests and the audit trail; the pipeline's migrations create the tables.
CREATE DATABASE unsir_state OWNER unsir_state;
REVOKE ALL ON DATABASE mlflow, mlflow_auth, prefect, unsir_state FROM PUBLIC;

-- Prefect's migrations create pg_trgm; creating it here needs no privilege from the role.
\connect prefect
CREATE EXTENSION IF NOT EXISTS pg_trgm;
SQL
