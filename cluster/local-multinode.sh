#!/usr/bin/env bash
# Start a multi-node Ray 2.60.0 cluster on this one machine, for laptops and CI boxes.
#
# A head node plus NUM_WORKER_NODES worker nodes, each its own raylet with its own logical CPUs and a
# custom resource, so the multi-node code paths (placement across nodes, counting nodes by Ray node
# id) run without a second machine. Token authentication is on (RAY_AUTH_MODE=token) and every
# address given to Ray is the loopback address; the dashboard and job server listen on 127.0.0.1.
#
# Usage:
#   cluster/local-multinode.sh [start]   start the head and the worker nodes, wait until all joined
#   cluster/local-multinode.sh status    `ray status` of the running local cluster
#   cluster/local-multinode.sh stop      stop the nodes this script started, and nothing else
#
# Each node runs as `ray start --block` in the background; the script keeps their pids in
# RAY_LOCAL_STATE_DIR. `stop` sends SIGTERM to those (worker nodes first, then the head; on SIGTERM
# `ray start --block` stops its node's processes) and SIGKILL to any still there after
# RAY_STOP_TIMEOUT_S. It never runs `ray stop`, which would end every Ray process of this user on the
# machine, another study's embedded Ray included.
#
# Settings (environment variables, default in brackets):
#   NUM_WORKER_NODES [2]      worker nodes besides the head
#   HEAD_NUM_CPUS [2]         logical CPUs of the head node
#   WORKER_NUM_CPUS [2]       logical CPUs of each worker node
#   WORKER_RESOURCES ['{"MOCK_GPU": 1}']  custom resources of each worker node, JSON ('' for none)
#   RAY_PORT [6379]           GCS port of the head
#   RAY_DASHBOARD_PORT [8265] dashboard / job-submission port (bound to 127.0.0.1)
#   RAY_AGENT_PORT_BASE [52365]  worker node i's dashboard agent listens on base + i (they share a host)
#   RAY_AUTH_TOKEN_PATH [~/.ray/auth_token]  the token file; created (mode 600) when missing
#   RAY_JOIN_TIMEOUT_S [120]  how long to wait for all nodes to join before giving up
#   RAY_POLL_INTERVAL_S [2]   seconds between two checks of the node count
#   RAY_STOP_TIMEOUT_S [30]   how long a node may take to stop after SIGTERM before it is killed
#   RAY_LOCAL_STATE_DIR [~/.ray/local-multinode-RAY_PORT]  pids and logs of the nodes started here
#   RAY_BIN [ray]             the ray executable
#
# Ray pin: ray[train,tune]==2.60.0 (pyproject.toml); the script refuses any other ray version.
#
# Caveat (Ray 2.60 on Linux): `ray start` replaces a loopback --node-ip-address with the host's
# routable address and the GCS and raylet listen on every interface. Token authentication is what
# keeps other machines out; add a host firewall rule if the machine sits on an untrusted network.
set -euo pipefail

readonly RAY_PIN="2.60.0"

NUM_WORKER_NODES="${NUM_WORKER_NODES:-2}"
HEAD_NUM_CPUS="${HEAD_NUM_CPUS:-2}"
WORKER_NUM_CPUS="${WORKER_NUM_CPUS:-2}"
DEFAULT_WORKER_RESOURCES='{"MOCK_GPU": 1}'
WORKER_RESOURCES="${WORKER_RESOURCES-$DEFAULT_WORKER_RESOURCES}"
RAY_PORT="${RAY_PORT:-6379}"
RAY_DASHBOARD_PORT="${RAY_DASHBOARD_PORT:-8265}"
RAY_AGENT_PORT_BASE="${RAY_AGENT_PORT_BASE:-52365}"
RAY_JOIN_TIMEOUT_S="${RAY_JOIN_TIMEOUT_S:-120}"
RAY_POLL_INTERVAL_S="${RAY_POLL_INTERVAL_S:-2}"
RAY_STOP_TIMEOUT_S="${RAY_STOP_TIMEOUT_S:-30}"
RAY_BIN="${RAY_BIN:-ray}"
RAY_LOCAL_STATE_DIR="${RAY_LOCAL_STATE_DIR:-$HOME/.ray/local-multinode-${RAY_PORT}}"
readonly PID_FILE="${RAY_LOCAL_STATE_DIR}/pids"

