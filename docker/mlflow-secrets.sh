#!/usr/bin/env bash
# The MLflow service's entrypoint: `mlflow-secrets CMD...` turns the Docker secrets under
# /run/secrets into what MLflow reads, then runs CMD (docker-compose.yml: `mlflow server`).
#
#   postgres_password         ~/.pgpass (mode 600): libpq finds the password there, so the
#                             backend URI (MLFLOW_BACKEND_STORE_URI) carries none
#   mlflow_admin_password     MLFLOW_AUTH_ADMIN_PASSWORD (bootstraps the admin on first start)
#   mlflow_flask_secret_key   MLFLOW_FLASK_SERVER_SECRET_KEY (CSRF, the same in every worker)
#   s3_access_key, s3_secret_key   AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (artifact store)
#
# Environment variables of the process only: neither on a command line nor in the
# container's configuration (`docker inspect`).
set -euo pipefail
umask 077

secret() {
  local f=/run/secrets/$1 value
  [[ -r $f ]] || { echo "mlflow-secrets: no secret $1 (docker-compose.yml lists it)" >&2; exit 1; }
  value=$(<"$f")
  [[ -n $value ]] || { echo "mlflow-secrets: the secret $1 is empty: fill it in .env" >&2; exit 1; }
  printf '%s' "$value"
}

pg=$(secret postgres_password)
pg=${pg//\\/\\\\}
pg=${pg//:/\\:}
printf '*:*:*:*:%s\n' "$pg" >"$HOME/.pgpass"
unset pg
export PGPASSFILE=$HOME/.pgpass
MLFLOW_AUTH_ADMIN_PASSWORD=$(secret mlflow_admin_password)
MLFLOW_FLASK_SERVER_SECRET_KEY=$(secret mlflow_flask_secret_key)
AWS_ACCESS_KEY_ID=$(secret s3_access_key)
AWS_SECRET_ACCESS_KEY=$(secret s3_secret_key)
export MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
exec "$@"
