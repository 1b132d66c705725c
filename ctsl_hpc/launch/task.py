"""A unit of work of a sweep: a callable with its arguments, and the marker that says it is done.

Like ``submitit.Executor.submit(fn, *args)``, a task carries what it runs, so a backend runs or
submits it without knowing what it is (:mod:`ctsl_hpc.launch.backends`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctsl_hpc.launch.job_registry import Registry
from ctsl_hpc.masking import mask_text

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Task:
    """One unit of a sweep: ``fn(workdir, *args, **kwargs, should_stop=...)``, done once ``marker`` exists."""

    key: str  # registry key and tracked-run key: "teacher", "student/RM+TL", "eval" (ctsl_hpc.stage_jobs)
    stage: str  # the resource section it runs with (config.SLURM_STAGES)
    fn: Callable[..., Any]
    workdir: Path  # the callable's first argument: the sweep's work directory, or a search's final/
    marker: Path
    args: tuple[Any, ...] = ()
    label: str = ""  # what status and dry runs print (a variant)
    kwargs: tuple[tuple[str, Any], ...] = ()
    home: Path | None = None  # the sweep's work directory, whose job registry holds the task (default: workdir)

    @property
    def registry(self) -> Registry:
        """The job registry of the sweep the task belongs to."""
        return Registry(self.home or self.workdir)

    @property
    def name(self) -> str:
        return self.label or self.key

    @property
    def done(self) -> bool:
        return self.marker.is_file()

    def __call__(self, should_stop: Callable[[], bool] | None = None) -> Any:
        return self.fn(str(self.workdir), *self.args, should_stop=should_stop, **dict(self.kwargs))


def run_task(
    task: Task,
    should_stop: Callable[[], bool] | None = None,
    is_main: bool = True,
    interruptions: tuple[type[BaseException], ...] = (),
) -> Any:
    """Run ``task`` here, keeping its registry record up to date (``is_main``: this rank writes it).

    An exception in ``interruptions`` (a stop on request, handled by the caller) is not a failure.
    """
    registry = task.registry
    if is_main:
        registry.update(task.key, state="RUNNING", message="")
    try:
        result = task(should_stop)
    except interruptions:
        raise
    except BaseException as exc:
        if is_main:
            try:
                registry.update(task.key, state="FAILED", message=mask_text(f"{type(exc).__name__}: {exc}")[:500])
            except OSError:  # a full disk fails this record too: the task's own error says what happened
                log.warning("could not record %s as failed in %s", task.key, registry.dir)
        raise
    if is_main:
        registry.update(task.key, state="COMPLETED", message="")
    return result