readonly LOOPBACK="127.0.0.1"
readonly GCS_ADDRESS="${LOOPBACK}:${RAY_PORT}"

die() {
    echo "local-multinode: ERROR: $*" >&2
    exit 1
}

require_int() {  # name value
    [[ "$2" =~ ^[0-9]+$ ]] || die "$1 must be a non-negative integer, got '$2'"
}

check_ray_version() {
    local fix="pip install 'ray[default,train,tune]==${RAY_PIN}'"
    command -v "$RAY_BIN" >/dev/null 2>&1 || die "'$RAY_BIN' not found; $fix"
    local version
    version="$("$RAY_BIN" --version 2>/dev/null | awk '{print $NF}')"
    [[ "$version" == "$RAY_PIN" ]] || die "ray ${version:-?} found, tinyfold-ray pins ray==${RAY_PIN}; $fix"
}

# Token authentication: one token file, readable by this user only, shared by every node and client.
auth_env() {
    export RAY_AUTH_MODE=token
    export RAY_AUTH_TOKEN_PATH="${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}"
}

setup_auth() {
    auth_env
    if [[ ! -s "$RAY_AUTH_TOKEN_PATH" ]]; then
        (
            umask 077
            mkdir -p "$(dirname "$RAY_AUTH_TOKEN_PATH")"
            # 256 random bits, hex encoded (the same strength `ray get-auth-token --generate` uses).
            od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$RAY_AUTH_TOKEN_PATH"
        )
        echo "local-multinode: generated a new token in $RAY_AUTH_TOKEN_PATH"
    fi
    if [[ -n "$(find "$RAY_AUTH_TOKEN_PATH" -perm /077 2>/dev/null)" ]]; then
        echo "local-multinode: WARNING: $RAY_AUTH_TOKEN_PATH is readable by others; chmod 600 it" >&2
    fi
}

# Number of alive nodes: the counts listed under "Active:" in `ray status` (0 when unreachable).
count_alive_nodes() {
    { "$RAY_BIN" status --address "$GCS_ADDRESS" 2>/dev/null || true; } | awk '
        /^Active:/ { active = 1; next }
        /^[A-Za-z]/ { active = 0 }
        active && $1 ~ /^[0-9]+$/ { n += $1 }
        END { print n + 0 }'
}

wait_for_nodes() {  # expected
    local expected="$1" alive=0 start=$SECONDS
    while :; do
        alive="$(count_alive_nodes)"
        if ((alive >= expected)); then
            return 0
        fi
        if ((SECONDS - start >= RAY_JOIN_TIMEOUT_S)); then
            echo "local-multinode: ERROR: only ${alive} of ${expected} Ray nodes joined within" \
                "${RAY_JOIN_TIMEOUT_S} s; see ${RAY_LOCAL_STATE_DIR}/*.log and /tmp/ray/session_latest/logs" >&2
            return 1
        fi
        sleep "$RAY_POLL_INTERVAL_S"
    done
}

