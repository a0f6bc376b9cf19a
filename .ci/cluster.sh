#!/usr/bin/env bash
# The services of docker-compose.yml without containers, for real, on this host: PostgreSQL
# (Debian's), an MLflow tracking server on it with served artifacts and basic authentication, a
# Ray head and one extra Ray worker node, with Ray's token authentication on. CI's end-to-end
# test runs on this.
#
#   .ci/cluster.sh start          start everything, write $STATE/cluster.env, print it
#   .ci/cluster.sh stop           stop everything this script started, by proven PID; idempotent
#   .ci/cluster.sh env            print $STATE/cluster.env (KEY=value lines, shell-quoted)
#   .ci/cluster.sh worker-start   (re)start the extra Ray worker node
#   .ci/cluster.sh worker-stop    stop the extra Ray worker node only (the head stays)
#   .ci/cluster.sh run CMD...     start, run CMD with STADV_CLUSTER_STATE and the MLflow
#                                 credentials set, stop (also on failure or a signal); exits
#                                 with CMD's status
#
# STATE is $STADV_CLUSTER_STATE. `start` and `run` create a fresh private one when it is unset
# (mktemp -d, mode 700; `run` deletes it again when CMD succeeds); every other command needs it
# set. A state folder must be a real directory owned by this user and writable by nobody else:
# anything else is refused, since whoever can write there decides what `stop` signals. Keep
# its path short: Ray's unix sockets live below it. The Python that runs MLflow and Ray is
# $STADV_PYTHON, else the project's .venv, else python3. MLflow, PostgreSQL and Ray's
# dashboard / jobs API listen on 127.0.0.1 only. (Ray's GCS and raylets advertise this host's
# own address whatever --node-ip-address says; the traffic still never leaves the host.)
#
# Nothing is killed by name, nor by a bare PID. Each service runs in a session of its own, and
# $STATE/pids/NAME (NAME: ray-head, ray-worker, mlflow, postgres) records it as KEY=value
# lines: pid, start (field 22 of /proc/PID/stat, the start time in clock ticks since boot),
# cmdline_sha256 (of /proc/PID/cmdline) and cmdline (readable, not checked). `stop` signals a
# process only if it is alive with that very start time and command line, its PID is above 1
# and it is not an ancestor of this script; it SIGKILLs only descendants it saw, with the start
# time it saw, and says what it refused (and then exits 1). cluster.env is read as data, never
# sourced: known keys only, values as `printf %q` writes them.
#
# Secrets (the PostgreSQL password, the Ray token, MLflow's passwords) travel in environment
# variables and owner-only files, never on a command line (/proc/PID/cmdline is world-readable).
set -euo pipefail
umask 077

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ME=$(id -u)
STATE=
CREATED_STATE=
REFUSED=0

if [[ -n ${STADV_PYTHON:-} ]]; then
  PY=$STADV_PYTHON
elif [[ -x $REPO/.venv/bin/python ]]; then
  PY=$REPO/.venv/bin/python
else
  PY=$(command -v python3 || echo python3)
fi
BIN=$(dirname "$PY")

# On SIGTERM `ray start --block` first drains its node for up to 30 s (for Ray Serve);
# nothing here serves traffic, so stop at once.
export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0

