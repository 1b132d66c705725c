"""The job registry of a work directory: which job runs which task, and how it is doing.

One record per job key (``teacher``, ``student/RM+TL``, ``eval``; file names from
:meth:`ctsl_hpc.workdir.Workdir.job_file`), written atomically under a file lock by the submitting
process (job id, resources, log paths) and by the job itself (running, requeued, finished, failed
with a message). The management commands (``status``, ``logs``, ``cancel``, ``resume``) read it
from any shell, after the submitter is gone.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ctsl_hpc.atomic_io import atomic_write_json, read_json
from ctsl_hpc.config import SLURM_STAGES
from ctsl_hpc.locks import LeaseLock, lease_lock
from ctsl_hpc.workdir import Workdir

TERMINAL = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "PREEMPTED"}
)
ACTIVE = frozenset({"SUBMITTED", "PENDING", "RUNNING", "REQUEUED", "REQUEUING", "REQUEUE_HOLD", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED"})


@dataclass
class JobRecord:
    """One job (or array task) of a sweep."""

    key: str  # "teacher", "student/RM+TL", "eval"
    stage: str  # "teacher", "students", "eval"
    variant: str | None = None
    backend: str = "slurm"
    job_id: str | None = None  # "123" or "123_4" for an array task
    state: str = "SUBMITTED"  # our view; Slurm's accounting overrides it in `status`
    requeues: int = 0  # requeues of the current job id (preemptions, time limits, scontrol requeue)
    submissions: int = 0  # how often this key was submitted (resume adds one)
    max_requeues: int = 0
    stdout: str | None = None
    stderr: str | None = None
    message: str = ""
    resources: dict[str, Any] = field(default_factory=dict)
    history: list[str] = field(default_factory=list)  # earlier job ids of this key
    code: str = ""  # the content hash of the package the job imports (ctsl_hpc.snapshot); "" where it runs in place
    host: str = ""  # where a process-backed job (local) runs, and its pid: status tells a dead one
    pid: int = 0
    updated: float = 0.0

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL


@dataclass
class JobUsage:
    """What a scheduler's accounting says of one job; ``elapsed_s`` and ``gpu_hours`` sum all its runs
    (every node's GPUs), ``nodes`` is the newest run's node list (``node[1-2]``)."""

    job_id: str
    state: str
    elapsed_s: int
    gpus: int
    gpu_hours: float
    nodes: str = ""


class Registry:
    """The ``jobs/`` folder of a work directory."""

    def __init__(self, workdir: str | Path):
        self.workdir = Workdir(workdir)
        self.dir = self.workdir.jobs

    @property
    def _lock(self) -> LeaseLock:
        self.dir.mkdir(parents=True, exist_ok=True)  # on the first write: reading creates nothing
        return lease_lock(self.dir / ".lock")  # the jobs on other nodes write here too (ctsl_hpc.locks)

    def get(self, key: str) -> JobRecord | None:
        """The record of ``key``, or None when it was never submitted."""
        path = self.workdir.job_file(key)
        if not path.is_file():
            return None
        values = read_json(path, "delete it: the next sweep or resume submits that job again unless its stage is done")
        known = {f.name for f in fields(JobRecord)}
        return JobRecord(**{k: v for k, v in values.items() if k in known})

    def put(self, record: JobRecord) -> JobRecord:
        """Write ``record`` atomically."""
        record.updated = time.time()
        with self._lock:
            self._write(record)
        return record

    def update(self, key: str, **changes: Any) -> JobRecord:
        """Change fields of an existing record (read-modify-write under the lock)."""
        with self._lock:
            record = self.get(key)
            if record is None:
                raise KeyError(f"{self.dir}: no job registered under {key!r}")
            for name, value in changes.items():
                setattr(record, name, value)
            record.updated = time.time()
            self._write(record)
        return record

    def all(self) -> list[JobRecord]:
        """Every record, teacher first, then students in variant order, then eval."""
        order = {stage: i for i, stage in enumerate(SLURM_STAGES)}
        records = [self.get(key) for key in self.workdir.job_keys()]
        return sorted((r for r in records if r is not None), key=lambda r: (order.get(r.stage, 9), r.key))

    def _write(self, record: JobRecord) -> None:
        atomic_write_json(self.workdir.job_file(record.key), asdict(record))

    def logs(self, record: JobRecord) -> list[Path]:
        """The job's stdout and stderr files (kept relative to the work directory, which may move)."""
        return [self.workdir.root / p for p in (record.stdout, record.stderr) if p]

    def new_record(self, key: str, stage: str, variant: str | None, backend: str, job_id: str, **fields: Any) -> JobRecord:
        """Register a fresh submission of ``key`` (keeping the ids of its earlier jobs)."""
        for name in ("stdout", "stderr"):
            if fields.get(name) and Path(fields[name]).is_absolute():
                fields[name] = os.path.relpath(fields[name], self.workdir.root)
        old = self.get(key)
        history = [*old.history, old.job_id] if old and old.job_id and old.job_id != job_id else (old.history if old else [])
        return self.put(JobRecord(
            key=key, stage=stage, variant=variant, backend=backend, job_id=job_id,
            submissions=(old.submissions if old else 0) + 1, history=history, **fields,
        ))
