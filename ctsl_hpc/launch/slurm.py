"""Slurm for a sweep: the job graph, the checkpointable jobs, and what the cluster reports.

**The graph.** :func:`plan_sweep` decides per stage what to submit: a stage whose output is done
is skipped, one whose job is still queued or running is kept (later stages depend on its job id),
everything else is submitted. :func:`submit_sweep` hands the plan to an executor (``local`` runs
it in this process, ``slurm`` submits teacher -> students (one array, split into chunks of at most
``MaxArraySize`` tasks) -> evaluation with ``afterok`` dependencies and returns at once).

**Preemption.** A training job is a :class:`submitit.helpers.Checkpointable`. submitit installs
its checkpoint-and-requeue handler on ``USR2`` before calling the job; :class:`TrainingJob`
replaces it (and ``SIGTERM``) by a handler that only records the signal. The training loop polls
that flag after every optimiser step (all ranks agree on it), saves one collective checkpoint and
raises :class:`~ctsl_hpc.train.loop.TrainingInterrupted`. For ``USR2`` (preemption or the time
limit approaching) the job then calls submitit's own handler, which calls :meth:`checkpoint`
(the same callable and arguments: the restart resumes from the newest complete checkpoint and
reopens its MLflow run), requeues the job with ``scontrol requeue`` and exits. For ``SIGTERM``
alone (``scancel``, ``scontrol requeue``) Slurm itself ends or requeues the job; the checkpoint is
just kept. A job restarted more than ``max_requeues`` times fails with a message naming the key.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import submitit

from ctsl_hpc.config import ExperimentConfig, SlurmStageConfig
from ctsl_hpc.launch.state import ACTIVE, JobRecord, Registry

if TYPE_CHECKING:
    from ctsl_hpc.launch.executors import Executor

log = logging.getLogger(__name__)

DONE = "DONE"  # the pipeline's stage marker (ctsl_hpc.pipeline.DONE; not imported: it pulls in torch)


class SlurmError(RuntimeError):
    """Slurm is unreachable, or refuses what the configuration asks for."""


class RequeueLimitExceeded(RuntimeError):
    """A job was requeued more often than its ``max_requeues``."""


# ------------------------------------------------------------------------------------ the graph


@dataclass(frozen=True)
class Task:
    """One unit of a sweep: the teacher, one student variant, or the evaluation."""

    key: str  # registry key: "teacher", "student/RM+TL", "eval"
    stage: str  # "teacher", "students", "eval"
    variant: str | None = None


@dataclass
class PlannedStage:
    """What a sweep does for one stage."""

    stage: str
    submit: list[Task] = field(default_factory=list)
    done: list[Task] = field(default_factory=list)
    running: dict[Task, str] = field(default_factory=dict)  # task -> the job id already queued/running


def student_key(variant: str) -> str:
    return f"student/{variant}"


def sweep_tasks(cfg: ExperimentConfig) -> list[Task]:
    """Every task of the sweep, in graph order."""
    students = [Task(student_key(v), "students", v) for v in cfg.student.variants]
    return [Task("teacher", "teacher"), *students, Task("eval", "eval")]


def run_dir(workdir: Path, task: Task) -> Path:
    """Where a training task writes (the pipeline's layout); the report folder for ``eval``."""
    if task.stage == "teacher":
        return workdir / "teacher"
    if task.stage == "students":
        return workdir / "students" / task.variant.replace("+", "_")
    return workdir / "report"


def task_done(workdir: Path, task: Task, registry: Registry) -> bool:
    """Training: the stage's DONE marker. Evaluation: its job reported success after the last student."""
    if task.stage != "eval":
        return (run_dir(workdir, task) / DONE).is_file()
    record = registry.get(task.key)
    return record is not None and record.state == "COMPLETED" and (run_dir(workdir, task) / "table1.json").is_file()


def plan_sweep(workdir: Path, cfg: ExperimentConfig, states: dict[str, str] | None = None) -> list[PlannedStage]:
    """Per stage: what to submit, what is done, what is already queued (``states``: job id -> Slurm state)."""
    registry = Registry(workdir)
    states = states or {}
    stages: dict[str, PlannedStage] = {}
    for task in sweep_tasks(cfg):
        planned = stages.setdefault(task.stage, PlannedStage(task.stage))
        record = registry.get(task.key)
        if task_done(workdir, task, registry):
            planned.done.append(task)
        elif record is not None and record.backend == "slurm" and states.get(record.job_id or "") in ACTIVE:
            planned.running[task] = record.job_id
        else:
            planned.submit.append(task)
    if stages["eval"].done and any(s.submit or s.running for s in stages.values() if s.stage != "eval"):
        stages["eval"].submit, stages["eval"].done = stages["eval"].done, []  # a student is redone: so is the report
    return list(stages.values())


def submit_sweep(workdir: Path, cfg: ExperimentConfig, executor: Executor) -> list[PlannedStage]:
    """Submit (or run, for the local executor) what the plan says, wiring ``afterok`` dependencies."""
    states = executor.job_states([r.job_id for r in Registry(workdir).all() if r.job_id])
    plan = plan_sweep(workdir, cfg, states)
    after: list[str] = []
    for stage in plan:
        ids = list(stage.running.values())
        if stage.submit:
            ids += executor.submit(stage.stage, stage.submit, after)
        if ids:
            after = ids  # the next stage waits for this one's jobs
    return plan


# ---------------------------------------------------------------------------- the cluster side


def require_slurm() -> None:
    """Raise :class:`SlurmError` unless the Slurm client tools are on PATH."""
    missing = [tool for tool in ("sbatch", "srun", "sacct", "squeue") if shutil.which(tool) is None]
    if missing:
        raise SlurmError(
            f"{', '.join(missing)} not found on PATH: --cluster slurm needs the Slurm client tools "
            "(run it on a login node, or use --cluster local)"
        )


def _run(cmd: Sequence[str], timeout: float = 30) -> str:
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as exc:
        raise SlurmError(f"{cmd[0]} not found on PATH") from exc
    except subprocess.TimeoutExpired as exc:
        raise SlurmError(f"{' '.join(cmd)} did not answer within {timeout:.0f} s (is slurmctld up?)") from exc
    if out.returncode != 0:
        raise SlurmError(f"{' '.join(cmd)} failed: {(out.stderr or out.stdout).strip()}")
    return out.stdout


def partitions() -> list[str]:
    """The partitions of the cluster."""
    return [p.strip() for p in _run(["sinfo", "-h", "-o", "%R"]).split() if p.strip()]


def check_partitions(cfg: ExperimentConfig, stages: Sequence[str]) -> None:
    """Raise :class:`SlurmError` naming the config key of a partition the cluster does not have."""
    wanted = {s: cfg.slurm.stage(s).partition for s in stages}
    if not any(wanted.values()):
        return
    known = partitions()
    for stage, partition in wanted.items():
        if partition and partition not in known:
            raise SlurmError(
                f"slurm.{stage}.partition: partition {partition!r} does not exist on this cluster "
                f"(partitions: {', '.join(known)})"
            )


def max_array_size() -> int:
    """The cluster's ``MaxArraySize`` (array indices run from 0 to MaxArraySize - 1)."""
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", _run(["scontrol", "show", "config"]), re.M)
    return int(match.group(1)) if match else 1001  # Slurm's default


def chunks(items: Sequence[Any], size: int) -> list[list[Any]]:
    """``items`` in consecutive chunks of at most ``size`` (one Slurm array each)."""
    if size < 1:
        raise ValueError(f"chunk size must be positive, got {size}")
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def dependency(after: Sequence[str]) -> str | None:
    """The sbatch ``--dependency`` value for "after all of these succeeded"."""
    return "afterok:" + ":".join(after) if after else None


def _expand_array(job_id: str) -> list[str]:
    """``"12_[0-2,5%2]"`` -> ``["12_0", "12_1", "12_2", "12_5"]``; other ids unchanged."""
    match = re.fullmatch(r"(\d+)_\[([^\]]+)\]", job_id)
    if not match:
        return [job_id]
    base, spec = match.group(1), match.group(2).split("%")[0]
    ids = []
    for part in spec.split(","):
        low, _, high = part.partition("-")
        ids += [f"{base}_{i}" for i in range(int(low), int(high or low) + 1)]
    return ids


@dataclass
class Accounting:
    """One job (array task) as ``sacct`` reports it; ``elapsed_s`` and ``gpu_hours`` sum all its runs."""

    job_id: str
    state: str
    elapsed_s: int
    gpus: int
    gpu_hours: float


def _gpus(alloc_tres: str) -> int:
    match = re.search(r"gres/gpu(?::[^=,]*)?=(\d+)", alloc_tres)
    return int(match.group(1)) if match else 0


def accounting(job_ids: Sequence[str]) -> dict[str, Accounting]:
    """State, elapsed time and GPU-hours (AllocTRES gres/gpu x elapsed, every requeued run) per job id."""
    job_ids = [j for j in job_ids if j]
    if not job_ids:
        return {}
    # An array task that never started is accounted only under its array's row ("8_[0-1]"), which
    # `sacct -j 8_0` does not return: ask for the array's id too and expand its rows.
    query = sorted({*job_ids, *(j.split("_")[0] for j in job_ids)})
    text = _run(["sacct", "-D", "-X", "-n", "-P", "-o", "JobID,State,ElapsedRaw,AllocTRES", "-j", ",".join(query)])
    found: dict[str, Accounting] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 4:
            continue
        raw_id, state, elapsed, tres = parts[:4]
        state = state.split()[0] if state else "UNKNOWN"  # "CANCELLED by 0" -> CANCELLED
        for job_id in _expand_array(raw_id):
            seconds, gpus = int(elapsed or 0), _gpus(tres)
            prev = found.get(job_id)
            total_s = seconds + (prev.elapsed_s if prev else 0)
            gpu_h = gpus * seconds / 3600 + (prev.gpu_hours if prev else 0.0)
            found[job_id] = Accounting(job_id, state, total_s, max(gpus, prev.gpus if prev else 0), gpu_h)
    wanted = set(job_ids)
    return {j: a for j, a in found.items() if j in wanted}  # with -D the newest run comes last


def queue_states(job_ids: Sequence[str]) -> dict[str, str]:
    """Current states of jobs that ``squeue`` still knows (pending, running, requeued...)."""
    job_ids = [j for j in job_ids if j]
    if not job_ids:
        return {}
    text = _run(["squeue", "-h", "-r", "-o", "%i|%T", "--states=all", "-j", ",".join(job_ids)])
    states = {}
    for line in text.splitlines():
        if "|" in line:
            job_id, state = line.strip().split("|", 1)
            states.update({j: state for j in _expand_array(job_id)})
    return states


def job_states(job_ids: Sequence[str]) -> dict[str, str]:
    """The best known state per job id: the queue for live jobs, accounting for finished ones."""
    job_ids = [j for j in job_ids if j]
    states = {j: a.state for j, a in accounting(job_ids).items()}
    try:
        states.update(queue_states(job_ids))
    except SlurmError:  # squeue refuses ids it no longer knows; accounting has them
        pass
    return states


def executor_parameters(name: str, stage: SlurmStageConfig, tasks_per_node: int) -> dict[str, Any]:
    """submitit ``AutoExecutor`` parameters for one stage."""
    params: dict[str, Any] = {
        "name": name,
        "timeout_min": stage.time_min,
        "nodes": stage.nodes,
        "tasks_per_node": tasks_per_node,
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


def tasks_per_node(cfg: ExperimentConfig, stage: str) -> int:
    """Ranks per node of a training stage: ``slurm[.stage].tasks_per_node`` if set, else one task per
    GPU for distributed training engines; one task otherwise (evaluation is a single process)."""
    resolved = cfg.slurm.stage(stage)
    if stage == "eval" or cfg.train.engine not in ("ddp", "deepspeed"):
        return 1
    if resolved.tasks_per_node is not None:
        return resolved.tasks_per_node
    return max(1, resolved.gpus_per_node)


# --------------------------------------------------------------------------------- the jobs


class _StopFlag:
    """A signal handler that only records which signals arrived."""

    def __init__(self) -> None:
        self.signals: list[str] = []

    def __call__(self, signum: int, frame: Any) -> None:
        self.signals.append(signal.Signals(signum).name)
        log.warning("received %s: stopping after the current step", signal.Signals(signum).name)

    def is_set(self) -> bool:
        return bool(self.signals)


def job_setup() -> None:
    """In a job: our log lines in its stdout file next to submitit's; torch threads = the CPUs Slurm gave."""
    import torch

    if os.environ.get("SLURM_CPUS_PER_TASK"):
        torch.set_num_threads(int(os.environ["SLURM_CPUS_PER_TASK"]))
    logging.basicConfig(
        level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    for noisy in ("urllib3", "matplotlib", "filelock", "alembic", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def export_distributed_env() -> None:
    """RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT from a multi-task Slurm job's environment,
    leaving ``CUDA_VISIBLE_DEVICES`` alone so that device selection by LOCAL_RANK stays valid."""
    if submitit.JobEnvironment().num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)


def prepare_inputs_on_rank0(workdir: str) -> None:
    """Multi-task jobs: rank 0 builds what every rank reads (demo corpus, waveform statistics, noise
    folders checked) while the others wait at a barrier; concurrently they would race on the same files."""
    if submitit.JobEnvironment().num_tasks == 1:
        return
    import torch.distributed as dist

    from ctsl_hpc.launch.jobs import open_workspace
    from ctsl_hpc.train.distributed import init_process_group

    env = init_process_group()
    if env.rank == 0:
        open_workspace(workdir).data.check()
    dist.barrier()
    log.info("rank %d of %d ready (%s:%s)", env.rank, env.world_size, os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"])


def _start(workdir: str, key: str, max_requeues: int, stage: str) -> tuple[Registry, int]:
    """Register this (re)start of ``key``; fail if it was requeued too often."""
    env = submitit.JobEnvironment()
    registry = Registry(workdir)
    restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    if env.global_rank == 0:
        registry.update(key, state="RUNNING", job_id=env.job_id, requeues=restarts, message="")
    if restarts > max_requeues:
        _fail(registry, key, env, f"{key}: job {env.job_id} was requeued {restarts} times, more than "
              f"slurm.{stage}.max_requeues={max_requeues}; raise it and run `resume`")
    return registry, restarts


def _fail(registry: Registry, key: str, env: Any, message: str) -> None:
    if env.global_rank == 0:
        registry.update(key, state="FAILED", message=message)
    raise RequeueLimitExceeded(message)


class TrainingJob(submitit.helpers.Checkpointable):
    """The teacher or one student as a Slurm job; requeued on USR2 after a collective checkpoint."""

    def __init__(self, key: str, stage: str, max_requeues: int):
        self.key, self.stage, self.max_requeues = key, stage, max_requeues

    def __call__(self, workdir: str, variant: str | None = None) -> dict[str, Any]:
        from ctsl_hpc.launch import jobs
        from ctsl_hpc.train.loop import TrainingInterrupted

        job_setup()
        requeue = signal.getsignal(signal.SIGUSR2)  # submitit's checkpoint-and-requeue handler
        flag = _StopFlag()
        signal.signal(signal.SIGUSR2, flag)
        signal.signal(signal.SIGTERM, flag)
        registry, restarts = _start(workdir, self.key, self.max_requeues, self.stage)
        export_distributed_env()
        prepare_inputs_on_rank0(workdir)
        try:
            if self.stage == "teacher":
                summary = jobs.teacher_job(workdir, should_stop=flag.is_set)
            else:
                summary = jobs.student_job(workdir, variant, should_stop=flag.is_set)
        except TrainingInterrupted as exc:
            self._interrupted(registry, restarts, flag, requeue, exc)
            raise
        except Exception as exc:
            if submitit.JobEnvironment().global_rank == 0:
                registry.update(self.key, state="FAILED", message=f"{type(exc).__name__}: {exc}"[:500])
            raise
        if submitit.JobEnvironment().global_rank == 0:
            registry.update(self.key, state="COMPLETED", message="")
        return summary

    def _interrupted(self, registry: Registry, restarts: int, flag: _StopFlag, requeue: Any, exc: Exception) -> None:
        """After the collective checkpoint: hand over to submitit's requeue path (USR2) or let Slurm end us."""
        env = submitit.JobEnvironment()
        if "SIGUSR2" not in flag.signals:  # SIGTERM only: Slurm itself cancels or requeues this job
            if env.global_rank == 0:
                registry.update(self.key, state="STOPPED", message=f"stopped by {flag.signals[0]}; {exc}")
            return
        if restarts >= self.max_requeues:
            _fail(registry, self.key, env, f"{self.key}: job {env.job_id} would be requeued a {restarts + 1}th "
                  f"time, more than slurm.{self.stage}.max_requeues={self.max_requeues}; {exc}; raise the limit "
                  "and run `resume`")
        if not callable(requeue):  # not started by submitit: nothing can requeue us
            return
        if env.global_rank == 0:
            registry.update(self.key, state="REQUEUING", message=str(exc))
        try:
            requeue(signal.SIGUSR2, None)  # checkpoint() -> pickle, scontrol requeue, sys.exit
        except subprocess.CalledProcessError as error:
            # Preemption with PreemptMode=REQUEUE: Slurm requeues the job itself and refuses a second requeue.
            log.warning("scontrol requeue refused (%s): Slurm is already requeuing this job", error)
            sys.exit(-1)
        _wait_for_rank0_to_leave()  # ranks > 0: submitit's handler returns there
        sys.exit(-1)


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


class EvaluationJob(submitit.helpers.Checkpointable):
    """The evaluation and report; requeued as is on USR2 (scores are saved per variant, so it resumes)."""

    def __init__(self, key: str = "eval"):
        self.key = key

    def __call__(self, workdir: str) -> str:
        from ctsl_hpc.launch import jobs

        job_setup()
        registry = Registry(workdir)
        registry.update(self.key, state="RUNNING", job_id=submitit.JobEnvironment().job_id,
                        requeues=int(os.environ.get("SLURM_RESTART_COUNT", "0")))
        try:
            report_dir = jobs.evaluate_job(workdir, parent_metrics=lambda: gpu_hours_metrics(Path(workdir)))
        except Exception as exc:
            registry.update(self.key, state="FAILED", message=f"{type(exc).__name__}: {exc}"[:500])
            raise
        registry.update(self.key, state="COMPLETED", message="")
        return str(report_dir)


def gpu_hours(workdir: Path) -> tuple[dict[str, float], float]:
    """GPU-hours per job key (every job id it ever had, requeued runs included) and for the sweep."""
    records = [r for r in Registry(workdir).all() if r.backend == "slurm" and r.job_id]
    ids = {r.key: [*r.history, r.job_id] for r in records}
    usage = accounting([j for js in ids.values() for j in js])
    per_key = {key: sum(usage[j].gpu_hours for j in js if j in usage) for key, js in ids.items()}
    return per_key, sum(per_key.values())


def gpu_hours_metrics(workdir: Path) -> dict[str, float]:
    """The sweep's GPU-hours as MLflow metrics: ``gpu_hours/<job key>`` and ``gpu_hours/total``."""
    per_key, total = gpu_hours(workdir)
    return {**{f"gpu_hours/{key}": hours for key, hours in per_key.items()}, "gpu_hours/total": total}


def job_for(task: Task, cfg: ExperimentConfig) -> Callable[..., Any]:
    """The submitit callable of ``task``."""
    if task.stage == "eval":
        return EvaluationJob(task.key)
    return TrainingJob(task.key, task.stage, cfg.slurm.stage(task.stage).max_requeues)


def new_record(task: Task, backend: str, job_id: str, registry: Registry, resources: dict[str, Any],
               max_requeues: int, stdout: str | None = None, stderr: str | None = None) -> JobRecord:
    """Register a fresh submission of ``task`` (keeping the ids of its earlier jobs)."""
    old = registry.get(task.key)
    history = [*old.history, old.job_id] if old and old.job_id and old.job_id != job_id else (old.history if old else [])
    return registry.put(JobRecord(
        key=task.key, stage=task.stage, variant=task.variant, backend=backend, job_id=job_id,
        state="SUBMITTED" if backend == "slurm" else "RUNNING", submissions=(old.submissions if old else 0) + 1,
        max_requeues=max_requeues, stdout=stdout, stderr=stderr, resources=resources, history=history,
    ))


# ----------------------------------------------------------------------- management commands


@dataclass
class StatusRow:
    """One line of ``status``."""

    stage: str
    variant: str
    job_id: str
    state: str
    elapsed_s: int | None
    requeues: int
    last_epoch: int | None
    best_dev_ccc: float | None
    gpu_hours: float | None
    message: str = ""


def status_rows(workdir: Path, cfg: ExperimentConfig) -> list[StatusRow]:
    """The sweep's tasks with their job, Slurm state, requeues, training progress and GPU-hours."""
    from ctsl_hpc.launch.state import training_progress

    registry = Registry(workdir)
    records = {r.key: r for r in registry.all()}
    slurm_ids = [j for r in records.values() if r.backend == "slurm" and r.job_id for j in (*r.history, r.job_id)]
    usage: dict[str, Accounting] = {}
    live: dict[str, str] = {}
    if slurm_ids and shutil.which("sacct"):
        usage = accounting(slurm_ids)
        live = queue_states([records[k].job_id for k in records if records[k].backend == "slurm"])
    rows = []
    for task in sweep_tasks(cfg):
        record = records.get(task.key)
        last, best = training_progress(run_dir(workdir, task)) if task.stage != "eval" else (None, None)
        if record is None:
            state = "DONE" if task_done(workdir, task, registry) else "NOT SUBMITTED"
            rows.append(StatusRow(task.stage, task.variant or "", "", state, None, 0, last, best, None))
            continue
        acct = usage.get(record.job_id or "")
        state = live.get(record.job_id or "") or (acct.state if acct else record.state)
        if record.state in ("FAILED", "STOPPED") and state in ("COMPLETING", "COMPLETED", "FAILED"):
            state = record.state  # the job's own account of how it ended beats Slurm's exit code
        hours = None
        if usage:
            hours = sum(usage[j].gpu_hours for j in (*record.history, record.job_id) if j in usage)
        rows.append(StatusRow(
            task.stage, task.variant or "", record.job_id or "", state, acct.elapsed_s if acct else None,
            record.requeues, last, best, hours, record.message,
        ))
    return rows


def format_status(rows: Sequence[StatusRow]) -> str:
    """The status rows as an aligned text table, GPU-hours totalled."""
    header = ["stage", "variant", "job id", "state", "elapsed", "requeues", "last epoch", "best dev CCC", "GPU h"]
    lines = [header]
    for r in rows:
        elapsed = "" if r.elapsed_s is None else f"{r.elapsed_s // 3600:d}:{r.elapsed_s // 60 % 60:02d}:{r.elapsed_s % 60:02d}"
        lines.append([
            r.stage, r.variant, r.job_id, r.state, elapsed, str(r.requeues),
            "" if r.last_epoch is None else str(r.last_epoch),
            "" if r.best_dev_ccc is None else f"{r.best_dev_ccc:.3f}",
            "" if r.gpu_hours is None else f"{r.gpu_hours:.3f}",
        ])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
    total = [r.gpu_hours for r in rows if r.gpu_hours is not None]
    if total:
        text.append(f"GPU-hours of the sweep: {sum(total):.3f}")
    text += [f"{r.stage} {r.variant}: {r.message}".replace("  ", " ") for r in rows if r.message]
    return "\n".join(text)


def resolve_keys(workdir: Path, selector: str | None) -> list[JobRecord]:
    """Registry records matching ``selector``: None/"all", a stage (teacher, students, eval), a key
    (``student/RM+TL``) or a student variant (``RM+TL``)."""
    records = Registry(workdir).all()
    if selector in (None, "all"):
        return records
    chosen = [r for r in records if selector in (r.stage, r.key, r.variant)]
    if not chosen:
        known = sorted({r.stage for r in records} | {r.key for r in records})
        raise SlurmError(f"no job in {workdir} matches {selector!r} (known: {', '.join(known) or 'none submitted'})")
    return chosen


def cancel(workdir: Path, selector: str | None = None) -> list[str]:
    """``scancel`` the selected jobs that are still queued or running; return their ids."""
    records = [r for r in resolve_keys(workdir, selector) if r.backend == "slurm" and r.job_id]
    states = job_states([r.job_id for r in records])
    ids = [r.job_id for r in records if states.get(r.job_id, r.state) in ACTIVE]
    if ids:
        _run(["scancel", *ids])
        registry = Registry(workdir)
        for record in records:
            if record.job_id in ids:
                registry.update(record.key, state="CANCELLED", message="cancelled by the user")
    return ids


def log_paths(record: JobRecord) -> list[Path]:
    """The job's stdout and stderr files (submitit writes Python logging to stderr)."""
    return [Path(p) for p in (record.stdout, record.stderr) if p]


def dry_run_lines(workdir: Path, cfg: ExperimentConfig, cluster: str) -> list[str]:
    """What ``sweep`` would submit: one line per stage with its tasks, arrays, resources, dependency."""
    states: dict[str, str] = {}
    records = Registry(workdir).all() if (workdir / "jobs").is_dir() else []
    if cluster == "slurm" and shutil.which("sacct") and records:
        try:
            states = job_states([r.job_id for r in records if r.job_id])
        except SlurmError:
            pass
    plan = plan_sweep(workdir, cfg, states) if (workdir / "jobs").is_dir() else _fresh_plan(workdir, cfg)
    lines = [f"dry run: nothing is submitted ({cluster}, work directory {workdir})"]
    limit = None
    if cluster == "slurm":
        try:
            limit = max_array_size()
        except SlurmError as exc:
            lines.append(f"(cluster not reachable, MaxArraySize unknown: {str(exc).splitlines()[0]})")
    waits = ""
    for stage in plan:
        res = cfg.slurm.stage(stage.stage)
        names = ", ".join(t.variant or t.key for t in stage.submit) or "-"
        lines.append(f"{stage.stage}: submit [{names}]"
                     + (f"; done [{', '.join(t.variant or t.key for t in stage.done)}]" if stage.done else "")
                     + (f"; running {sorted(stage.running.values())}" if stage.running else ""))
        if cluster == "slurm" and stage.submit:
            arrays = chunks(stage.submit, limit) if limit else [stage.submit]
            shape = f"{len(arrays)} array(s) of {[len(a) for a in arrays]} task(s)" if len(stage.submit) > 1 else "1 job"
            lines.append(
                f"  {shape}: partition={res.partition or '(default)'} account={res.account or '-'} qos={res.qos or '-'} "
                f"time={res.time_min} min nodes={res.nodes} tasks/node={tasks_per_node(cfg, stage.stage)} "
                f"gpus/node={res.gpus_per_node} cpus/task={res.cpus_per_task} mem={res.mem_gb:g} GB "
                f"constraint={res.constraint or '-'} signal=USR2@{res.signal_delay_s}s max_requeues={res.max_requeues}"
                + (f" array_parallelism={res.array_parallelism}" if len(stage.submit) > 1 else "")
                + (f" additional={res.additional}" if res.additional else "")
                + (f" dependency=afterok on {waits}" if waits else "")
            )
        if stage.submit or stage.running:
            waits = f"the {stage.stage} job(s)"
    return lines


def _fresh_plan(workdir: Path, cfg: ExperimentConfig) -> list[PlannedStage]:
    stages: dict[str, PlannedStage] = {}
    for task in sweep_tasks(cfg):
        planned = stages.setdefault(task.stage, PlannedStage(task.stage))
        if task.stage != "eval" and (run_dir(workdir, task) / DONE).is_file():
            planned.done.append(task)
        else:
            planned.submit.append(task)
    return list(stages.values())
