"""Managing a sweep from any shell: status, logs, cancel, and what a sweep would submit (dry run).

Everything is read from the work directory (its job registry and run folders) and from the backend
that ran each job (Slurm: ``sacct``/``squeue``), after the submitting process is gone.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ctsl_hpc.atomic_io import read_json
from ctsl_hpc.config import TRAINING_STAGES, ExperimentConfig
from ctsl_hpc.cost import cost_lines, search_trial_epochs
from ctsl_hpc.launch.backends import Backend, make_backend
from ctsl_hpc.launch.graph import plan_sweep, stage_names, sweep_tasks
from ctsl_hpc.launch.job_registry import ACTIVE, JobRecord, JobUsage, Registry
from ctsl_hpc.launch.slurm_cli import SlurmError
from ctsl_hpc.processes import pid_alive
from ctsl_hpc.run_records import read_history
from ctsl_hpc.tune.space import POINT_FILE, SEARCHED
from ctsl_hpc.workdir import RunDir, Workdir


class ManageError(RuntimeError):
    """A management command cannot do what it was asked (no such stage, no log recorded)."""


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
    code: str = ""
    nodes: str = ""  # where the newest run ran: the scheduler's node list, else the ranks' hosts


def _backends(workdir: Workdir, cfg: ExperimentConfig, records: Sequence[JobRecord]) -> dict[str, Backend]:
    return {name: make_backend(name, workdir, cfg) for name in {r.backend for r in records}}


def status_rows(workdir: Workdir, cfg: ExperimentConfig) -> list[StatusRow]:
    """The sweep's tasks with their job, state, requeues, training progress and GPU-hours."""
    records = {r.key: r for r in Registry(workdir.root).all()}
    usage: dict[str, JobUsage] = {}
    live: dict[str, str] = {}
    for name, backend in _backends(workdir, cfg, list(records.values())).items():
        mine = [r for r in records.values() if r.backend == name and r.job_id]
        try:
            usage.update(backend.usage([j for r in mine for j in (*r.history, r.job_id)]))
            live.update(backend.job_states([r.job_id for r in mine]))
        except SlurmError:  # the scheduler's tools are not on this machine: the registry's view only
            pass
    rows = []
    for task in sweep_tasks(workdir, cfg):
        record = records.get(task.key)
        run = RunDir(task.marker.parent)
        trains = task.stage in TRAINING_STAGES
        last, best = run.progress() if trains else (None, None)
        if record is None:
            state = "DONE" if task.done else "NOT SUBMITTED"
            rows.append(StatusRow(task.stage, task.label, "", state, None, 0, last, best, None))
            continue
        acct = usage.get(record.job_id or "")
        state = live.get(record.job_id or "") or (acct.state if acct else record.state)
        message = record.message
        if state == "RUNNING" and record.pid and record.host == socket.gethostname() and not pid_alive(record.pid):
            state, message = "FAILED", f"its process {record.pid} is gone (killed?): run the same command again"
        if record.state in ("FAILED", "STOPPED") and state in ("COMPLETING", "COMPLETED", "FAILED"):
            state = record.state  # the job's own account of how it ended beats the scheduler's exit code
        hours = None
        if usage:
            hours = sum(usage[j].gpu_hours for j in (*record.history, record.job_id) if j in usage)
        starts = run.starts() if trains else []
        nodes = acct.nodes if acct else ""
        if not nodes and starts:
            nodes = ",".join(dict.fromkeys(starts[-1]["hosts"]))
        rows.append(StatusRow(
            task.stage, task.label, record.job_id or "", state, acct.elapsed_s if acct else None,
            record.requeues, last, best, hours, message, record.code, nodes,
        ))
    return rows


