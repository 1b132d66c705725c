#!/usr/bin/env bash
# Stop the dev cluster whose state is in $CTSL_SLURM_STATE (default /tmp/ctsl-slurm): cancel its
# jobs, shut down slurmctld and every node's slurmd, then slurmdbd, MariaDB and munged, and remove
# the network namespaces, veths and bridge that `start.sh --nodes N` made (by the names it recorded).
# Idempotent. `stop.sh --purge` also deletes the state folder (configs, logs, accounting database).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
# shellcheck source=common.sh
. "$HERE/common.sh"
# shellcheck source=nodes.sh
. "$HERE/nodes.sh"

no_jobs_left() { [ -z "$(squeue -h -o %A 2>/dev/null)" ]; }

if pid_alive "$RUN/slurmctld.pid" slurmctld; then
    jobs="$(squeue -h -o %A 2>/dev/null || true)"
    if [ -n "$jobs" ]; then
        log "cancelling jobs: $(echo $jobs)"
        # shellcheck disable=SC2086
        scancel $jobs 2>/dev/null || true
        wait_until 60 no_jobs_left || log "jobs still listed after 60 s: $(squeue -h -o '%A %T' | tr '\n' ' ')"
    fi
    scontrol shutdown >/dev/null 2>&1 || true
fi
for pidfile in "$RUN"/slurmd-*.pid; do
    [ -e "$pidfile" ] && stop_pidfile "$pidfile" slurmd 30
done
stop_pidfile "$RUN/slurmctld.pid" slurmctld 30
teardown_network  # what is left on the nodes (job steps), then their namespaces and links
stop_pidfile "$RUN/slurmdbd.pid" slurmdbd 30
stop_pidfile "$RUN/mariadb.pid" mariadbd 60
stop_pidfile "$MUNGE_DIR/munged.pid" munged 10
if [ "${1:-}" = "--purge" ]; then
    rm -rf "$STATE"
    log "stopped and removed $STATE"
else
    log "stopped ($STATE)"
fi
