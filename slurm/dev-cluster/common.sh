# Shared paths and helpers for start.sh and stop.sh (sourced, not executed).
# All state of one dev cluster lives under $STATE: configs, keys, sockets, logs, databases.

STATE="${CTSL_SLURM_STATE:-/tmp/ctsl-slurm}"
mkdir -p "$STATE"
STATE="$(cd "$STATE" && pwd -P)"

ETC="$STATE/etc"
LOG="$STATE/log"
RUN="$STATE/run"
MUNGE_DIR="$STATE/munge"
MUNGE_SOCKET="$MUNGE_DIR/run/munge.socket.2"
DB_DIR="$STATE/mariadb"
DB_SOCKET="$RUN/mariadb.sock"
SLURM_CONF="$ETC/slurm.conf"
export SLURM_CONF

# slurmd_pidfile NODE: the pid file of that node's slurmd (SlurmdPidFile=$RUN/slurmd-%n.pid).
slurmd_pidfile() { echo "$RUN/slurmd-$1.pid"; }

log() { printf 'ctsl-slurm: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# pid_alive PIDFILE NAME: true when the pid in PIDFILE runs a program called NAME.
pid_alive() {
    local pid
    [ -s "$1" ] || return 1
    pid="$(tr -dc '0-9' < "$1" 2>/dev/null)" || return 1
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] || return 1
    case "$(cat "/proc/$pid/comm")" in "$2"*) return 0 ;; *) return 1 ;; esac
}

# port_in_use PORT: true when something accepts TCP connections on 127.0.0.1:PORT.
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_until SECONDS CMD...: poll CMD every 0.1 s until it succeeds (0) or SECONDS pass (1).
wait_until() {
    local deadline=$(( SECONDS + $1 ))
    shift
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -ge "$deadline" ] && return 1
        sleep 0.1
    done
}

# pid_gone PID: true when the process has exited (a zombie counts as exited).
pid_gone() { [ ! -e "/proc/$1" ] || grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }

# stop_pidfile PIDFILE NAME SECONDS: SIGTERM the daemon and wait for it to exit (SIGKILL after).
stop_pidfile() {
    local pid
    pid_alive "$1" "$2" || { rm -f "$1"; return 0; }
    pid="$(tr -dc '0-9' < "$1" 2>/dev/null)" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_until "$3" pid_gone "$pid"; then
        log "$2 (pid $pid) ignored SIGTERM for $3 s, killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$1"
}
