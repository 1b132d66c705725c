#!/bin/bash
# The Ray Tune sweep as one Slurm allocation, for sites that prefer a plain sbatch script to
# `python -m ctsl_hpc.launch sweep --tune --cluster slurm` (which submits the same thing with submitit).
#
#   sbatch --nodes=2 --gpus-per-node=4 launch/ray-on-slurm.sh --workdir /shared/runs/tune \
#          [--config configs/sweep.yaml] [tune.num_samples=32 tune.gpus_per_trial=1 ...]
#
# Every node runs one task of `python -m ctsl_hpc.launch ray-node`: the first starts the Ray head on
# free ports and the Tune driver, the others join it as workers. The work directory must be on storage
# every node sees (it holds the rendezvous, the Tune experiment, checkpoints and MLflow state); for more
# than one node set tracking.uri to an MLflow server (SQLite on NFS is unsafe with many writers).
# USR2 two minutes before the time limit (or at preemption) makes the trials checkpoint; the job then
# requeues itself and the rerun continues the search (Tuner.restore).
#SBATCH --job-name=ctsl-tune
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --mem-per-cpu=4G
#SBATCH --time=04:00:00
#SBATCH --signal=USR2@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=ctsl-tune-%j.out
set -euo pipefail

cd "${SLURM_SUBMIT_DIR:-.}"
VENV="${CTSL_VENV:-.venv}"
[ -f "$VENV/bin/activate" ] && source "$VENV/bin/activate"
export HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1

# One task per node; the tasks share the allocation's CPUs/GPUs of their node with Ray.
exec srun --ntasks-per-node=1 --kill-on-bad-exit=0 python -m ctsl_hpc.launch ray-node "$@"
