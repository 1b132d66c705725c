"""A task running as a Slurm job: ranks from Slurm, preemption as a stop request, requeue after a checkpoint.

A job is a :class:`submitit.helpers.Checkpointable`. submitit installs its checkpoint-and-requeue
handler on ``USR2`` before calling the job; :class:`SlurmJob` replaces it (and ``SIGTERM``) by a
handler that only records the signal. The task polls that flag (a training loop after every
optimiser step, all ranks agreeing on it; the evaluation between variants), saves its state and
raises ``TrainingInterrupted``. For ``USR2`` (preemption, or the time limit approaching) the job
then calls submitit's own handler, which calls :meth:`checkpoint` (the same task: the restart
resumes from the newest complete checkpoint and reopens its MLflow run), requeues the job with
``scontrol requeue`` and exits. For ``SIGTERM`` alone (``scancel``, ``scontrol requeue``) Slurm
itself ends or requeues the job; the checkpoint is just kept. A job restarted more than
``max_requeues`` times fails with a message naming the config key.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import submitit

from ctsl_hpc.atomic_io import owner_only
from ctsl_hpc.data.packed import JOB_ID_VARIABLE
from ctsl_hpc.launch import slurm_env
from ctsl_hpc.launch.job_registry import Registry
from ctsl_hpc.launch.task import Task, run_task
from ctsl_hpc.logs import setup_logging
from ctsl_hpc.snapshot import PACKAGE, package_hash
from ctsl_hpc.train.interface import TrainingInterrupted

log = logging.getLogger(__name__)


class RequeueLimitExceeded(RuntimeError):
    """A job was requeued more often than its ``max_requeues``."""


class _StopFlag:
    """A signal handler that only records which signals arrived."""

    def __init__(self) -> None:
        self.signals: list[str] = []

    def __call__(self, signum: int, frame: Any) -> None:
        self.signals.append(signal.Signals(signum).name)
        log.warning("received %s: stopping after the current step", signal.Signals(signum).name)

    def is_set(self) -> bool:
        return bool(self.signals)


class SlurmJob(submitit.helpers.Checkpointable):
    """One task of the graph as a Slurm job (every rank of it runs this)."""

    def __init__(self, task: Task, max_requeues: int):
        self.task, self.max_requeues = task, max_requeues

    def __call__(self) -> Any:
        _job_setup()
        requeue = signal.getsignal(signal.SIGUSR2)  # submitit's checkpoint-and-requeue handler
        flag = _StopFlag()
        signal.signal(signal.SIGUSR2, flag)
        signal.signal(signal.SIGTERM, flag)
        slurm_env.export_ranks()
        slurm_env.export_run_tags()
        os.environ[JOB_ID_VARIABLE] = slurm_env.job_id() or ""  # names the job's node-local copy (data.stage_dir)
        log_code_origin()
        env = submitit.JobEnvironment()
        registry, restarts = self.task.registry, slurm_env.restart_count()
        if env.global_rank == 0:
            registry.update(self.task.key, state="RUNNING", job_id=env.job_id, requeues=restarts, message="")
        if restarts > self.max_requeues:
            self._fail(registry, f"{self.task.key}: job {env.job_id} was requeued {restarts} times, more than "
                       f"slurm.{self.task.stage}.max_requeues={self.max_requeues}; raise it and run `resume`")
        try:
            return run_task(
                self.task, should_stop=flag.is_set, is_main=env.global_rank == 0,
                interruptions=(TrainingInterrupted,),
            )
        except TrainingInterrupted as exc:
            self._interrupted(registry, restarts, flag, requeue, exc)
            raise

    def _fail(self, registry: Registry, message: str) -> None:
        if submitit.JobEnvironment().global_rank == 0:
            registry.update(self.task.key, state="FAILED", message=message)
        raise RequeueLimitExceeded(message)

    def _interrupted(self, registry: Registry, restarts: int, flag: _StopFlag, requeue: Any, exc: Exception) -> None:
        """After the collective checkpoint: hand over to submitit's requeue path (USR2) or let Slurm end us."""
        env = submitit.JobEnvironment()
        if "SIGUSR2" not in flag.signals:  # SIGTERM only: Slurm itself cancels or requeues this job
            if env.global_rank == 0:
                registry.update(self.task.key, state="STOPPED", message=f"stopped by {flag.signals[0]}; {exc}")
            return
        if restarts >= self.max_requeues:
            self._fail(registry, f"{self.task.key}: job {env.job_id} would be requeued a {restarts + 1}th time, more "
                       f"than slurm.{self.task.stage}.max_requeues={self.max_requeues}; {exc}; raise the limit and "
                       "run `resume`")
        if not callable(requeue):  # not started by submitit: nothing can requeue us
            return
        if env.global_rank == 0:
            registry.update(self.task.key, state="REQUEUING", message=str(exc))
        try:
            with owner_only():  # the pickle the restart unpickles: its owner's alone
                requeue(signal.SIGUSR2, None)  # checkpoint() -> pickle, scontrol requeue, sys.exit
        except subprocess.CalledProcessError as error:
            # Preemption with PreemptMode=REQUEUE: Slurm requeues the job itself and refuses a second requeue.
            log.warning("scontrol requeue refused (%s): Slurm is already requeuing this job", error)
            sys.exit(-1)
        _wait_for_rank0_to_leave()  # ranks > 0: submitit's handler returns there
        sys.exit(-1)


def log_code_origin() -> None:
    """Say which code this job runs: the package's content hash and where it is imported from (and
    warn when that is not the frozen copy the job script put first on ``PYTHONPATH``)."""
    log.info("code %s: ctsl_hpc imported from %s", package_hash(), PACKAGE)
    frozen = Path(os.environ.get("PYTHONPATH", "").split(os.pathsep)[0] or ".").resolve()
    if frozen.parent.name == "code" and PACKAGE.parent != frozen:
        log.warning("ctsl_hpc comes from %s, not from the frozen copy %s: a ctsl_hpc/ folder where the job started "
                    "shadows it (PYTHONSAFEPATH needs Python >= 3.11); submit from another folder", PACKAGE, frozen)


def _job_setup() -> None:
    """Our log lines in the job's stdout file next to submitit's; torch threads = the CPUs Slurm gave."""
    import torch

    cpus = slurm_env.cpus_per_task()
    if cpus:
        torch.set_num_threads(cpus)
    setup_logging(stream=sys.stdout)


def _wait_for_rank0_to_leave() -> None:
    """Ranks > 0 after the collective checkpoint: block until rank 0 (which requeues the job, then
    exits) leaves the process group. Ending first, with a non-zero code, would let srun
    (``--kill-on-bad-exit``, ``KillOnBadExit=1``) kill rank 0 before its ``scontrol requeue``."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    try:
        dist.barrier()  # rank 0 never arrives: the barrier fails once it has exited (or the requeue kills us)
    except RuntimeError as exc:
        log.info("rank 0 has left (%s): exiting for the requeue", str(exc).splitlines()[0][:100])
