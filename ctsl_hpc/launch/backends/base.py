"""The one interface every scheduler backend implements, and the registry the CLI picks them from.

Like submitit's core/local/slurm split: a backend receives the tasks of one stage of the job graph
(:mod:`ctsl_hpc.launch.graph`) with the job ids they must wait for, and runs or submits them; it
never asks what a task is. A new scheduler (PBS, LSF, Flux) is one module with a :class:`Backend`
subclass and one :func:`register` call; ``--cluster <name>`` then selects it.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from ctsl_hpc.config import ExperimentConfig
from ctsl_hpc.launch.job_registry import JobUsage, Registry
from ctsl_hpc.workdir import Workdir

if TYPE_CHECKING:
    from ctsl_hpc.launch.task import Task


class Backend(abc.ABC):
    """Runs or submits the tasks of a sweep, one stage at a time."""

    name: ClassVar[str]
    blocking: ClassVar[bool] = False  # True: submit returns once the tasks have run (nothing to follow)

    def __init__(self, workdir: Workdir, cfg: ExperimentConfig):
        self.workdir, self.cfg = workdir, cfg
        self.registry = Registry(workdir.root)

    def check_config(self) -> None:
        """Raise if the configuration does not suit this backend (checked without contacting anything,
        also for ``--dry-run``)."""

    def check(self) -> None:
        """Raise if this backend cannot run the configured sweep from here (missing tools, unknown settings)."""
        self.check_config()

    @abc.abstractmethod
    def submit(self, stage: str, tasks: Sequence[Task], after: Sequence[str]) -> list[str]:
        """Start ``tasks`` (all of one stage) once the jobs ``after`` succeeded; return their job ids."""

    def job_states(self, job_ids: Sequence[str]) -> dict[str, str]:
        """The current state of each job id this backend still knows (``RUNNING``, ``COMPLETED``, ...)."""
        return {}

    def usage(self, job_ids: Sequence[str]) -> dict[str, JobUsage]:
        """Accounting per job id (elapsed time, GPU-hours), where the scheduler keeps it."""
        return {}

    def cancel(self, job_ids: Sequence[str]) -> None:
        """Stop these jobs (queued or running)."""

    def describe(self, stage: str, tasks: Sequence[Task], waits_for: str) -> list[str]:
        """Lines a dry run prints for a stage it would submit (resources, dependencies, scripts)."""
        return []

    @property
    def usage_metrics(self) -> Callable[[Path], Mapping[str, float]] | None:
        """A picklable ``f(workdir)`` of the sweep's usage metrics for MLflow (e.g. GPU-hours), or None."""
        return None


_BACKENDS: dict[str, type[Backend]] = {}


def register(backend: type[Backend]) -> type[Backend]:
    """Make ``backend`` selectable as ``--cluster <backend.name>`` (usable as a class decorator)."""
    _BACKENDS[backend.name] = backend
    return backend


def backend_class(name: str) -> type[Backend]:
    """The backend registered as ``name``."""
    try:
        return _BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown cluster {name!r} (one of {backend_names()})") from None


def backend_names() -> list[str]:
    """Every registered backend name."""
    return list(_BACKENDS)


def make_backend(name: str, workdir: Workdir, cfg: ExperimentConfig) -> Backend:
    """The backend ``name`` for this work directory and configuration."""
    return backend_class(name)(workdir, cfg)
