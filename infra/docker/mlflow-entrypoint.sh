#!/bin/sh
# Renders the basic-auth configuration from the environment, then starts the tracking server.
# The file holds no password: MLflow reads the admin's from MLFLOW_AUTH_ADMIN_PASSWORD, and
# only to create that user on the first start against an empty auth database.
set -eu

: "${MLFLOW_BACKEND_STORE_URI:?must be a postgresql:// URI}"
: "${MLFLOW_AUTH_DATABASE_URI:?must be a postgresql:// URI}"
: "${MLFLOW_ARTIFACTS_DESTINATION:?must be an s3:// URI}"
: "${MLFLOW_AUTH_ADMIN_USERNAME:?must name the admin user}"
: "${MLFLOW_AUTH_ADMIN_PASSWORD:?must be set (12 characters at least)}"
: "${MLFLOW_FLASK_SERVER_SECRET_KEY:?must be set}"

config_dir="$(mktemp -d)"
# The database URI carries the database password: readable by this user only.
umask 077
cat > "$config_dir/basic_auth.ini" <<INI
[mlflow]
default_permission = ${MLFLOW_AUTH_DEFAULT_PERMISSION:-READ}
database_uri = ${MLFLOW_AUTH_DATABASE_URI}
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
# Without it every request pays a PBKDF2 password check (measured on the local stack: 0.24 s
# a request, a registration makes dozens). A changed password can stay valid this long.
auth_cache_ttl_seconds = ${MLFLOW_AUTH_CACHE_TTL_SECONDS:-60}
INI
export MLFLOW_AUTH_CONFIG_PATH="$config_dir/basic_auth.ini"

# MLflow reads MLFLOW_BACKEND_STORE_URI itself: the password stays off the command line.

exec mlflow server \
    --host 0.0.0.0 \
    --port 5000 \
    --serve-artifacts \
    --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" \
    --app-name basic-auth \
    "$@"
