"""The embedded default: every task runs in this process, in graph order; a failing task raises at once."""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence

from ctsl_hpc.launch.backends.base import Backend, register
from ctsl_hpc.launch.task import Task, run_task


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
            run_task(task)
            ids.append(job_id)
        return ids