def format_status(rows: Sequence[StatusRow]) -> str:
    """The status rows as an aligned text table, GPU-hours totalled."""
    header = ["stage", "variant", "job id", "state", "nodes", "elapsed", "requeues", "last epoch", "best dev CCC", "GPU h",
              "code"]
    lines = [header]
    for r in rows:
        elapsed = "" if r.elapsed_s is None else f"{r.elapsed_s // 3600:d}:{r.elapsed_s // 60 % 60:02d}:{r.elapsed_s % 60:02d}"
        lines.append([
            r.stage, r.variant, r.job_id, r.state, r.nodes, elapsed, str(r.requeues),
            "" if r.last_epoch is None else str(r.last_epoch),
            "" if r.best_dev_ccc is None else f"{r.best_dev_ccc:.3f}",
            "" if r.gpu_hours is None else f"{r.gpu_hours:.3f}",
            r.code,
        ])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
    total = [r.gpu_hours for r in rows if r.gpu_hours is not None]
    if total:
        text.append(f"GPU-hours of the sweep: {sum(total):.3f}")
    text += [f"{r.stage} {r.variant}: {r.message}".replace("  ", " ") for r in rows if r.message]
    return "\n".join(text)


@dataclass
class TrialRow:
    """One trial of a search, as its run folder tells."""

    trial_id: str
    point: dict[str, float]
    state: str
    epochs: int
    last_dev_ccc: float | None
    best_dev_ccc: float | None


def trial_rows(workdir: Workdir, cfg: ExperimentConfig, search_state: str) -> list[TrialRow]:
    """The search's trials from their run folders (``search_state``: the state of the search's job). A trial that
    ran ``tune.max_t`` epochs is finished; one with fewer was stopped early once the search is done, is running or
    waiting while it goes on, and was interrupted with it otherwise (``resume`` continues it)."""
    root = workdir.tune / "trials"
    rows = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        run = RunDir(folder)
        point = read_json(folder / POINT_FILE, "delete it: the trial writes it again") if (folder / POINT_FILE).is_file() else {}
        history = read_history(run.history).epochs if run.history.is_file() else []
        epochs = history[-1].epoch if history else 0
        if epochs >= cfg.tune.max_t:
            state = "finished"
        elif search_state in ("DONE", "COMPLETED"):
            state = "stopped early"
        elif search_state in ACTIVE:
            state = "running or waiting"
        else:
            state = "interrupted"
        rows.append(TrialRow(folder.name, point, state, epochs, history[-1].dev_score if history else None,
                             max(r.dev_score for r in history) if history else None))
    return rows


