#!/usr/bin/env bash
# Bring up a Slurm with real accounting on this machine (no systemd), all state under
# $CTSL_SLURM_STATE (default /tmp/ctsl-slurm). Prints `export ...` lines: eval "$(start.sh)".
# Idempotent: when everything is already up it only prints the same lines again.
#
#   start.sh              one compute node: this host, at 127.0.0.1
#   start.sh --nodes N    N compute nodes node1..nodeN, each a separate host: its own network
#                         namespace (a veth into a private bridge this script creates), hostname
#                         and /etc/hosts; the host filesystem is their shared filesystem
#
# Knobs (read when the cluster is (re)started from a stopped state):
#   CTSL_SLURM_STATE      state folder                         (/tmp/ctsl-slurm)
#   CTSL_SLURM_PORT       slurmctld port; slurmd +1, slurmdbd +2 (6817)
#   CTSL_SLURM_MAX_ARRAY  MaxArraySize                          (16)
#   CTSL_SLURM_GPUS       fake GPUs (gres gpu) on each node     (2)
set -euo pipefail
# munged refuses a group-writable log or key: the caller's umask (a sweep's `umask: 007`, applied
# in-process by its jobs) must not reach the files made here
umask 022
T0="$EPOCHREALTIME"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
# shellcheck source=common.sh
. "$HERE/common.sh"
# shellcheck source=nodes.sh
. "$HERE/nodes.sh"

NODES=1
while [ $# -gt 0 ]; do
    case "$1" in
        --nodes) NODES="${2:-}"; shift 2 || die "--nodes needs a number" ;;
        --nodes=*) NODES="${1#--nodes=}"; shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) die "unknown argument $1 (start.sh [--nodes N])" ;;
    esac
done
[[ "$NODES" =~ ^[1-9][0-9]*$ ]] && [ "$NODES" -le 64 ] || die "--nodes must be a number from 1 to 64, got '$NODES'"

CLUSTER=ctsl
HOST="$(hostname -s)"
PACKAGES=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server)
if [ "$NODES" = 1 ]; then
    NODE_NAMES=("$HOST")
else
    mapfile -t NODE_NAMES < <(node_names "$NODES")
fi

print_env() {
    printf 'export SLURM_CONF=%q\n' "$SLURM_CONF"
    printf 'export CTSL_SLURM_STATE=%q\n' "$STATE"
}

# daemon name -> pid file
declare -A PIDFILE=(
    [munged]="$MUNGE_DIR/munged.pid" [mariadbd]="$RUN/mariadb.pid" [slurmdbd]="$RUN/slurmdbd.pid"
    [slurmctld]="$RUN/slurmctld.pid"
)
DAEMONS=(munged mariadbd slurmdbd slurmctld)
up() { pid_alive "${PIDFILE[$1]}" "$1"; }
slurmd_up() { pid_alive "$(slurmd_pidfile "$1")" slurmd; }
all_up() {
    local d n
    for d in "${DAEMONS[@]}"; do up "$d" || return 1; done
    for n in "${NODE_NAMES[@]}"; do slurmd_up "$n" || return 1; done
}
any_up() {
    local d n
    for d in "${DAEMONS[@]}"; do up "$d" && return 0; done
    for n in "${NODE_NAMES[@]}"; do slurmd_up "$n" && return 0; done
    return 1
}

