#!/usr/bin/env bash
# The services of docker-compose.yml without containers, for real, on this host: PostgreSQL
# (Debian's), an MLflow tracking server on it with served artifacts, a Ray head and one extra
# Ray worker node, with Ray's token authentication on. CI's end-to-end test runs on this.
#
#   .ci/cluster.sh start          start everything, write $STATE/cluster.env, print it
#   .ci/cluster.sh stop           stop everything this script started, by PID; idempotent
#   .ci/cluster.sh env            print $STATE/cluster.env (KEY=value lines, shell-quoted)
#   .ci/cluster.sh worker-start   (re)start the extra Ray worker node
#   .ci/cluster.sh worker-stop    stop the extra Ray worker node only (the head stays)
#   .ci/cluster.sh run CMD...     start, run CMD with STADV_CLUSTER_STATE set, stop (also on
#                                 failure or a signal); exits with CMD's status
#
# STATE is $STADV_CLUSTER_STATE (default /tmp/stadv-cluster); keep it short: Ray's unix
# sockets live below it. The Python that runs MLflow and Ray is $STADV_PYTHON, else the
# project's .venv, else python3. MLflow, PostgreSQL and Ray's dashboard / jobs API listen on
# 127.0.0.1 only. (Ray's GCS and raylets advertise this host's own address whatever
# --node-ip-address says; the traffic still never leaves the host.) Nothing is killed by
# name: each service runs in a session of its own and is stopped through its recorded PID.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${STADV_CLUSTER_STATE:-/tmp/stadv-cluster}
ENV_FILE=$STATE/cluster.env
PIDS=$STATE/pids
LOGS=$STATE/logs

if [[ -n ${STADV_PYTHON:-} ]]; then
  PY=$STADV_PYTHON
elif [[ -x $REPO/.venv/bin/python ]]; then
  PY=$REPO/.venv/bin/python
else
  PY=$(command -v python3)
fi
BIN=$(dirname "$PY")

# On SIGTERM `ray start --block` first drains its node for up to 30 s (for Ray Serve);
# nothing here serves traffic, so stop at once.
export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0

log() { printf '[cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
# A live process (a zombie waiting to be reaped counts as gone).
alive() {
  [[ -n ${1:-} ]] || return 1
  local state
  state=$(sed -E 's/.*\) (.).*/\1/' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n $state && $state != Z ]]
}

# N distinct free TCP ports on 127.0.0.1 (held open together so that they differ).
free_ports() {
  "$PY" - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

pg_bin() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  [[ -n $d && -x $d/pg_ctl ]] && echo "$d"
}