def format_trials(rows: Sequence[TrialRow]) -> str:
    """The trial table of ``status``: point, state, epochs, last and best development CCC."""
    header = ["trial", *SEARCHED, "state", "epochs", "last dev CCC", "best dev CCC"]
    lines = [header] + [[
        r.trial_id, *(f"{r.point[k]:.4g}" if k in r.point else "?" for k in SEARCHED), r.state, str(r.epochs),
        "" if r.last_dev_ccc is None else f"{r.last_dev_ccc:.3f}", "" if r.best_dev_ccc is None else f"{r.best_dev_ccc:.3f}",
    ] for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def resolve_keys(workdir: Workdir, selector: str | None) -> list[JobRecord]:
    """Registry records matching ``selector``: None/"all", a stage (teacher, students, eval), a key
    (``student/RM+TL``) or a student variant (``RM+TL``)."""
    records = Registry(workdir.root).all()
    if selector in (None, "all"):
        return records
    chosen = [r for r in records if selector in (r.stage, r.key, r.variant)]
    if not chosen:
        known = sorted({r.stage for r in records} | {r.key for r in records})
        raise ManageError(f"no job in {workdir.root} matches {selector!r} (known: {', '.join(known) or 'none submitted'})")
    return chosen


def cancel(workdir: Workdir, cfg: ExperimentConfig, selector: str | None = None) -> list[str]:
    """Cancel the selected jobs that are still queued or running; return their ids."""
    records = [r for r in resolve_keys(workdir, selector) if r.job_id]
    registry = Registry(workdir.root)
    cancelled = []
    for name, backend in _backends(workdir, cfg, records).items():
        mine = [r for r in records if r.backend == name]
        states = backend.job_states([r.job_id for r in mine])
        ids = [r.job_id for r in mine if states.get(r.job_id, r.state) in ACTIVE]
        backend.cancel(ids)
        for record in mine:
            if record.job_id in ids:
                registry.update(record.key, state="CANCELLED", message="cancelled by the user")
        cancelled += ids
    return cancelled


def print_logs(workdir: Workdir, cfg: ExperimentConfig, selector: str, follow: bool, interval_s: float) -> None:
    """Print the selected jobs' log files; with ``follow``, keep printing until every job has ended."""
    records = resolve_keys(workdir, selector)
    registry = Registry(workdir.root)
    paths = [p for r in records for p in registry.logs(r)]  # submitit writes Python logging to stderr
    if not paths:
        raise ManageError(f"{selector}: no log files recorded (local runs log to the terminal)")
    offsets = dict.fromkeys(paths, 0)
    backends = _backends(workdir, cfg, records)
    while True:
        for path in paths:
            if path.is_file():
                with open(path, "rb") as handle:
                    handle.seek(offsets[path])
                    chunk = handle.read()
                    offsets[path] += len(chunk)
                if chunk:
                    print(f"==> {path} <==" if len(paths) > 1 else "", end="\n" if len(paths) > 1 else "")
                    sys.stdout.write(chunk.decode(errors="replace"))
                    sys.stdout.flush()
        if not follow:
            return
        states = {j: s for b in backends.values() for j, s in b.job_states([r.job_id for r in records if r.job_id]).items()}
        if all(states.get(r.job_id) not in ACTIVE for r in records if r.job_id):
            return
        time.sleep(interval_s)  # polling files written by another machine


def dry_run_lines(workdir: Workdir, cfg: ExperimentConfig, backend: Backend, search: bool = False) -> list[str]:
    """What ``sweep`` (``search``: ``sweep --tune``) would submit: one line per stage with its tasks, then what
    the backend says of it, and what the sweep costs (:mod:`ctsl_hpc.cost`). Nothing runs: no Ray, no job."""
    records = Registry(workdir.root).all()
    try:
        states = backend.job_states([r.job_id for r in records if r.job_id])
    except SlurmError:
        states = {}
    costs = cost_lines(cfg, workdir, search)
    lines = [f"dry run: nothing is submitted ({backend.name}, work directory {workdir.root})", *costs["inputs"]]
    if search:
        tc = cfg.tune
        at_most, expected, how = search_trial_epochs(tc)
        lines.append(f"search: {tc.num_samples} trials of {tc.variant} ({tc.search_alg} search, {tc.scheduler} "
                     f"scheduler, max_t {tc.max_t}): {expected} trial-epochs expected under {how}, at most {at_most}")
    waits = ""
    for stage in plan_sweep(workdir, cfg, states, backend, search):
        lines.append(f"{stage.stage}: submit [{stage_names(stage.submit) or '-'}]"
                     + (f"; done [{stage_names(stage.done)}]" if stage.done else "")
                     + (f"; running {sorted(stage.running.values())}" if stage.running else ""))
        if stage.submit:
            lines += backend.describe(stage.stage, stage.submit, waits)
        lines += costs.get(stage.stage, [])
        if stage.submit or stage.running:
            waits = f"the {stage.stage} job(s)"
    return lines + costs.get("total", [])


def sweep_usage(workdir: Workdir, cfg: ExperimentConfig) -> dict[str, float]:
    """The usage metrics (``gpu_hours/<key>``, ``gpu_hours/total``) of the backends that ran the sweep's jobs."""
    metrics: dict[str, float] = {}
    for backend in _backends(workdir, cfg, Registry(workdir.root).all()).values():
        usage = backend.usage_metrics
        try:
            metrics.update(usage(workdir.root) if usage is not None else {})
        except SlurmError:  # the scheduler's tools are not on this machine
            continue
    return metrics


def describe_sweep(workdir: Workdir, cfg: ExperimentConfig) -> str:
    """Put the rebuilt report's Table 1 and the stages into the sweep run's description; what happened."""
    from ctsl_hpc.experiment import Experiment
    from ctsl_hpc.stage_jobs import sweep_description
    from ctsl_hpc.track.replay import PARENT_KEY
    from ctsl_hpc.track.runs import open_tracker
    from ctsl_hpc.variants import TEACHER

    tracker = open_tracker(workdir.root, cfg, system_metrics=False)
    if tracker is None or PARENT_KEY not in tracker.run_ids():
        return "tracking: no sweep run to describe"
    text = sweep_description(Experiment(cfg, workdir), [TEACHER, *cfg.student.variants], sweep_usage(workdir, cfg))
    tracker.run(PARENT_KEY).set_description(text)
    if tracker.pending():
        return "tracking: the sweep run's description is spooled (send it with: sync --workdir ...)"
    return "tracking: the sweep run's description holds the rebuilt Table 1"
