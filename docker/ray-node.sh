#!/usr/bin/env bash
# Run one Ray node in the foreground, as a container's main process: `ray-node head|worker`.
#
# Token authentication stays on: RAY_AUTH_TOKEN (from .env through docker-compose.yml) is
# shared by the head, every worker and the client that submits jobs. The MLflow password of
# the sweep user (MLFLOW_TRACKING_USERNAME) comes as the Docker secret
# mlflow_tracking_password and goes to ~/.mlflow/credentials (mode 600), where MLflow's client
# finds it in every job and trial this node runs (`%` doubled: the file is an ini); a MLFLOW_TRACKING_PASSWORD in the
# environment (KubeRay: from a Secret) takes precedence. Optional settings:
#   RAY_NUM_CPUS, RAY_NUM_GPUS   what this node offers Ray (default: what the container sees)
#   RAY_HEAD_ADDRESS             the head's GCS, for workers (default ray-head:6379)
set -euo pipefail

: "${RAY_AUTH_TOKEN:?RAY_AUTH_TOKEN is not set: copy .env.example to .env and fill it in}"
export RAY_AUTH_MODE=token

secret=/run/secrets/mlflow_tracking_password
if [[ -r $secret ]]; then
  password=$(<"$secret")
  [[ -n $password ]] || { echo "ray-node: MLFLOW_TRACKING_PASSWORD is empty: fill it in .env" >&2; exit 1; }
  (
    umask 077
    mkdir -p "$HOME/.mlflow"
    printf '[mlflow]\nmlflow_tracking_username = %s\nmlflow_tracking_password = %s\n' \
      "${MLFLOW_TRACKING_USERNAME:-stadv}" "${password//%/%%}" >"$HOME/.mlflow/credentials"
  )
  unset password
fi

args=(--block --disable-usage-stats)
if [[ -n ${RAY_NUM_CPUS:-} ]]; then args+=(--num-cpus "$RAY_NUM_CPUS"); fi
if [[ -n ${RAY_NUM_GPUS:-} ]]; then args+=(--num-gpus "$RAY_NUM_GPUS"); fi

case ${1:-} in
  head)
    # The dashboard / jobs API listens on the container's interfaces; docker-compose.yml
    # publishes it on the host's 127.0.0.1 only.
    exec ray start --head --port 6379 --dashboard-host 0.0.0.0 --dashboard-port 8265 "${args[@]}"
    ;;
  worker)
    exec ray start --address "${RAY_HEAD_ADDRESS:-ray-head:6379}" "${args[@]}"
    ;;
  *)
    echo "usage: ray-node head|worker" >&2
    exit 2
    ;;
esac
