"""Slurm's job variables, read here and nowhere else: ranks for torch, tags for MLflow, requeue counts.

In a job step every task gets ``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID`` and the node
list; :class:`SlurmEnvironment` turns them into torch's ``env://`` variables (``MASTER_ADDR`` = the
first node, ``MASTER_PORT`` drawn from the job id so that every task agrees without talking), which
is all the core reads. ``CUDA_VISIBLE_DEVICES`` is left alone: every rank picks its GPU by
``LOCAL_RANK``.
"""

from __future__ import annotations

import os
import random

from submitit.slurm.slurm import SlurmJobEnvironment

from ctsl_hpc.track.tags import SOURCE_TYPE, add_run_tags
from ctsl_hpc.train.ranks import ClusterEnvironment

_TAGS = {
    "SLURM_JOB_ID": "slurm.job_id",
    "SLURM_ARRAY_JOB_ID": "slurm.array_job_id",
    "SLURM_ARRAY_TASK_ID": "slurm.array_task_id",
    "SLURM_CLUSTER_NAME": "slurm.cluster",
    "SLURM_JOB_NODELIST": "slurm.nodelist",
}


class SlurmEnvironment(ClusterEnvironment):
    """The ranks of a Slurm job step (one task per rank); node-list parsing is submitit's."""

    def __init__(self) -> None:
        self._job = SlurmJobEnvironment()

    @staticmethod
    def detect() -> bool:
        return "SLURM_PROCID" in os.environ and "SLURM_NTASKS" in os.environ

    def world_size(self) -> int:
        return self._job.num_tasks

    def global_rank(self) -> int:
        return self._job.global_rank

    def local_rank(self) -> int:
        return self._job.local_rank

    def main_address(self) -> str:
        return self._job.hostnames[0]

    def main_port(self) -> int:
        """``$MASTER_PORT``, else drawn from the job id: the same in every task without talking.

        The rule of submitit's ``TorchDistributedEnvironment``, written here because that class
        works only inside submitit jobs and a plain ``srun`` task (``launch/ray-on-slurm.sh``) is not one.
        """
        return int(os.environ.get("MASTER_PORT") or random.Random(self._job.job_id).randint(20000, 60000))


def export_ranks() -> None:
    """In a job of several tasks: the ``env://`` variables of this task (a single task needs none)."""
    if SlurmEnvironment.detect():
        env = SlurmEnvironment()
        if env.world_size() > 1:
            env.export()


def job_id() -> str | None:
    """The job id (an array task's own id), None outside Slurm."""
    return os.environ.get("SLURM_JOB_ID")


def restart_count() -> int:
    """How often Slurm restarted this job (preemptions, requeues)."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0"))


def cpus_per_task() -> int | None:
    """The CPUs Slurm gave each task, when it says."""
    value = os.environ.get("SLURM_CPUS_PER_TASK")
    return int(value) if value else None


def task_rank() -> int:
    """This task's rank in the job step (0 outside Slurm)."""
    return int(os.environ.get("SLURM_PROCID", "0"))


def task_count() -> int:
    """The tasks of the job step (1 outside Slurm)."""
    return int(os.environ.get("SLURM_NTASKS", "1"))


def job_tags() -> dict[str, str]:
    """The job's Slurm ids and nodes as MLflow tags."""
    return {tag: os.environ[var] for var, tag in _TAGS.items() if os.environ.get(var)}


def export_run_tags() -> None:
    """Hand :func:`job_tags` (and the source type ``JOB``) to every MLflow run this job (and its Ray
    workers) opens, besides the tags the submitting command exported (its command line)."""
    add_run_tags({**job_tags(), SOURCE_TYPE: "JOB"})