log() { printf '[cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}
refuse() {
  REFUSED=$((REFUSED + 1))
  log "refused: $*"
}

# ---------------------------------------------------------------------------------------------
# The state folder and its files
# ---------------------------------------------------------------------------------------------
# A directory we own that nobody else may write (not a symlink, not a system folder).
check_private_dir() {
  local d=$1 owner mode real
  [[ ! -L $d ]] || die "refusing state folder $d: it is a symbolic link"
  [[ -d $d ]] || die "refusing state folder $d: not a directory"
  read -r owner mode < <(stat -c '%u %a' -- "$d")
  [[ $owner == "$ME" ]] || die "refusing state folder $d: owned by uid $owner, not by this user (uid $ME)"
  (((8#$mode & 8#022) == 0)) || die "refusing state folder $d: group- or world-writable (mode $mode)"
  real=$(cd -- "$d" && pwd -P)
  case $real in
    / | /tmp | /var/tmp | /root | /home | "${HOME:-/}" | "$REPO") die "refusing $d as the state folder" ;;
  esac
}

# An owner-only regular file of ours.
check_private_file() {
  local f=$1 owner mode
  [[ ! -L $f && -f $f ]] || die "refusing $f: not a regular file"
  read -r owner mode < <(stat -c '%u %a' -- "$f")
  [[ $owner == "$ME" ]] || die "refusing $f: owned by uid $owner, not by this user (uid $ME)"
  (((8#$mode & 8#077) == 0)) || die "refusing $f: readable or writable by others (mode $mode)"
}

# STATE from $STADV_CLUSTER_STATE; with `create`, a fresh private folder when it is unset
# (or created, mode 700, when it names a folder that does not exist yet).
use_state() {
  if [[ -n ${STADV_CLUSTER_STATE:-} ]]; then
    STATE=$STADV_CLUSTER_STATE
    if [[ $1 == create && ! -e $STATE && ! -L $STATE ]]; then
      mkdir -m 700 -- "$STATE" || die "cannot create the state folder $STATE"
    fi
  elif [[ $1 == create ]]; then
    STATE=$(mktemp -d -t stadv-cl.XXXXXX)
    CREATED_STATE=$STATE
  else
    die "STADV_CLUSTER_STATE is not set: name the state folder that '$0 start' printed"
  fi
  [[ $STATE == /* ]] || STATE=$(pwd)/$STATE
  check_private_dir "$STATE"
  ENV_FILE=$STATE/cluster.env
  PIDS=$STATE/pids
  LOGS=$STATE/logs
}

ENV_KEYS=(
  STADV_CLUSTER_STATE STADV_CLUSTER_PYTHON STADV_SHARED_DIR
  STADV_PG_PORT STADV_PG_PID STADV_PG_RUN STADV_PG_DATA STADV_PG_URI
  STADV_MLFLOW_URI STADV_MLFLOW_PID STADV_MLFLOW_ARTIFACTS
  STADV_MLFLOW_ADMIN_USERNAME STADV_MLFLOW_ADMIN_PASSWORD
  MLFLOW_TRACKING_USERNAME MLFLOW_TRACKING_PASSWORD
  STADV_RAY_GCS_ADDRESS STADV_RAY_DASHBOARD STADV_RAY_HEAD_PID STADV_RAY_HEAD_TEMP
  STADV_RAY_WORKER_PID STADV_RAY_WORKER_TEMP
  RAY_AUTH_MODE RAY_AUTH_TOKEN
)

# The env file holds the passwords and the Ray token: owner-only.
write_env() {
  local tmp=$ENV_FILE.tmp key
  : >"$tmp"
  for key in "${ENV_KEYS[@]}"; do
    printf '%s=%q\n' "$key" "${!key-}" >>"$tmp"
  done
  mv "$tmp" "$ENV_FILE"
}

# Undo `printf %q` for what it writes for plain values: backslash escapes, '' for empty.
# Anything a shell would expand or split ($, `, quotes, spaces, ...) unescaped: not data.
unquote() {
  local s=$1 c out=
  REPLY=
  [[ $s == "''" ]] && return 0
  while [[ -n $s ]]; do
    c=${s:0:1}
    s=${s:1}
    if [[ $c == "\\" ]]; then
      [[ -n $s ]] || return 1
      c=${s:0:1}
      s=${s:1}
    elif [[ ! $c =~ ^[A-Za-z0-9_./:@%+,=~^-]$ ]]; then
      return 1
    fi
    out+=$c
  done
  REPLY=$out
}

# cluster.env as data: KEY=value lines, known keys only; each becomes an exported variable.
load_env() {
  [[ -e $ENV_FILE ]] || die "no cluster state at $ENV_FILE: run '$0 start' first"
  check_private_file "$ENV_FILE"
  local line key n=0 known=" ${ENV_KEYS[*]} "
  while IFS= read -r line || [[ -n $line ]]; do
    n=$((n + 1))
    [[ -n $line ]] || continue
    key=${line%%=*}
    [[ $line == *=* && $known == *" $key "* ]] ||
      die "refusing $ENV_FILE: line $n is not KEY=value with a known key"
    unquote "${line#*=}" || die "refusing $ENV_FILE: the value of $key (line $n) is not plain data"
    printf -v "$key" '%s' "$REPLY"
    export "${key?}"
  done <"$ENV_FILE"
  if [[ -n ${STADV_CLUSTER_PYTHON:-} ]]; then
    PY=$STADV_CLUSTER_PYTHON # the interpreter the cluster was started with
    BIN=$(dirname "$PY")
  fi
}

# ---------------------------------------------------------------------------------------------
# Processes: which ones are ours, provably
# ---------------------------------------------------------------------------------------------
# /proc/PID/stat after the command name (which may hold spaces and parentheses): STAT[0] is
# field 3 (state), STAT[1] the parent, STAT[2] the process group, STAT[19] field 22 (start).
read_stat() {
  local line
  STAT=()
  [[ $1 =~ ^[0-9]+$ ]] || return 1
  { read -r line <"/proc/$1/stat"; } 2>/dev/null || return 1
  read -r -a STAT <<<"${line##*) }"
  ((${#STAT[@]} > 19))
}

# Alive (a zombie waiting to be reaped counts as gone), and, given START, that very process.
alive() {
  read_stat "${1:-x}" || return 1
  [[ ${STAT[0]} != Z ]] || return 1
  [[ -z ${2:-} || ${STAT[19]} == "$2" ]]
}

cmdline_hash() { sha256sum <"/proc/$1/cmdline" | cut -d ' ' -f 1; }

# This script and every process above it, up to PID 1.
declare -A ANCESTORS=()
find_ancestors() {
  local p=$$
  ANCESTORS=([$$]=1 [$BASHPID]=1)
  while [[ -n $p && $p != 0 ]]; do
    ANCESTORS[$p]=1
    read_stat "$p" || break
    p=${STAT[1]}
  done
}

# Record NAME as PID, once the process has exec'd its program (a python whose command line
# holds MARKER): its start time and command line are the proof `stop` checks.
record_pid() {
  local name=$1 pid=$2 marker=$3 t0=$SECONDS cmd argv0
  while :; do
    alive "$pid" || die "$name (pid $pid) exited at once (logs: $LOGS)"
    cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)
    argv0=${cmd%% *}
    [[ ${argv0##*/} == python* && $cmd == *"$marker"* ]] && break
    ((SECONDS - t0 < 30)) || die "$name (pid $pid) did not start its program: '$cmd'"
    sleep 0.05
  done
  write_record "$name" "$pid"
}

write_record() {
  local name=$1 pid=$2 start cmd
  mkdir -p "$PIDS"
  read_stat "$pid" || die "$name (pid $pid) is gone"
  start=${STAT[19]}
  cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline")
  printf 'pid=%s\nstart=%s\ncmdline_sha256=%s\ncmdline=%s\n' \
    "$pid" "$start" "$(cmdline_hash "$pid")" "${cmd//$'\n'/ }" >"$PIDS/$name.tmp"
  mv "$PIDS/$name.tmp" "$PIDS/$name"
}

# Whether $PIDS/NAME names a live process this script started: 0 (VPID and VSTART set), 1
# refused (logged), 2 no record, or the process it names has ended.
verify_record() {
  local name=$1 file=$PIDS/$1 line key value pid='' start='' hash=''
  VPID=
  VSTART=
  [[ -e $file || -L $file ]] || return 2
  if [[ -L $file || ! -f $file ]]; then
    refuse "$name: $file is not a regular file"
    return 1
  fi
  while IFS= read -r line || [[ -n $line ]]; do
    key=${line%%=*}
    value=${line#*=}
    case $key in
      pid) pid=$value ;;
      start) start=$value ;;
      cmdline_sha256) hash=$value ;;
      cmdline) ;;
      *)
        if [[ $line =~ ^[0-9]+$ && -z $pid ]]; then
          pid=$line # a bare PID: no proof of what it is
        else
          refuse "$name: $file holds an unknown line"
          return 1
        fi
        ;;
    esac
  done <"$file"
  if [[ ! $pid =~ ^[0-9]+$ ]] || ((10#$pid <= 1)); then
    refuse "$name: will not signal pid '$pid'"
    return 1
  fi
  pid=$((10#$pid))
  if [[ -n ${ANCESTORS[$pid]:-} ]]; then
    refuse "$name: pid $pid is this script or one of its ancestors"
    return 1
  fi
  if ! alive "$pid"; then
    log "$name (pid $pid) is not running"
    return 2
  fi
  if [[ ! $start =~ ^[0-9]+$ || ! $hash =~ ^[0-9a-f]{64}$ ]]; then
    refuse "$name: pid $pid has no start time and command line on record; not proven ours"
    return 1
  fi
  if [[ ${STAT[19]} != "$start" ]]; then
    refuse "$name: pid $pid started at tick ${STAT[19]}, not at the recorded $start: another process"
    return 1
  fi
  if [[ $(cmdline_hash "$pid") != "$hash" ]]; then
    refuse "$name: pid $pid runs another command line than the recorded one"
    return 1
  fi
  VPID=$pid
  VSTART=$start
}

# PID's descendants as pid:start words, from /proc.
descendants() {
  local d p
  local -A kids=() starts=()
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    read_stat "$p" || continue
    kids[${STAT[1]}]+=" $p"
    starts[$p]=${STAT[19]}
  done
  local -a todo out=()
  read -r -a todo <<<"${kids[$1]:-}"
  while ((${#todo[@]} > 0)); do
    p=${todo[-1]}
    unset 'todo[-1]'
    out+=("$p:${starts[$p]}")
    local -a more
    read -r -a more <<<"${kids[$p]:-}"
    todo+=("${more[@]}")
  done
  echo "${out[*]}"
}

# Stop a verified service (PID at START, a session and group leader since setsid): SIGTERM
# its group, wait for it, then SIGKILL what is left of the descendants seen before, each only
# if it is still the process seen then (same PID, same start time).
stop_tree() {
  local name=$1 pid=$2 start=$3 grace=$4 tree entry p s
  tree=$(descendants "$pid")
  alive "$pid" "$start" || return 0
  log "stopping $name (pid $pid, $(($(wc -w <<<"$tree") + 1)) processes)"
  if [[ ${STAT[2]} == "$pid" ]]; then
    kill -TERM -- "-$pid" 2>/dev/null || true
  else
    kill -TERM "$pid" 2>/dev/null || true
  fi
  local t0=$SECONDS
  while alive "$pid" "$start" && ((SECONDS - t0 < grace)); do sleep 0.5; done
  sleep 1
  for entry in $pid:$start $tree; do
    p=${entry%%:*}
    s=${entry#*:}
    if [[ -z ${ANCESTORS[$p]:-} ]] && alive "$p" "$s"; then
      log "killing leftover pid $p"
      kill -KILL "$p" 2>/dev/null || true
    fi
  done
}

# ---------------------------------------------------------------------------------------------
# The services
# ---------------------------------------------------------------------------------------------
# N distinct free TCP ports on 127.0.0.1 (held open together so that they differ).
free_ports() {
  "$PY" - "$1" <<'PYEOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PYEOF
}

secret() { "$PY" -c 'import secrets; print(secrets.token_hex(int(__import__("sys").argv[1])))' "$1"; }

pg_bin() {
  local d
  d=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1 || true)
  [[ -n $d && -x $d/pg_ctl ]] && echo "$d"
}

# PostgreSQL refuses to run as root: as root, run its tools as the postgres user.
as_pg() {
  if [[ $ME -eq 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

ensure_postgres() {
  if [[ -z $(pg_bin) ]]; then
    [[ $ME -eq 0 ]] || die "PostgreSQL is not installed and this is not root: apt-get install postgresql"
    log "installing Debian's postgresql"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq postgresql >/dev/null
  fi
  [[ -n $(pg_bin) ]] || die "no pg_ctl under /usr/lib/postgresql/*/bin after installing postgresql"
}

# MLflow on PostgreSQL needs psycopg2; `ray job submit` needs the dashboard's jobs API, which
# is in ray[default], not in ray[tune]. Install what is missing, at the installed versions.
ensure_python_deps() {
  if ! "$PY" -c 'import psycopg2' 2>/dev/null; then
    log "installing psycopg2-binary into $PY (the project's cluster extra)"
    "$PY" -m pip install -q 'psycopg2-binary>=2.9'
  fi
  # MLflow's basic-auth app needs Flask-WTF (mlflow[auth], in the cluster extra too).
  if ! "$PY" -c 'import flask_wtf' 2>/dev/null; then
    local m
    m=$("$PY" -c 'import mlflow; print(mlflow.__version__)')
    log "installing mlflow[auth]==$m into $PY (MLflow's basic-auth app)"
    "$PY" -m pip install -q "mlflow[auth]==$m"
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

# Ray nodes alive, asked with the token from the environment (never on a command line).
alive_nodes() {
  "$PY" - "$STADV_RAY_DASHBOARD" <<'PYEOF'
import json, os, sys, urllib.request
req = urllib.request.Request(
    sys.argv[1] + "/nodes?view=summary",
    headers={"Authorization": "Bearer " + os.environ["RAY_AUTH_TOKEN"]},
)
with urllib.request.urlopen(req, timeout=10) as resp:
    summary = json.load(resp)["data"]["summary"]
print(sum(1 for n in summary if n["raylet"]["state"] == "ALIVE"))
PYEOF
}
has_nodes() { [[ $(alive_nodes) -ge $1 ]]; }
has_at_most_nodes() { [[ $(alive_nodes) -le $1 ]]; }

# MLflow's sweep user (not an admin: it may create experiments and manages those it creates),
# created with the admin's credentials, which stay out of the Ray nodes' environment.
create_mlflow_user() {
  local user=$MLFLOW_TRACKING_USERNAME password=$MLFLOW_TRACKING_PASSWORD
  MLFLOW_TRACKING_USERNAME=$STADV_MLFLOW_ADMIN_USERNAME \
    MLFLOW_TRACKING_PASSWORD=$STADV_MLFLOW_ADMIN_PASSWORD \
    STADV_NEW_USER=$user STADV_NEW_PASSWORD=$password \
    "$PY" - "$STADV_MLFLOW_URI" <<'PYEOF'
import os, sys
from mlflow.server.auth.client import AuthServiceClient
AuthServiceClient(sys.argv[1]).create_user(os.environ["STADV_NEW_USER"], os.environ["STADV_NEW_PASSWORD"])
PYEOF
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
  record_pid ray-worker "$STADV_RAY_WORKER_PID" "$BIN/ray"
  write_env
}

cmd_worker_start() {
  use_state existing
  load_env
  if verify_record ray-worker; then
    log "worker node already running (pid $VPID)"
    return 0
  fi
  ((REFUSED == 0)) || die "the worker node's record names a process this script did not start"
  # A killed worker stays ALIVE in the GCS until its health checks fail (~15 s).
  wait_for 60 "" "removal of the dead worker node" "$LOGS/ray-head.log" has_at_most_nodes 1
  launch_worker
  wait_for 120 "$STADV_RAY_WORKER_PID" "Ray worker node" "$LOGS/ray-worker.log" has_nodes 2
  log "Ray worker node up (pid $STADV_RAY_WORKER_PID), $(alive_nodes) nodes alive"
}

cmd_worker_stop() {
  use_state existing
  load_env
  if verify_record ray-worker; then
    stop_tree "Ray worker node" "$VPID" "$VSTART" 30
  fi
  ((REFUSED == 0)) || die "the worker node's record names a process this script did not start"
  rm -f "$PIDS/ray-worker"
  STADV_RAY_WORKER_PID=
  write_env
  if verify_record ray-head; then
    wait_for 60 "" "removal of the worker node" "$LOGS/ray-head.log" has_at_most_nodes 1
  fi
  log "Ray worker node stopped; $(alive_nodes) node alive"
}

cmd_start() {
  local t0=$SECONDS
  use_state create
  # Only what is recorded, and only if proven ours (see `stop`); then a clean slate.
  if [[ -e $PIDS || -e $ENV_FILE ]]; then
    stop_services
    ((REFUSED == 0)) || die "$STATE records processes this script did not start; not starting"
  fi
  rm -rf "$PIDS" "$LOGS" "$STATE/rh" "$STATE/rw" "$STATE/shared" "$STATE/mlartifacts" \
    "$STATE/pg" "$STATE/mlflow-auth.ini" "$STATE/mlflow-auth.db" "$ENV_FILE"
  mkdir -p "$PIDS" "$LOGS"
  trap 'log "start failed: stopping what was started"; stop_services' EXIT
  ensure_postgres
  ensure_python_deps
  local pgbin
  pgbin=$(pg_bin)

  STADV_CLUSTER_STATE=$STATE
  STADV_CLUSTER_PYTHON=$PY
  STADV_SHARED_DIR=$STATE/shared # Tune storage, model store, data: one path on every node
  mkdir -p "$STADV_SHARED_DIR"
  local pg_pass flask_key
  pg_pass=$(secret 16)
  flask_key=$(secret 32)
  RAY_AUTH_MODE=token
  RAY_AUTH_TOKEN=$(secret 32)
  STADV_MLFLOW_ADMIN_USERNAME='admin'
  STADV_MLFLOW_ADMIN_PASSWORD=$(secret 16)
  MLFLOW_TRACKING_USERNAME=stadv
  MLFLOW_TRACKING_PASSWORD=$(secret 16)
  export RAY_AUTH_MODE RAY_AUTH_TOKEN MLFLOW_TRACKING_USERNAME MLFLOW_TRACKING_PASSWORD
  write_env

  # --- Ray head first (it is independent of the rest): 1 CPU, dashboard + jobs API on
  # 127.0.0.1, its own temp dir and dashboard agent port. Jobs and trials log to MLflow as the
  # sweep user: the nodes' environment carries its credentials.
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
  record_pid ray-head "$STADV_RAY_HEAD_PID" "$BIN/ray"
  write_env

  # --- PostgreSQL: a throw-away cluster, TCP on 127.0.0.1 only, password auth. As root it
  # runs as the postgres user, which cannot enter the private state folder: its folder is a
  # private one of its own.
  if [[ $ME -eq 0 ]]; then
    STADV_PG_RUN=$(mktemp -d -t stadv-pg.XXXXXX)
    chown postgres: "$STADV_PG_RUN"
  else
    STADV_PG_RUN=$STATE/pg
    mkdir -m 700 "$STADV_PG_RUN"
  fi
  STADV_PG_DATA=$STADV_PG_RUN/data
  write_env
  printf '%s\n' "$pg_pass" >"$STADV_PG_RUN/pwfile"
  [[ $ME -ne 0 ]] || chown postgres: "$STADV_PG_RUN/pwfile"
  as_pg "$pgbin/initdb" -D "$STADV_PG_DATA" -U stadv --pwfile="$STADV_PG_RUN/pwfile" \
    --auth-host=scram-sha-256 --auth-local=scram-sha-256 -E UTF8 --locale=C.UTF-8 \
    >"$LOGS/initdb.log" 2>&1 || { cat "$LOGS/initdb.log" >&2; die "initdb failed"; }
  rm -f "$STADV_PG_RUN/pwfile"
  STADV_PG_PORT=$(free_ports 1)
  as_pg "$pgbin/pg_ctl" -D "$STADV_PG_DATA" -l "$STADV_PG_RUN/postgres.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $STADV_PG_PORT -c unix_socket_directories=''" start \
    >"$LOGS/pg_ctl.log" 2>&1 || { cat "$STADV_PG_RUN/postgres.log" >&2; die "PostgreSQL did not start"; }
  STADV_PG_PID=$(head -n 1 "$STADV_PG_DATA/postmaster.pid")
  # pg_ctl has exited, so the postmaster is no child of ours: prove it by its data directory.
  [[ $(tr '\0' ' ' <"/proc/$STADV_PG_PID/cmdline") == *"$STADV_PG_DATA"* ]] ||
    die "pid $STADV_PG_PID from postmaster.pid is not the postmaster of $STADV_PG_DATA"
  write_record postgres "$STADV_PG_PID"
  PGPASSWORD=$pg_pass "$pgbin/psql" -h 127.0.0.1 -p "$STADV_PG_PORT" -U stadv -d postgres \
    -v ON_ERROR_STOP=1 -q -c 'CREATE DATABASE mlflow' >/dev/null
  # SQLAlchemy 2.1 maps a plain postgresql:// to psycopg 3; the project ships psycopg2.
  STADV_PG_URI=postgresql+psycopg2://stadv:$pg_pass@127.0.0.1:$STADV_PG_PORT/mlflow
  write_env
  log "PostgreSQL up on 127.0.0.1:$STADV_PG_PORT (pid $STADV_PG_PID) after $((SECONDS - t0)) s"

  # --- MLflow tracking server on PostgreSQL, serving artifacts from a local folder, behind
  # MLflow's basic-auth app (users in a SQLite file; the admin is created at first start).
  # The backend URI (it holds the password) and the admin password go in the environment.
  # --allowed-hosts replaces MLflow's defaults: list every Host header clients send.
  local mlflow_port
  mlflow_port=$(free_ports 1)
  STADV_MLFLOW_URI=http://127.0.0.1:$mlflow_port
  STADV_MLFLOW_ARTIFACTS=$STATE/mlartifacts
  mkdir -p "$STADV_MLFLOW_ARTIFACTS"
  printf '[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///%s\n%s\n' \
    "$STATE/mlflow-auth.db" \
    'authorization_function = mlflow.server.auth:authenticate_request_basic_auth' \
    >"$STATE/mlflow-auth.ini"
  # MLflow's job runner (GenAI jobs: seven huey consumer processes) is not needed here.
  MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false \
    MLFLOW_BACKEND_STORE_URI=$STADV_PG_URI \
    MLFLOW_AUTH_CONFIG_PATH=$STATE/mlflow-auth.ini \
    MLFLOW_AUTH_ADMIN_USERNAME=$STADV_MLFLOW_ADMIN_USERNAME \
    MLFLOW_AUTH_ADMIN_PASSWORD=$STADV_MLFLOW_ADMIN_PASSWORD \
    MLFLOW_FLASK_SERVER_SECRET_KEY=$flask_key \
    setsid "$PY" -m mlflow server --app-name basic-auth \
    --artifacts-destination "$STADV_MLFLOW_ARTIFACTS" \
    --host 127.0.0.1 --port "$mlflow_port" --workers 2 \
    --allowed-hosts "127.0.0.1,127.0.0.1:$mlflow_port,localhost,localhost:$mlflow_port" \
    </dev/null >"$LOGS/mlflow.log" 2>&1 &
  STADV_MLFLOW_PID=$!
  record_pid mlflow "$STADV_MLFLOW_PID" "mlflow server"
  write_env

  wait_for 180 "$STADV_RAY_HEAD_PID" "Ray head" "$LOGS/ray-head.log" has_nodes 1
  log "Ray head up, jobs API at $STADV_RAY_DASHBOARD (pid $STADV_RAY_HEAD_PID) after $((SECONDS - t0)) s"
  # --- One extra worker node on this host.
  launch_worker
  wait_for 180 "$STADV_MLFLOW_PID" "MLflow server" "$LOGS/mlflow.log" \
    curl -fsS "$STADV_MLFLOW_URI/health"
  create_mlflow_user >>"$LOGS/mlflow-user.log" 2>&1 ||
    { cat "$LOGS/mlflow-user.log" >&2; die "could not create MLflow user $MLFLOW_TRACKING_USERNAME"; }
  log "MLflow up at $STADV_MLFLOW_URI (pid $STADV_MLFLOW_PID, basic auth) after $((SECONDS - t0)) s"
  wait_for 120 "$STADV_RAY_WORKER_PID" "Ray worker node" "$LOGS/ray-worker.log" has_nodes 2
  log "Ray worker node up (pid $STADV_RAY_WORKER_PID) after $((SECONDS - t0)) s"
  trap - EXIT
  log "cluster up in $((SECONDS - t0)) s; state in $STATE (STADV_CLUSTER_STATE=$STATE '$0 env')"
}

# Stop what $PIDS records, each only if proven ours; REFUSED counts the refusals.
stop_services() {
  if [[ ! -d $PIDS ]]; then
    log "nothing to stop (no $PIDS)"
    return 0
  fi
  if [[ -e $ENV_FILE ]]; then load_env; fi
  local name
  # The Ray nodes and MLflow stop side by side; PostgreSQL, which MLflow uses, last.
  for name in ray-worker ray-head mlflow; do
    if verify_record "$name"; then
      stop_tree "$name" "$VPID" "$VSTART" 30 &
    fi
  done
  wait
  if verify_record postgres; then
    local pid=$VPID start=$VSTART
    if [[ -n ${STADV_PG_DATA:-} && -n $(pg_bin) ]]; then
      log "stopping PostgreSQL (pid $pid)"
      as_pg "$(pg_bin)/pg_ctl" -D "$STADV_PG_DATA" -m fast -w -t 30 stop \
        >"$LOGS/pg_ctl-stop.log" 2>&1 || log "pg_ctl stop failed: $(tail -n 1 "$LOGS/pg_ctl-stop.log")"
    fi
    stop_tree PostgreSQL "$pid" "$start" 10
  fi
  # The postgres user's folder outside the state folder: only the one this state names.
  if [[ -n ${STADV_PG_RUN:-} && $STADV_PG_RUN != "$STATE"/* && -d $STADV_PG_RUN &&
    ! -L $STADV_PG_RUN && ${STADV_PG_RUN##*/} == stadv-pg.* ]]; then
    if ! verify_record postgres >/dev/null 2>&1; then
      cp "$STADV_PG_RUN/postgres.log" "$LOGS/" 2>/dev/null || true
      rm -rf "$STADV_PG_RUN"
    fi
  fi
  rm -rf "$PIDS" "$ENV_FILE"
}

cmd_stop() {
  use_state existing
  stop_services
  if ((REFUSED > 0)); then
    log "refused to signal $REFUSED recorded process(es): not proven to be ones this script started"
    exit 1
  fi
  log "stopped; logs stay in $STATE"
}

# Start the services, run one command against them, stop them whatever happens: the services
# live only as long as the command (README's test command runs the cluster tests this way).
cmd_run() {
  (($# > 0)) || die "usage: $0 run CMD [ARGS...]"
  local child='' status=0
  # A signal ends this script through the EXIT trap, which stops the services (and, once
  # CMD runs, CMD first).
  trap 'exit 129' HUP
  trap 'exit 130' INT
  trap 'exit 143' TERM
  cmd_start
  trap 'status=$?; [[ -z $child ]] || kill -TERM "$child" 2>/dev/null || true; stop_services; finish_run "$status"' EXIT
  # In the background, so that a signal to this script is handled at once, not after CMD.
  STADV_CLUSTER_STATE=$STATE "$@" &
  child=$!
  wait "$child" || status=$?
  child=
  log "$1 exited with status $status"
  exit "$status"
}

# A state folder `run` created itself goes when CMD succeeded; otherwise it stays for the logs.
finish_run() {
  if [[ $1 -eq 0 && -n $CREATED_STATE && $REFUSED -eq 0 ]]; then
    rm -rf "$CREATED_STATE"
  else
    log "logs in $STATE"
  fi
  exit "$1"
}

find_ancestors
case ${1:-} in
  start) cmd_start ;;
  stop) cmd_stop ;;
  env)
    use_state existing
    load_env
    cat "$ENV_FILE"
    ;;
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
