"""The Slurm backend: each stage through submitit, job arrays of at most ``MaxArraySize`` tasks, ``afterok``.

``submit`` returns as soon as sbatch accepted the jobs. A stage's tasks share its resources
(``slurm[.stage].*``); a later stage waits (``afterok``) for every job of the one before and is
cancelled by Slurm if one of them fails (``--kill-on-invalid-dep=yes``). Each task runs as a
:class:`~ctsl_hpc.launch.slurm_job.SlurmJob` (preemption, requeue, ranks).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ctsl_hpc.atomic_io import owner_only
from ctsl_hpc.config import GRAPH_STAGES, ExperimentConfig, SlurmStageConfig, check_training_ranks
from ctsl_hpc.launch import slurm_cli
from ctsl_hpc.launch.backends.base import Backend, register
from ctsl_hpc.launch.job_registry import JobUsage
from ctsl_hpc.launch.job_script import job_environment
from ctsl_hpc.launch.slurm_job import SlurmJob
from ctsl_hpc.launch.task import Task
from ctsl_hpc.masking import mask, mask_text
from ctsl_hpc.snapshot import package_hash, snapshot

log = logging.getLogger(__name__)


def tasks_per_node(cfg: ExperimentConfig, stage: str) -> int:
    """Slurm tasks per node of a stage (:meth:`~ctsl_hpc.config.SlurmConfig.ranks_per_node`)."""
    return cfg.slurm.ranks_per_node(stage, cfg.train.engine)


def executor_parameters(name: str, stage: SlurmStageConfig, tasks: int) -> dict[str, Any]:
    """submitit ``AutoExecutor`` parameters of one stage's resources (``tasks`` per node)."""
    params: dict[str, Any] = {
        "name": name,
        "timeout_min": stage.time_min,
        "nodes": stage.nodes,
        "tasks_per_node": tasks,
        "cpus_per_task": stage.cpus_per_task,
        "mem_gb": stage.mem_gb,
        "slurm_signal_delay_s": stage.signal_delay_s,
        "slurm_array_parallelism": stage.array_parallelism,
    }
    if stage.gpus_per_node:
        params["gpus_per_node"] = stage.gpus_per_node
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(stage, key):
            params[f"slurm_{key}"] = getattr(stage, key)
    return params


def stage_parameters(
    cfg: ExperimentConfig, stage: str, after: Sequence[str] = (), code: Path | None = None,
    submission_root: Path | None = None, **additional: Any,
) -> tuple[str | None, dict[str, Any]]:
    """Everything submitit needs for ``stage``: the interpreter, and resources, job script set-up,
    the dependency and extra sbatch options as ``update_parameters`` arguments."""
    resolved = cfg.slurm.stage(stage)
    params = executor_parameters(f"ctsl-{cfg.name}-{stage}", resolved, tasks_per_node(cfg, stage))
    python, setup, srun = job_environment(resolved, code, submission_root)
    params.update(slurm_setup=setup, slurm_srun_args=srun)
    extra = {**additional, **resolved.additional}
    if after:
        extra.update(dependency=slurm_cli.dependency(after), kill_on_invalid_dep="yes")
    if extra:
        params["slurm_additional_parameters"] = extra
    return python, params


def make_executor(folder: Path, python: str | None, params: dict[str, Any]):
    """A submitit Slurm executor with these parameters (submitit wants ``srun`` on PATH)."""
    import submitit

    executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_python=python)
    executor.update_parameters(**params)
    return executor