# Whether process `pid` runs. A node outlives the `start` that launched it, so its parent is then the
# init process; one that ended stays a zombie until init reaps it, which in a container without an init
# (PID 1 a plain program) can be never. `kill -0` succeeds on a zombie: read its state where /proc is.
running() {  # pid
    kill -0 "$1" 2>/dev/null || return 1
    local stat
    { read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 0
    stat="${stat##*) }"
    [[ "${stat%% *}" != Z ]]
}

# The pids of the nodes this script started that still run (head first), one per line.
live_pids() {
    [[ -f "$PID_FILE" ]] || return 0
    local pid
    while read -r pid; do
        [[ "$pid" =~ ^[0-9]+$ ]] && running "$pid" && echo "$pid"
    done <"$PID_FILE"
}

start_node() {  # name, then the arguments of `ray start`
    local name="$1"
    shift
    # --block keeps the node under this pid, so that `stop` can end exactly this node. Its output goes
    # to a log file: the script must not hold its caller's terminal or pipes open.
    nohup "$RAY_BIN" start "$@" --block >"${RAY_LOCAL_STATE_DIR}/${name}.log" 2>&1 &
    echo "$!" >>"$PID_FILE"
}

stop_nodes() {  # SIGTERM each node started here, worker nodes first; SIGKILL what outlives the timeout
    local -a pids=()
    mapfile -t pids < <(live_pids)
    if ((${#pids[@]} == 0)); then
        echo "local-multinode: no node started by this script is running"
        rm -f "$PID_FILE"
        return 0
    fi
    local i pid deadline
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        pid="${pids[$i]}"
        echo "local-multinode: stopping node pid ${pid}"
        kill -TERM "$pid" 2>/dev/null || true
        deadline=$((SECONDS + RAY_STOP_TIMEOUT_S))
        while running "$pid" && ((SECONDS < deadline)); do
            sleep 0.2
        done
        kill -KILL "$pid" 2>/dev/null || true
    done
    rm -f "$PID_FILE"
}

start_cluster() {
    require_int NUM_WORKER_NODES "$NUM_WORKER_NODES"
    require_int RAY_JOIN_TIMEOUT_S "$RAY_JOIN_TIMEOUT_S"
    require_int RAY_STOP_TIMEOUT_S "$RAY_STOP_TIMEOUT_S"
    check_ray_version
    mkdir -p "$RAY_LOCAL_STATE_DIR"
    if [[ -n "$(live_pids)" ]]; then
        die "nodes started by this script still run (pids in ${PID_FILE}); run '$0 stop' first"
    fi
    : >"$PID_FILE"
    setup_auth

    echo "local-multinode: starting the head node on ${GCS_ADDRESS}"
    start_node head --head \
        --node-ip-address="$LOOPBACK" \
        --port="$RAY_PORT" \
        --dashboard-host="$LOOPBACK" \
        --dashboard-port="$RAY_DASHBOARD_PORT" \
        --num-cpus="$HEAD_NUM_CPUS" \
        --num-gpus=0 \
        --disable-usage-stats
    if ! wait_for_nodes 1; then
        stop_nodes
        exit 1
    fi

    local i
    local -a resources=()
    [[ -n "$WORKER_RESOURCES" ]] && resources=(--resources="$WORKER_RESOURCES")
    for ((i = 1; i <= NUM_WORKER_NODES; i++)); do
        echo "local-multinode: starting worker node ${i}/${NUM_WORKER_NODES}"
        # Nodes on one host share it: each dashboard agent needs its own HTTP port, and one log
        # monitor (the head's) per host is enough, or every log line reaches the driver twice.
        start_node "worker-${i}" \
            --address="$GCS_ADDRESS" \
            --node-ip-address="$LOOPBACK" \
            --num-cpus="$WORKER_NUM_CPUS" \
            --num-gpus=0 \
            "${resources[@]}" \
            --dashboard-agent-listen-port="$((RAY_AGENT_PORT_BASE + i))" \
            --include-log-monitor=False \
            --disable-usage-stats
    done

    local expected=$((NUM_WORKER_NODES + 1))
    if ! wait_for_nodes "$expected"; then
        stop_nodes
        exit 1
    fi

    cat <<EOF

Ray ${RAY_PIN} is up on this machine: 1 head + ${NUM_WORKER_NODES} worker nodes (${expected} nodes).
In every shell that talks to it:
  export RAY_AUTH_MODE=token
  export RAY_AUTH_TOKEN_PATH=${RAY_AUTH_TOKEN_PATH}
  export RAY_ADDRESS=${GCS_ADDRESS}
Run a study on it (the study joins the cluster named by RAY_ADDRESS):
  python -m tinyfold_ray.study studies/multinode.yaml
Or submit it as a job (the job server needs tinyfold-ray[cluster], i.e. ray[default]):
  ray job submit --address http://${LOOPBACK}:${RAY_DASHBOARD_PORT} --working-dir . -- \\
      python -m tinyfold_ray.study studies/multinode.yaml
Dashboard: http://${LOOPBACK}:${RAY_DASHBOARD_PORT} (it asks for the token in ${RAY_AUTH_TOKEN_PATH})
Stop: cluster/local-multinode.sh stop
EOF
}

main() {
    local command="${1:-start}"
    case "$command" in
        start) start_cluster ;;
        stop) stop_nodes ;;
        status)
            auth_env
            "$RAY_BIN" status --address "$GCS_ADDRESS"
            ;;
        -h | --help | help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' ;;
        *) die "unknown command '$command' (start, status, stop)" ;;
    esac
}

main "$@"
