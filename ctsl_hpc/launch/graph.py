"""The job graph of a sweep, the same for every backend: prepare -> teacher -> students -> evaluation, or for a
search prepare -> teacher -> the Ray Tune search -> its final students -> their evaluation.

A task (:class:`~ctsl_hpc.launch.task.Task`) carries its callable and arguments and the marker
file that says it is done; backends run or submit tasks without knowing what they are. :func:`plan_sweep` decides per stage what to submit: a task whose marker exists is
done, one whose job is still queued or running is kept (later stages depend on its job id), every
other is submitted; :func:`submit_sweep` hands the plan to a backend, each stage after the jobs of
the one before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ctsl_hpc import stage_jobs
from ctsl_hpc.config import EVAL_STAGE, PREPARE_STAGE, STUDENTS_STAGE, TEACHER_STAGE, TUNE_STAGE, ExperimentConfig
from ctsl_hpc.launch.backends.base import Backend
from ctsl_hpc.launch.job_registry import ACTIVE, Registry
from ctsl_hpc.launch.ray_cluster import search_task
from ctsl_hpc.launch.task import Task
from ctsl_hpc.stage_jobs import EVAL_KEY, FINAL_PREFIX, PREPARE_KEY, SEARCH_KEY, run_key
from ctsl_hpc.variants import TEACHER
from ctsl_hpc.workdir import Workdir


@dataclass
class PlannedStage:
    """What a sweep does for one stage."""

    stage: str
    submit: list[Task] = field(default_factory=list)
    done: list[Task] = field(default_factory=list)
    running: dict[Task, str] = field(default_factory=dict)  # task -> the job id already queued/running


def sweep_tasks(workdir: Workdir, cfg: ExperimentConfig, backend: Backend | None = None, search: bool | None = None
                ) -> list[Task]:
    """Every task of the sweep, in graph order (``backend`` adds its usage report to the evaluation).

    ``search`` (default: as the work directory's sweep was started): the Ray Tune search after the teacher,
    then its final students and their evaluation in ``<workdir>/final``, instead of the students and the
    evaluation of the config's own loss weights."""
    root, usage = workdir.root, None if backend is None else backend.usage_metrics
    search = workdir.sweep()["search"] if search is None else search
    prepared = workdir.packed_done if cfg.data.stage_dir else workdir.prepared  # the pack is written last
    tasks = [Task(PREPARE_KEY, PREPARE_STAGE, stage_jobs.prepare_job, root, prepared)]
    tasks.append(Task(run_key(TEACHER), TEACHER_STAGE, stage_jobs.teacher_job, root, workdir.teacher.done))
    if not search and cfg.seeds:  # replicates: the sweep once per seed, the prepare stage shared
        return tasks[:1] + [task for seed in cfg.seeds for task in _replicate(workdir, seed, cfg.student.variants, usage)]
    if not search:
        return [*tasks, *_evaluated_students(workdir, cfg.student.variants, usage)]
    final = Workdir(workdir.final)
    tasks.append(Task(SEARCH_KEY, TUNE_STAGE, search_task, root, final.config_file, label="search"))
    return [*tasks, *_evaluated_students(final, cfg.tune.final_variants or cfg.student.variants, usage, root)]


def _replicate(workdir: Workdir, seed: int, variants: Sequence[str], usage) -> list[Task]:
    """The teacher, students and evaluation of replicate ``seed`` in ``seed-<seed>/`` (keys ``seed-<seed>/...``)."""
    replicate = workdir.replicate(seed)
    prefix = f"{replicate.root.name}/"
    teacher = Task(prefix + run_key(TEACHER), TEACHER_STAGE, stage_jobs.teacher_job, replicate.root,
                   replicate.teacher.done, label=prefix + TEACHER, home=workdir.root)
    return [teacher, *_evaluated_students(replicate, variants, usage, workdir.root, prefix)]


def _evaluated_students(workdir: Workdir, variants: Sequence[str], usage, home: Path | None = None,
                        prefix: str = FINAL_PREFIX) -> list[Task]:
    """The students of ``variants`` and the evaluation in ``workdir`` (of ``home``'s sweep: keys ``prefix...``)."""
    prefix, root = ("" if home is None else prefix), workdir.root
    tasks = [
        Task(prefix + run_key(v), STUDENTS_STAGE, stage_jobs.student_job, root, workdir.student(v).done, args=(v,),
             label=prefix + v, home=home)
        for v in variants
    ]
    tasks.append(Task(prefix + EVAL_KEY, EVAL_STAGE, stage_jobs.evaluate_job, root, workdir.report.done,
                      kwargs=(("usage", usage),), home=home))
    return tasks


def plan_sweep(
    workdir: Workdir, cfg: ExperimentConfig, states: dict[str, str] | None = None, backend: Backend | None = None,
    search: bool | None = None,
) -> list[PlannedStage]:
    """Per stage: what to submit, what is done, what is already queued (``states``: job id -> state)."""
    registry = Registry(workdir.root)
    states = states or {}
    stages: dict[str, PlannedStage] = {}
    for task in sweep_tasks(workdir, cfg, backend, search):
        planned = stages.setdefault(task.stage, PlannedStage(task.stage))
        record = registry.get(task.key)
        if task.done:
            planned.done.append(task)
        elif record is not None and states.get(record.job_id or "") in ACTIVE:
            planned.running[task] = record.job_id
        else:
            planned.submit.append(task)
    last, earlier = list(stages.values())[-1], list(stages.values())[:-1]
    if last.done and any(s.submit or s.running for s in earlier):
        last.submit, last.done = last.done, []  # a training task is redone: so is the report
    return list(stages.values())


def submit_sweep(workdir: Workdir, cfg: ExperimentConfig, backend: Backend, search: bool | None = None
                 ) -> list[PlannedStage]:
    """Submit (or run, for a blocking backend) what the plan says, each stage after the previous one's jobs."""
    states = backend.job_states([r.job_id for r in Registry(workdir.root).all() if r.job_id])
    plan = plan_sweep(workdir, cfg, states, backend, search)
    after: list[str] = []
    for stage in plan:
        ids = list(stage.running.values())
        if stage.submit:
            ids += backend.submit(stage.stage, stage.submit, after)
        if ids:
            after = ids  # the next stage waits for this one's jobs
    return plan


def stage_names(tasks: Sequence[Task]) -> str:
    """The tasks' names, comma-separated (for status and dry runs)."""
    return ", ".join(t.name for t in tasks)