# PostgreSQL refuses to run as root: as root, run its tools as the postgres user.
as_pg() {
  if [[ $(id -u) -eq 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

ensure_postgres() {
  if [[ -z $(pg_bin) ]]; then
    [[ $(id -u) -eq 0 ]] || die "PostgreSQL is not installed and this is not root: apt-get install postgresql"
    log "installing Debian's postgresql"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq postgresql >/dev/null
  fi
  [[ -n $(pg_bin) ]] || die "no pg_ctl under /usr/lib/postgresql/*/bin after installing postgresql"
}

# MLflow on PostgreSQL needs psycopg2; `ray job submit` needs the dashboard's jobs API, which
# is in ray[default], not in ray[tune]. Install what is missing, at the installed Ray version.
ensure_python_deps() {
  if ! "$PY" -c 'import psycopg2' 2>/dev/null; then
    log "installing psycopg2-binary into $PY (the project's cluster extra)"
    "$PY" -m pip install -q 'psycopg2-binary>=2.9'
  fi
  if ! "$PY" -c 'import aiohttp_cors, grpc, opencensus, ray.dashboard' 2>/dev/null; then
    local v
    v=$("$PY" -c 'import ray; print(ray.__version__)')
    log "installing ray[default]==$v into $PY (dashboard and jobs API)"
    "$PY" -m pip install -q "ray[default]==$v"
  fi
  [[ -x $BIN/ray ]] || die "no ray next to $PY"
}

# wait_for TIMEOUT PID WHAT LOGFILE CMD...: until CMD succeeds; fail early if PID died.
wait_for() {
  local timeout=$1 pid=$2 what=$3 logfile=$4
  shift 4
  local t0=$SECONDS
  until "$@" >/dev/null 2>&1; do
    if [[ -n $pid ]] && ! alive "$pid"; then
      tail -n 40 "$logfile" >&2 || true
      die "$what exited while starting (log: $logfile)"
    fi
    if ((SECONDS - t0 > timeout)); then
      tail -n 40 "$logfile" >&2 || true
      die "$what not ready after ${timeout}s (log: $logfile)"
    fi
    sleep 1
  done
}

ENV_KEYS=(
  STADV_CLUSTER_STATE STADV_CLUSTER_PYTHON STADV_SHARED_DIR
  STADV_PG_PORT STADV_PG_PID STADV_PG_DATA STADV_PG_URI
  STADV_MLFLOW_URI STADV_MLFLOW_PID STADV_MLFLOW_ARTIFACTS
  STADV_RAY_GCS_ADDRESS STADV_RAY_DASHBOARD STADV_RAY_HEAD_PID STADV_RAY_HEAD_TEMP
  STADV_RAY_WORKER_PID STADV_RAY_WORKER_TEMP
  RAY_AUTH_MODE RAY_AUTH_TOKEN
)

# The env file holds the PostgreSQL password and the Ray token: owner-only.
write_env() {
  local tmp=$ENV_FILE.tmp key
  (umask 077 && : >"$tmp")
  for key in "${ENV_KEYS[@]}"; do
    printf '%s=%q\n' "$key" "${!key-}" >>"$tmp"
  done
  mv "$tmp" "$ENV_FILE"
}

load_env() {
  [[ -f $ENV_FILE ]] || die "no cluster state at $ENV_FILE: run '$0 start' first"
  set -a
  # shellcheck disable=SC1090
  . "$ENV_FILE"
  set +a
  PY=$STADV_CLUSTER_PYTHON # the interpreter the cluster was started with
  BIN=$(dirname "$PY")
}

alive_nodes() {
  curl -fsS -H "Authorization: Bearer $RAY_AUTH_TOKEN" "$STADV_RAY_DASHBOARD/nodes?view=summary" |
    "$PY" -c '
import json, sys
summary = json.load(sys.stdin)["data"]["summary"]
print(sum(1 for n in summary if n["raylet"]["state"] == "ALIVE"))'
}
has_nodes() { [[ $(alive_nodes) -ge $1 ]]; }
has_at_most_nodes() { [[ $(alive_nodes) -le $1 ]]; }

# PID and all its descendants (Ray's workers run in process groups of their own, so a group
# signal alone does not reach them).
descendants() {
  ps -e -o pid=,ppid= | "$PY" -c '
import sys
children = {}
for line in sys.stdin:
    pid, ppid = line.split()
    children.setdefault(ppid, []).append(pid)
todo, seen = [sys.argv[1]], []
while todo:
    p = todo.pop()
    seen.append(p)
    todo.extend(children.get(p, []))
print(" ".join(seen))' "$1"
}

# A service started with setsid leads its own process group: SIGTERM the group, wait for the
# leader, then SIGKILL whatever is left of the process tree recorded before signalling.
stop_tree() {
  local name=$1 pid=$2 grace=${3:-30}
  alive "$pid" || return 0
  local tree p
  tree=$(descendants "$pid")
  log "stopping $name (pid $pid, $(wc -w <<<"$tree") processes)"
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  local t0=$SECONDS
  while alive "$pid" && ((SECONDS - t0 < grace)); do sleep 0.5; done
  sleep 1
  for p in $tree; do
    if alive "$p"; then
      log "killing leftover pid $p"
      kill -KILL "$p" 2>/dev/null || true
    fi
  done
}

launch_worker() {
  STADV_RAY_WORKER_TEMP=$STATE/rw
  rm -rf "$STADV_RAY_WORKER_TEMP"
  mkdir -p "$STADV_RAY_WORKER_TEMP"
  local agent
  agent=$(free_ports 1)
  # Its own temp dir (two raylets sharing one broke --working-dir jobs) and its own dashboard
  # agent port (the default 52365 would clash with the head's on one host).
  PATH="$BIN:$PATH" setsid "$BIN/ray" start --block \
    --address "$STADV_RAY_GCS_ADDRESS" \
    --temp-dir "$STADV_RAY_WORKER_TEMP" \
    --dashboard-agent-listen-port "$agent" \
    --num-cpus 1 --num-gpus 0 --object-store-memory 200000000 \
    --disable-usage-stats \
    </dev/null >"$LOGS/ray-worker.log" 2>&1 &
  STADV_RAY_WORKER_PID=$!
  echo "$STADV_RAY_WORKER_PID" >"$PIDS/ray-worker"
  write_env
}

cmd_worker_start() {
  load_env
  if alive "${STADV_RAY_WORKER_PID:-}"; then
    log "worker node already running (pid $STADV_RAY_WORKER_PID)"
    return 0
  fi
  # A killed worker stays ALIVE in the GCS until its health checks fail (~15 s).
  wait_for 60 "" "removal of the dead worker node" "$LOGS/ray-head.log" has_at_most_nodes 1
  launch_worker
  wait_for 120 "$STADV_RAY_WORKER_PID" "Ray worker node" "$LOGS/ray-worker.log" has_nodes 2
  log "Ray worker node up (pid $STADV_RAY_WORKER_PID), $(alive_nodes) nodes alive"
}

cmd_worker_stop() {
  load_env
  local pid=${STADV_RAY_WORKER_PID:-}
  [[ -n $pid ]] || pid=$(cat "$PIDS/ray-worker" 2>/dev/null || true)
  [[ -n $pid ]] && stop_tree "Ray worker node" "$pid" 30
  rm -f "$PIDS/ray-worker"
  STADV_RAY_WORKER_PID=
  write_env
  if alive "${STADV_RAY_HEAD_PID:-}"; then
    wait_for 60 "" "removal of the worker node" "$LOGS/ray-head.log" has_at_most_nodes 1
  fi
  log "Ray worker node stopped; $(alive_nodes) node alive"
}

cmd_start() {
  local t0=$SECONDS
  if [[ -e $STATE ]]; then
    case $STATE in
      / | /tmp | /root | "$HOME" | "$REPO") die "refusing to use $STATE as the state directory" ;;
    esac
    cmd_stop
    rm -rf "$STATE"
  fi
  trap 'log "start failed: stopping what was started"; cmd_stop' EXIT
  ensure_postgres
  ensure_python_deps
  local pgbin
  pgbin=$(pg_bin)

  mkdir -p "$STATE" "$PIDS" "$LOGS"
  chmod 755 "$STATE" # the postgres user must reach its data dir below it
  STADV_CLUSTER_STATE=$STATE
  STADV_CLUSTER_PYTHON=$PY
  STADV_SHARED_DIR=$STATE/shared # Tune storage, model store, data: one path on every node
  mkdir -p "$STADV_SHARED_DIR"
  local pg_pass
  pg_pass=$("$PY" -c 'import secrets; print(secrets.token_hex(16))')
  RAY_AUTH_MODE=token
  RAY_AUTH_TOKEN=$("$PY" -c 'import secrets; print(secrets.token_hex(32))')
  export RAY_AUTH_MODE RAY_AUTH_TOKEN

  # --- Ray head first (it is independent of the rest): 1 CPU, dashboard + jobs API on
  # 127.0.0.1, its own temp dir and dashboard agent port.
  local gcs dash agent
  read -r gcs dash agent < <(free_ports 3)
  STADV_RAY_GCS_ADDRESS=127.0.0.1:$gcs
  STADV_RAY_DASHBOARD=http://127.0.0.1:$dash
  STADV_RAY_HEAD_TEMP=$STATE/rh
  mkdir -p "$STADV_RAY_HEAD_TEMP"
  # PATH puts this Python first: a plain `python` entrypoint then runs the right interpreter.
  PATH="$BIN:$PATH" setsid "$BIN/ray" start --head --block \
    --port "$gcs" --dashboard-host 127.0.0.1 --dashboard-port "$dash" \
    --dashboard-agent-listen-port "$agent" \
    --temp-dir "$STADV_RAY_HEAD_TEMP" \
    --num-cpus 1 --num-gpus 0 --object-store-memory 200000000 \
    --disable-usage-stats \
    </dev/null >"$LOGS/ray-head.log" 2>&1 &
  STADV_RAY_HEAD_PID=$!
  echo "$STADV_RAY_HEAD_PID" >"$PIDS/ray-head"
  write_env

  # --- PostgreSQL: a throw-away cluster, TCP on 127.0.0.1 only, password auth.
  local pgrun=$STATE/pgrun
  mkdir -p "$pgrun"
  [[ $(id -u) -ne 0 ]] || chown postgres: "$pgrun"
  STADV_PG_DATA=$pgrun/data
  (umask 077 && printf '%s\n' "$pg_pass" >"$pgrun/pwfile")
  [[ $(id -u) -ne 0 ]] || chown postgres: "$pgrun/pwfile"
  as_pg "$pgbin/initdb" -D "$STADV_PG_DATA" -U stadv --pwfile="$pgrun/pwfile" \
    --auth-host=scram-sha-256 --auth-local=scram-sha-256 -E UTF8 --locale=C.UTF-8 \
    >"$LOGS/initdb.log" 2>&1 || { cat "$LOGS/initdb.log" >&2; die "initdb failed"; }
  rm -f "$pgrun/pwfile"
  STADV_PG_PORT=$(free_ports 1)
  as_pg "$pgbin/pg_ctl" -D "$STADV_PG_DATA" -l "$pgrun/postgres.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $STADV_PG_PORT -c unix_socket_directories=''" start \
    >"$LOGS/pg_ctl.log" 2>&1 || { cat "$pgrun/postgres.log" >&2; die "PostgreSQL did not start"; }
  STADV_PG_PID=$(head -n 1 "$STADV_PG_DATA/postmaster.pid")
  echo "$STADV_PG_PID" >"$PIDS/postgres"
  PGPASSWORD=$pg_pass "$pgbin/psql" -h 127.0.0.1 -p "$STADV_PG_PORT" -U stadv -d postgres \
    -v ON_ERROR_STOP=1 -q -c 'CREATE DATABASE mlflow' >/dev/null
  # SQLAlchemy 2.1 maps a plain postgresql:// to psycopg 3; the project ships psycopg2.
  STADV_PG_URI=postgresql+psycopg2://stadv:$pg_pass@127.0.0.1:$STADV_PG_PORT/mlflow
  write_env
  log "PostgreSQL up on 127.0.0.1:$STADV_PG_PORT (pid $STADV_PG_PID) after $((SECONDS - t0)) s"

  # --- MLflow tracking server on PostgreSQL, serving artifacts from a local folder.
  # --allowed-hosts replaces MLflow's defaults: list every Host header clients send.
  local mlflow_port
  mlflow_port=$(free_ports 1)
  STADV_MLFLOW_URI=http://127.0.0.1:$mlflow_port
  STADV_MLFLOW_ARTIFACTS=$STATE/mlartifacts
  mkdir -p "$STADV_MLFLOW_ARTIFACTS"
  # MLflow's job runner (GenAI jobs: seven huey consumer processes) is not needed here.
  MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid "$PY" -m mlflow server \
    --backend-store-uri "$STADV_PG_URI" \
    --artifacts-destination "$STADV_MLFLOW_ARTIFACTS" \
    --host 127.0.0.1 --port "$mlflow_port" --workers 2 \
    --allowed-hosts "127.0.0.1,127.0.0.1:$mlflow_port,localhost,localhost:$mlflow_port" \
    </dev/null >"$LOGS/mlflow.log" 2>&1 &
  STADV_MLFLOW_PID=$!
  echo "$STADV_MLFLOW_PID" >"$PIDS/mlflow"
  write_env

  wait_for 180 "$STADV_RAY_HEAD_PID" "Ray head" "$LOGS/ray-head.log" has_nodes 1
  log "Ray head up, jobs API at $STADV_RAY_DASHBOARD (pid $STADV_RAY_HEAD_PID) after $((SECONDS - t0)) s"
  # --- One extra worker node on this host.
  launch_worker
  wait_for 180 "$STADV_MLFLOW_PID" "MLflow server" "$LOGS/mlflow.log" \
    curl -fsS "$STADV_MLFLOW_URI/health"
  log "MLflow up at $STADV_MLFLOW_URI (pid $STADV_MLFLOW_PID) after $((SECONDS - t0)) s"
  wait_for 120 "$STADV_RAY_WORKER_PID" "Ray worker node" "$LOGS/ray-worker.log" has_nodes 2
  log "Ray worker node up (pid $STADV_RAY_WORKER_PID) after $((SECONDS - t0)) s"
  trap - EXIT
  log "cluster up in $((SECONDS - t0)) s; state in $ENV_FILE (source it, or '$0 env')"
}

cmd_stop() {
  if [[ ! -d $PIDS ]]; then
    log "nothing to stop (no $PIDS)"
    return 0
  fi
  local pid
  # The Ray nodes and MLflow stop side by side; PostgreSQL, which MLflow uses, last.
  if [[ -f $PIDS/ray-worker ]]; then
    stop_tree "Ray worker node" "$(cat "$PIDS/ray-worker")" 30 &
  fi
  if [[ -f $PIDS/ray-head ]]; then
    stop_tree "Ray head" "$(cat "$PIDS/ray-head")" 30 &
  fi
  if [[ -f $PIDS/mlflow ]]; then
    stop_tree "MLflow server" "$(cat "$PIDS/mlflow")" 30 &
  fi
  wait
  if [[ -f $PIDS/postgres ]]; then
    pid=$(cat "$PIDS/postgres")
    if alive "$pid"; then
      log "stopping PostgreSQL (pid $pid)"
      as_pg "$(pg_bin)/pg_ctl" -D "$STATE/pgrun/data" -m fast -w -t 30 stop \
        >"$LOGS/pg_ctl-stop.log" 2>&1 || log "pg_ctl stop failed: $(tail -n 1 "$LOGS/pg_ctl-stop.log")"
      stop_tree "PostgreSQL" "$pid" 10
    fi
  fi
  rm -rf "$PIDS" "$ENV_FILE"
  log "stopped; logs and data stay in $STATE"
}

# Start the services, run one command against them, stop them whatever happens: the services
# live only as long as the command (README's test command runs the cluster tests this way).
cmd_run() {
  (($# > 0)) || die "usage: $0 run CMD [ARGS...]"
  local child= status=0
  # A signal ends this script through the EXIT trap, which stops the services (and, once
  # CMD runs, CMD first).
  trap 'exit 129' HUP
  trap 'exit 130' INT
  trap 'exit 143' TERM
  cmd_start
  trap 'status=$?; [[ -z $child ]] || kill -TERM "$child" 2>/dev/null || true; cmd_stop; exit "$status"' EXIT
  # In the background, so that a signal to this script is handled at once, not after CMD.
  STADV_CLUSTER_STATE=$STATE "$@" &
  child=$!
  wait "$child" || status=$?
  child=
  log "$1 exited with status $status"
  exit "$status"
}

case ${1:-} in
  start) cmd_start ;;
  stop) cmd_stop ;;
  env) cat "$ENV_FILE" 2>/dev/null || die "no cluster state at $ENV_FILE: run '$0 start' first" ;;
  worker-start) cmd_worker_start ;;
  worker-stop) cmd_worker_stop ;;
  run)
    shift
    cmd_run "$@"
    ;;
  *)
    echo "usage: $0 start|stop|env|worker-start|worker-stop|run CMD..." >&2
    exit 2
    ;;
esac
