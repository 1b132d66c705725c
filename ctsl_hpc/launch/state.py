"""The job registry of a work directory: which job runs which stage, and how it is doing.

One JSON file per job key under ``<workdir>/jobs/`` (``teacher``, ``student/RM+TL``, ``eval``),
written atomically under a file lock by the submitting process (job id, resources, log paths) and
by the job itself (running, requeued, finished, failed with a message). The management commands
(``status``, ``logs``, ``cancel``, ``resume``) read it from any shell, after the submitter is gone.
Training progress (last epoch, best development CCC) is read from the stage's ``history.json``.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from filelock import FileLock

JOBS_DIR = "jobs"
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
    updated: float = 0.0

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL


def _file_name(key: str) -> str:
    return quote(key, safe="") + ".json"


class Registry:
    """The ``jobs/`` folder of a work directory."""

    def __init__(self, workdir: str | Path):
        self.dir = Path(workdir) / JOBS_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(self.dir / ".lock"))

    def get(self, key: str) -> JobRecord | None:
        """The record of ``key``, or None when it was never submitted."""
        path = self.dir / _file_name(key)
        if not path.is_file():
            return None
        values = json.loads(path.read_text())
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
        order = {"teacher": 0, "students": 1, "eval": 2}
        records = [self.get(unquote(p.name[: -len(".json")])) for p in self.dir.glob("*.json")]
        return sorted((r for r in records if r is not None), key=lambda r: (order.get(r.stage, 9), r.key))

    def _write(self, record: JobRecord) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-")
        with os.fdopen(fd, "w") as handle:
            json.dump(asdict(record), handle, indent=1)
        os.replace(tmp, self.dir / _file_name(record.key))


def training_progress(run_dir: Path) -> tuple[int | None, float | None]:
    """(last finished epoch, best development CCC) from a training stage's ``history.json``."""
    path = Path(run_dir) / "history.json"
    if not path.is_file():
        return None, None
    try:
        epochs = json.loads(path.read_text())
    except json.JSONDecodeError:  # being replaced right now
        return None, None
    if not epochs:
        return None, None
    return max(e["epoch"] for e in epochs), max(e["dev_score"] for e in epochs)
