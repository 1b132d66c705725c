"""Where the jobs of a sweep run: one interface, a ``local`` and a ``slurm`` backend.

Like submitit's core/local/slurm split: :class:`Executor` is the interface the job graph
(:func:`ctsl_hpc.launch.slurm.submit_sweep`) talks to, :class:`LocalExecutor` runs each task in
this process, one after the other (the embedded default), and :class:`SlurmExecutor` submits them
through submitit's ``AutoExecutor``, one stage at a time, several tasks of a stage as job arrays
of at most ``MaxArraySize`` tasks, each stage ``afterok`` on the previous one. Both record their
jobs in the work directory's registry (:mod:`ctsl_hpc.launch.state`).
"""

from __future__ import annotations

import abc
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ctsl_hpc.config import ExperimentConfig
from ctsl_hpc.launch import slurm
from ctsl_hpc.launch.slurm import Task
from ctsl_hpc.launch.state import Registry

log = logging.getLogger(__name__)

SUBMITIT_DIR = "slurm"  # <workdir>/slurm/<job id>/: sbatch scripts, pickles, logs


class Executor(abc.ABC):
    """Runs or submits the tasks of one stage of a sweep."""

    name: str

    def __init__(self, workdir: Path, cfg: ExperimentConfig):
        self.workdir, self.cfg = Path(workdir), cfg
        self.registry = Registry(workdir)

    @abc.abstractmethod
    def submit(self, stage: str, tasks: Sequence[Task], after: Sequence[str]) -> list[str]:
        """Start ``tasks`` (all of one stage) once the jobs ``after`` succeeded; return their job ids."""

    @abc.abstractmethod
    def job_states(self, job_ids: Sequence[str]) -> dict[str, str]:
        """Current state of each known job id (``RUNNING``, ``COMPLETED``, ...)."""


class LocalExecutor(Executor):
    """Runs every task in this process, in order; a failing task raises at once."""

    name = "local"

    def submit(self, stage: str, tasks: Sequence[Task], after: Sequence[str]) -> list[str]:
        from ctsl_hpc.launch import jobs

        ids = []
        for task in tasks:
            job_id = f"local-{os.getpid()}"
            slurm.new_record(task, self.name, job_id, self.registry, {}, 0)
            try:
                if task.stage == "teacher":
                    jobs.teacher_job(self.workdir)
                elif task.stage == "students":
                    jobs.student_job(self.workdir, task.variant)
                else:
                    jobs.evaluate_job(self.workdir)
            except BaseException as exc:
                self.registry.update(task.key, state="FAILED", message=f"{type(exc).__name__}: {exc}"[:500])
                raise
            self.registry.update(task.key, state="COMPLETED")
            ids.append(job_id)
        return ids

    def job_states(self, job_ids: Sequence[str]) -> dict[str, str]:
        return {}  # nothing of a local run survives its process


class SlurmExecutor(Executor):
    """Submits through submitit to Slurm; returns as soon as sbatch accepted the jobs."""

    name = "slurm"

    def __init__(self, workdir: Path, cfg: ExperimentConfig, max_array: int | None = None):
        super().__init__(workdir, cfg)
        slurm.require_slurm()
        self.max_array = max_array or slurm.max_array_size()
        self.folder = self.workdir / SUBMITIT_DIR / "%j"

    def parameters(self, stage: str, after: Sequence[str]) -> dict[str, Any]:
        """The submitit parameters of ``stage`` (resources, dependency, extra sbatch options)."""
        resolved = self.cfg.slurm.stage(stage)
        params = slurm.executor_parameters(f"ctsl-{self.cfg.name}-{stage}", resolved, slurm.tasks_per_node(self.cfg, stage))
        extra = dict(resolved.additional)
        if after:
            extra.update(dependency=slurm.dependency(after), kill_on_invalid_dep="yes")
        if extra:
            params["slurm_additional_parameters"] = extra
        return params

    def submit(self, stage: str, tasks: Sequence[Task], after: Sequence[str]) -> list[str]:
        import submitit

        executor = submitit.AutoExecutor(folder=self.folder, cluster="slurm")
        params = self.parameters(stage, after)
        executor.update_parameters(**params)
        max_requeues = self.cfg.slurm.stage(stage).max_requeues
        ids: list[str] = []
        for chunk in slurm.chunks(list(tasks), self.max_array):
            try:
                with executor.batch():
                    handles = [self._submit_one(executor, task) for task in chunk]
            except (submitit.core.utils.FailedJobError, submitit.core.utils.FailedSubmissionError) as exc:
                raise slurm.SlurmError(f"sbatch refused the {stage} job(s): {exc}") from exc
            for task, job in zip(chunk, handles):
                slurm.new_record(task, self.name, job.job_id, self.registry, params, max_requeues,
                                 str(job.paths.stdout), str(job.paths.stderr))
                ids.append(job.job_id)
                log.info("submitted %s as job %s", task.key, job.job_id)
        return ids

    def _submit_one(self, executor: Any, task: Task) -> Any:
        job = slurm.job_for(task, self.cfg)
        if task.stage == "eval":
            return executor.submit(job, str(self.workdir))
        if task.stage == "teacher":
            return executor.submit(job, str(self.workdir))
        return executor.submit(job, str(self.workdir), task.variant)

    def job_states(self, job_ids: Sequence[str]) -> dict[str, str]:
        return slurm.job_states(job_ids)


def make_executor(kind: str, workdir: Path, cfg: ExperimentConfig) -> Executor:
    """The ``local`` or ``slurm`` executor of a work directory."""
    if kind == "local":
        return LocalExecutor(workdir, cfg)
    if kind == "slurm":
        return SlurmExecutor(workdir, cfg)
    raise ValueError(f"unknown cluster {kind!r} (local or slurm)")
