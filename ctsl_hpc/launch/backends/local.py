"""The embedded default: every task runs in this process, in graph order; a failing task raises at once.

SIGUSR2 (what Slurm sends before a job's end, or ``kill -USR2`` by hand) asks the running task to stop
as a Slurm job's would: a training task saves a checkpoint and ends with ``TrainingInterrupted``, and
the sweep's command then exits with code 3; running it again continues.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable, Iterator, Sequence

from ctsl_hpc.launch.backends.base import Backend, register
from ctsl_hpc.launch.task import Task, run_task
from ctsl_hpc.train.interface import TrainingInterrupted

log = logging.getLogger(__name__)


@contextlib.contextmanager
def stop_on_usr2() -> Iterator[Callable[[], bool]]:
    """Meanwhile, SIGUSR2 sets the stop request the yielded function reads."""
    seen: list[int] = []

    def handler(signum: int, _frame: object) -> None:
        log.warning("received %s: stopping after the current step", signal.Signals(signum).name)
        seen.append(signum)

    previous = signal.signal(signal.SIGUSR2, handler)
    try:
        yield lambda: bool(seen)
    finally:
        signal.signal(signal.SIGUSR2, previous)


@register
class LocalBackend(Backend):
    """Runs each task here, one after the other (``sweep`` returns when the report is written)."""

    name = "local"
    blocking = True

    def submit(self, stage: str, tasks: Sequence[Task], after: Sequence[str]) -> list[str]:
        ids = []
        for task in tasks:
            job_id = f"local-{os.getpid()}"
            self.registry.new_record(task.key, task.stage, task.label or None, self.name, job_id, state="RUNNING",
                                     host=socket.gethostname(), pid=os.getpid())
            with stop_on_usr2() as should_stop:
                try:
                    run_task(task, should_stop, interruptions=(TrainingInterrupted,))
                except TrainingInterrupted:
                    self.registry.update(task.key, state="STOPPED", message="stopped on request (SIGUSR2)")
                    raise
            ids.append(job_id)
        return ids