install_packages() {
    local missing=() p added_policy=0
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    log "installing ${missing[*]} (log: $LOG/apt.log)"
    # Keep package scripts from starting system-wide daemons (we run our own instances).
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
        added_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    local apt=(apt-get install -y --no-install-recommends "${missing[@]}")
    if ! "${apt[@]}" >>"$LOG/apt.log" 2>&1; then
        log "install failed, running apt-get update first"
        apt-get update >>"$LOG/apt.log" 2>&1 && "${apt[@]}" >>"$LOG/apt.log" 2>&1 \
            || { [ "$added_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d; die "apt-get failed, see $LOG/apt.log"; }
    fi
    [ "$added_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
    return 0
}

# pick_db_port: a free port for MariaDB, below the ephemeral range (where outgoing connections
# could take it between the check and the bind), stable per state folder when possible.
pick_db_port() {
    local low span port
    low="$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)"
    span=$(( low > 12000 ? low - 10000 : 2000 ))
    port=$(( 10000 + $(printf '%s' "$STATE" | cksum | cut -d' ' -f1) % span ))
    while port_in_use "$port"; do port=$(( port + 1 )); done
    echo "$port"
}

write_configs() {
    local ctld_port="${CTSL_SLURM_PORT:-6817}" max_array="${CTSL_SLURM_MAX_ARRAY:-16}"
    local gpus="${CTSL_SLURM_GPUS:-2}" cpus mem_mb db_pass db_port p i
    for p in "$ctld_port" $(( ctld_port + 1 )) $(( ctld_port + 2 )); do
        port_in_use "$p" && die "port $p on 127.0.0.1 is in use (another Slurm? stop it or set CTSL_SLURM_PORT)"
    done
    cpus="$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)"  # the CPUs this process may use (nproc alone honours OMP_NUM_THREADS)
    mem_mb=$(( $(awk '/^MemAvailable:/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
    [ "$mem_mb" -ge 1000 ] || mem_mb=1000
    [ -s "$ETC/db.pass" ] || (umask 077; head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' > "$ETC/db.pass")
    db_pass="$(cat "$ETC/db.pass")"
    db_port="$(pick_db_port)"
    echo "$db_port" > "$ETC/db.port"

    local node_gres="" ctld_addr=127.0.0.1 node_lines="" node_set="$HOST" node_mem return_to_service=2
    [ "$gpus" -gt 0 ] && node_gres="Gres=gpu:$gpus"
    mkdir -p "$STATE/dev"
    for (( i = 0; i < gpus; i++ )); do ln -sfn /dev/null "$STATE/dev/nvidia$i"; done
    if [ "$NODES" = 1 ]; then
        node_lines="NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb $node_gres State=UNKNOWN"
    else
        # Every node offers this machine's CPUs (they are shared) and a share of its memory.
        ctld_addr="$(bridge_addr)"
        node_set="node[1-$NODES]"
        node_mem=$(( mem_mb / NODES ))
        [ "$node_mem" -ge 1000 ] || node_mem=1000
        for (( i = 1; i <= NODES; i++ )); do
            node_lines+="NodeName=node$i NodeHostname=node$i NodeAddr=$(node_addr "node$i") CPUs=$cpus RealMemory=$node_mem $node_gres State=UNKNOWN"$'\n'
        done
        node_lines+="SlurmdTimeout=10"  # a node that stops answering is DOWN after 10 s (default 300)
        return_to_service=1  # a node an admin set DOWN stays down until `scontrol update ... state=resume`
    fi
    echo "$NODES" > "$ETC/nodes"

    cat > "$SLURM_CONF" <<EOF
# Generated by slurm/dev-cluster/start.sh for $STATE ($NODES node(s))
ClusterName=$CLUSTER
SlurmctldHost=$HOST($ctld_addr)
SlurmctldPort=$ctld_port
SlurmdPort=$(( ctld_port + 1 ))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=10
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd/%n
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=1000
MailProg=/bin/true
ReturnToService=$return_to_service
SlurmdParameters=config_overrides
MaxArraySize=$max_array
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$ctld_addr
AccountingStoragePort=$(( ctld_port + 2 ))
AccountingStoragePass=$MUNGE_SOCKET
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=10
SchedulerParameters=sched_interval=2,bf_interval=2
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
$node_lines
PartitionName=debug Nodes=$node_set Default=YES PriorityTier=1 MaxTime=INFINITE State=UP
PartitionName=high Nodes=$node_set PriorityTier=10 MaxTime=INFINITE State=UP
EOF
    if [ "$gpus" -gt 0 ]; then
        echo "NodeName=$node_set Name=gpu File=$STATE/dev/nvidia[0-$(( gpus - 1 ))]" > "$ETC/gres.conf"
    else
        : > "$ETC/gres.conf"
    fi
    (umask 077; cat > "$ETC/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdAddr=$ctld_addr
DbdHost=localhost
DbdPort=$(( ctld_port + 2 ))
SlurmUser=root
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$db_port
StorageUser=slurm
StoragePass=$db_pass
StorageLoc=slurm_acct_db
EOF
    )
    chmod 600 "$ETC/slurmdbd.conf"
}

munge_works() { munge -n -S "$MUNGE_SOCKET" | unmunge -S "$MUNGE_SOCKET"; }

start_munged() {
    up munged && return 0
    mkdir -p "$MUNGE_DIR/run"
    chmod 755 "$MUNGE_DIR" "$MUNGE_DIR/run"
    [ -s "$MUNGE_DIR/munge.key" ] || mungekey --create --keyfile="$MUNGE_DIR/munge.key"
    chmod 600 "$MUNGE_DIR/munge.key"
    munged --socket="$MUNGE_SOCKET" --key-file="$MUNGE_DIR/munge.key" \
        --pid-file="${PIDFILE[munged]}" --log-file="$LOG/munged.log" \
        --seed-file="$MUNGE_DIR/munged.seed" </dev/null >>"$LOG/munged.log" 2>&1 \
        || die "munged failed to start, see $LOG/munged.log"
    wait_until 10 munge_works || die "munged does not answer on $MUNGE_SOCKET, see $LOG/munged.log"
}

db() { mariadb --no-defaults --socket="$DB_SOCKET" -u root "$@"; }
db_up_or_gone() { db -e 'SELECT 1' || pid_gone "$1"; }

start_mariadb() {
    up mariadbd && return 0
    if [ ! -d "$DB_DIR/mysql" ]; then
        mariadb-install-db --no-defaults --datadir="$DB_DIR" --user=root --skip-test-db \
            --auth-root-authentication-method=socket >"$LOG/mariadb-install.log" 2>&1 \
            || die "mariadb-install-db failed, see $LOG/mariadb-install.log"
    fi
    setsid mariadbd --no-defaults --user=root --datadir="$DB_DIR" --socket="$DB_SOCKET" \
        --port="$(cat "$ETC/db.port")" --bind-address=127.0.0.1 --skip-name-resolve \
        --pid-file="${PIDFILE[mariadbd]}" --log-error="$LOG/mariadb.log" --skip-log-bin \
        --performance-schema=OFF --innodb-buffer-pool-size=128M --innodb-log-file-size=16M --innodb-doublewrite=0 \
        --innodb-lock-wait-timeout=900 --innodb-flush-log-at-trx-commit=0 --innodb-flush-method=nosync \
        </dev/null >>"$LOG/mariadb.log" 2>&1 &
    local pid=$!
    wait_until 60 db_up_or_gone "$pid"
    pid_gone "$pid" && die "mariadbd exited while starting, see $LOG/mariadb.log"
    db -e 'SELECT 1' >/dev/null 2>&1 || die "MariaDB did not answer within 60 s, see $LOG/mariadb.log"
    local pass
    pass="$(cat "$ETC/db.pass")"
    db <<EOF || die "could not create the slurm database user"
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$pass';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
EOF
}

start_slurmdbd() {
    up slurmdbd && return 0
    slurmdbd </dev/null >>"$LOG/slurmdbd.log" 2>&1 || die "slurmdbd failed to start, see $LOG/slurmdbd.log"
    wait_until 60 sacctmgr -n show cluster || die "slurmdbd does not answer, see $LOG/slurmdbd.log"
}

register_accounts() {
    [ -n "$(sacctmgr -n -P show cluster "$CLUSTER" format=cluster)" ] \
        || sacctmgr -i add cluster "$CLUSTER" >/dev/null || die "sacctmgr add cluster failed"
    [ -n "$(sacctmgr -n -P show account ctsl format=account)" ] \
        || sacctmgr -i add account ctsl Cluster="$CLUSTER" Description=ctsl Organization=ctsl >/dev/null \
        || die "sacctmgr add account failed"
    [ -n "$(sacctmgr -n -P show assoc where user=root account=ctsl format=user)" ] \
        || sacctmgr -i add user root Account=ctsl Cluster="$CLUSTER" >/dev/null || die "sacctmgr add user failed"
}

nodes_ready() {
    local states
    states="$(sinfo -h -N -o '%N %T' 2>/dev/null | sort -u)" || return 1  # a line per node and partition
    [ "$(grep -cE ' (idle|mixed|allocated|completing)' <<<"$states")" = "${#NODE_NAMES[@]}" ]
}

start_slurm() {
    local node
    if ! up slurmctld; then
        slurmctld </dev/null >>"$LOG/slurmctld.log" 2>&1 || die "slurmctld failed, see $LOG/slurmctld.log"
        wait_until 30 scontrol ping || die "slurmctld does not answer, see $LOG/slurmctld.log"
    fi
    for node in "${NODE_NAMES[@]}"; do
        slurmd_up "$node" && continue
        mkdir -p "$STATE/slurmd/$node"
        if [ "$NODES" = 1 ]; then
            slurmd </dev/null >>"$LOG/slurmd-$node.log" 2>&1 || die "slurmd failed, see $LOG/slurmd-$node.log"
        else
            start_node_slurmd "$node" || die "slurmd on $node failed, see $LOG/slurmd-$node.log"
        fi
    done
    wait_until 30 nodes_ready \
        || die "nodes not ready ($(sinfo -h -N -o '%N %T %E' | sort -u | tr '\n' ';')), see $LOG/slurmd-*.log"
}

# timed NAME CMD...: run CMD and append "NAME seconds" to the timing summary.
TIMINGS=""
timed() {
    local t="$EPOCHREALTIME"
    "${@:2}"
    TIMINGS+="$(awk -v n="$1" -v a="$t" -v b="$EPOCHREALTIME" 'BEGIN {printf "%s %.1f, ", n, b - a}')"
}

[ "$(id -u)" = 0 ] || die "run start.sh as root (munged, slurmctld and slurmd run as root here)"
# munged refuses a socket below a folder that not everyone may traverse (pytest's tmp folders).
for d in "$STATE" $(p="$STATE"; while [ "$p" != / ]; do p="$(dirname "$p")"; echo "$p"; done); do
    [ "$(( 0$(stat -c %a "$d") & 1 ))" = 1 ] || die "$d is not traversable by all (chmod o+x) and munged needs that for its socket: pick another CTSL_SLURM_STATE"
done
running="$(cat "$ETC/nodes" 2>/dev/null || echo 1)"
if any_up && [ "$running" != "$NODES" ]; then
    die "a cluster of $running node(s) runs in $STATE: stop it (stop.sh) before starting one of $NODES"
fi
if all_up; then
    log "already up in $STATE"
    print_env
    exit 0
fi
mkdir -p "$ETC" "$LOG" "$RUN" "$STATE/slurmctld" "$STATE/slurmd"
timed packages install_packages
if ! any_up; then
    [ "$NODES" = 1 ] || timed network create_network "$NODES"
    write_configs
fi
timed munged start_munged
timed mariadb start_mariadb
timed slurmdbd start_slurmdbd
timed accounts register_accounts
timed slurm start_slurm
log "up in $(awk -v a="$T0" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.1f", b - a}') s (${TIMINGS%, }): $NODES node(s), $STATE, logs in $LOG"
print_env
