"""What the Slurm client tools say: partitions, array limits, job states, accounting, GPU-hours.

Everything here runs ``sinfo``, ``scontrol``, ``squeue``, ``sacct`` or ``scancel`` and parses their
output; nothing imports torch. ``sacct`` needs Slurm's accounting (``slurmdbd``) to be on: submitit
and the GPU-hour report read it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ctsl_hpc.config import ExperimentConfig
from ctsl_hpc.launch.job_registry import JobUsage, Registry


class SlurmError(RuntimeError):
    """Slurm is unreachable, or refuses what the configuration asks for."""


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


def _gpus(alloc_tres: str) -> int:
    match = re.search(r"gres/gpu(?::[^=,]*)?=(\d+)", alloc_tres)
    return int(match.group(1)) if match else 0


def accounting(job_ids: Sequence[str]) -> dict[str, JobUsage]:
    """State, elapsed time, GPU-hours (AllocTRES gres/gpu x elapsed, every requeued run) and the newest
    run's nodes per job id."""
    job_ids = [j for j in job_ids if j]
    if not job_ids:
        return {}
    # An array task that never started is accounted only under its array's row ("8_[0-1]"), which
    # `sacct -j 8_0` does not return: ask for the array's id too and expand its rows.
    query = sorted({*job_ids, *(j.split("_")[0] for j in job_ids)})
    fields = "JobID,State,ElapsedRaw,AllocTRES,NodeList"
    text = _run(["sacct", "-D", "-X", "-n", "-P", "-o", fields, "-j", ",".join(query)])
    found: dict[str, JobUsage] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 5:
            continue
        raw_id, state, elapsed, tres, nodes = parts[:5]
        state = state.split()[0] if state else "UNKNOWN"  # "CANCELLED by 0" -> CANCELLED
        for job_id in _expand_array(raw_id):
            seconds, gpus = int(elapsed or 0), _gpus(tres)
            prev = found.get(job_id)
            total_s = seconds + (prev.elapsed_s if prev else 0)
            gpu_h = gpus * seconds / 3600 + (prev.gpu_hours if prev else 0.0)
            nodes = "" if nodes == "None assigned" else nodes
            found[job_id] = JobUsage(job_id, state, total_s, max(gpus, prev.gpus if prev else 0), gpu_h, nodes)
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

def scancel(job_ids: Sequence[str]) -> None:
    """Cancel these jobs (queued or running)."""
    if job_ids:
        _run(["scancel", *job_ids])


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