@register
class SlurmBackend(Backend):
    """Submits through submitit to Slurm; returns as soon as sbatch accepted the jobs.

    Every job imports a frozen copy of the package (:mod:`ctsl_hpc.snapshot`), made when the first
    stage is submitted: requeued jobs run the code they were submitted with.
    """

    name = "slurm"

    def __init__(self, workdir, cfg, max_array: int | None = None):
        super().__init__(workdir, cfg)
        self._max_array = max_array

    @property
    def max_array(self) -> int:
        if self._max_array is None:
            self._max_array = slurm_cli.max_array_size()
        return self._max_array

    @property
    def code_hash(self) -> str:
        """The content hash of the package this command submits."""
        return package_hash()

    def check_config(self) -> None:
        check_training_ranks(self.cfg)

    def check(self) -> None:
        self.check_config()
        slurm_cli.require_slurm()
        slurm_cli.check_partitions(self.cfg, GRAPH_STAGES)

    def parameters(self, stage: str, after: Sequence[str]) -> tuple[str | None, dict[str, Any]]:
        """The interpreter and submitit parameters of ``stage`` (resources, set-up, dependency, sbatch options)."""
        return stage_parameters(self.cfg, stage, after, self.workdir.code / self.code_hash, self.workdir.submitit)

    def submit(self, stage: str, tasks: Sequence[Task], after: Sequence[str]) -> list[str]:
        import submitit

        with owner_only():  # the code the jobs import: writable by its owner alone
            snapshot(self.workdir.code)
        python, params = self.parameters(stage, after)
        executor = make_executor(self.workdir.submitit / "%j", python, params)
        max_requeues = self.cfg.slurm.stage(stage).max_requeues
        ids: list[str] = []
        for chunk in slurm_cli.chunks(list(tasks), self.max_array):
            try:
                # the pickles and scripts submitit writes: the owner's alone (a pickle run by the job is code); the jobs
                # themselves, and the logs Slurm opens for them, keep the sweep's umask (SLURM_UMASK: the group reads)
                with owner_only(), _job_umask(self.cfg.file_mask), executor.batch():
                    handles = [executor.submit(SlurmJob(task, max_requeues)) for task in chunk]
            except (submitit.core.utils.FailedJobError, submitit.core.utils.FailedSubmissionError) as exc:
                raise slurm_cli.SlurmError(f"sbatch refused the {stage} job(s): {exc}") from exc
            _readable_by_group(self.workdir.submitit, [job.paths.folder for job in handles], self.cfg.file_mask)
            for task, job in zip(chunk, handles, strict=True):
                self.registry.new_record(
                    task.key, task.stage, task.label or None, self.name, job.job_id, state="SUBMITTED",
                    max_requeues=max_requeues, stdout=str(job.paths.stdout), stderr=str(job.paths.stderr),
                    resources=mask(params), code=self.code_hash,  # group-readable: no secrets
                )
                ids.append(job.job_id)
                log.info("submitted %s as job %s", task.key, job.job_id)
        return ids

    def job_states(self, job_ids: Sequence[str]) -> dict[str, str]:
        return slurm_cli.job_states(job_ids)

    def usage(self, job_ids: Sequence[str]) -> dict[str, JobUsage]:
        return slurm_cli.accounting(job_ids)

    def cancel(self, job_ids: Sequence[str]) -> None:
        slurm_cli.scancel(job_ids)

    @property
    def usage_metrics(self) -> Callable[[Path], Mapping[str, float]]:
        return slurm_cli.gpu_hours_metrics

    def describe(self, stage: str, tasks: Sequence[Task], waits_for: str) -> list[str]:
        res = self.cfg.slurm.stage(stage)
        lines = []
        try:
            arrays = slurm_cli.chunks(list(tasks), self.max_array)
        except slurm_cli.SlurmError as exc:
            arrays = [list(tasks)]
            lines.append(f"  (cluster not reachable, MaxArraySize unknown: {str(exc).splitlines()[0]})")
        shape = f"{len(arrays)} array(s) of {[len(a) for a in arrays]} task(s)" if len(tasks) > 1 else "1 job"
        lines.append(
            f"  {shape}: partition={res.partition or '(default)'} account={res.account or '-'} qos={res.qos or '-'} "
            f"time={res.time_min} min nodes={res.nodes} tasks/node={tasks_per_node(self.cfg, stage)} "
            f"gpus/node={res.gpus_per_node} cpus/task={res.cpus_per_task} mem={res.mem_gb:g} GB "
            f"constraint={res.constraint or '-'} signal=USR2@{res.signal_delay_s}s max_requeues={res.max_requeues}"
            + (f" array_parallelism={res.array_parallelism}" if len(tasks) > 1 else "")
            + (f" additional={res.additional}" if res.additional else "")
            + (f" dependency=afterok on {waits_for}" if waits_for else "")
        )
        return lines + self._script(stage, len(arrays[0]), waits_for)

    def _script(self, stage: str, tasks: int, waits_for: str) -> list[str]:
        """The stage's sbatch script exactly as submitit writes it (its first array when there are several)."""
        python, params = self.parameters(stage, [f"<{waits_for}>"] if waits_for else [])
        try:
            executor = make_executor(self.workdir.submitit / "%j", python, params)._executor
        except RuntimeError as exc:  # submitit builds scripts only where srun is
            return [f"  (no sbatch script: {exc})"]
        if tasks > 1:
            executor.parameters["map_count"] = tasks
        script = executor._make_submission_file_text(executor._submitit_command_str, "dry-run")
        return ["  sbatch script:", *("    " + mask_text(line) for line in script.splitlines())]


@contextlib.contextmanager
def _job_umask(mask: int) -> Iterator[None]:
    """sbatch hands its jobs ``$SLURM_UMASK`` when it is set (else its own umask): the sweep's, meanwhile."""
    previous = os.environ.get("SLURM_UMASK")
    os.environ["SLURM_UMASK"] = f"{mask:04o}"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("SLURM_UMASK", None)
        else:
            os.environ["SLURM_UMASK"] = previous


def _readable_by_group(root: Path, folders: Sequence[Path], mask: int) -> None:
    """The submission folders (made owner-only) open to the group as far as the sweep's umask allows, so that it
    can read the logs: never writable by anyone but the owner."""
    for folder in (root, *dict.fromkeys(folders)):
        if folder.is_dir():  # a set-group-ID bit stays: what is made inside keeps belonging to the shared group
            folder.chmod((folder.stat().st_mode & stat.S_ISGID) | (0o777 & ~mask & ~0o022))
