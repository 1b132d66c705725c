"""``python -m ctsl_hpc.launch ray-node``: a search's whole job graph inside one hand-made allocation.

``launch/ray-on-slurm.sh`` starts one task per node (``srun``): the first node runs the graph's tasks
here, one after the other (prepare, teacher, the search with every node's Ray, the final students and
their evaluation), the others serve as Ray workers during the search
(:func:`ctsl_hpc.launch.ray_cluster.run_in_allocation`). Preempted, the job requeues itself and the
rerun goes on where it stopped.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Sequence

from ctsl_hpc.atomic_io import atomic_write_text
from ctsl_hpc.launch import slurm_env
from ctsl_hpc.launch.ray_cluster import DONE_FILE, run_in_allocation
from ctsl_hpc.launch.slurm_job import log_code_origin
from ctsl_hpc.logs import setup_logging
from ctsl_hpc.workdir import Workdir

log = logging.getLogger(__name__)


def ray_node(workdir: str, config: str | None = None, overrides: Sequence[str] = ()) -> int:
    """The program of every node; the first node's exit status: 0, or 3 when stopped to be requeued."""
    from ctsl_hpc.config import load_config
    from ctsl_hpc.launch.backends.local import LocalBackend
    from ctsl_hpc.launch.graph import submit_sweep
    from ctsl_hpc.train.interface import TrainingInterrupted

    setup_logging()
    slurm_env.export_run_tags()
    log_code_origin()
    root = Workdir(workdir)
    job = slurm_env.job_id() or "local"
    if slurm_env.task_rank() != 0:  # a Ray worker for the search, whenever it starts
        return run_in_allocation(lambda _address: 0, root.ray / job, timeout_s=float("inf"))
    if config is None and not overrides:
        cfg = root.read_config()
    else:
        cfg = load_config(config, list(overrides))
        cfg.workdir = str(root.root)
    os.umask(cfg.file_mask)
    try:
        with root.lock("ray-node"):
            workdir_ = Workdir.open(cfg)
            workdir_.record_sweep(search=True, backend=None)  # resumed by submitting the allocation again
            submit_sweep(workdir_, cfg, LocalBackend(workdir_, cfg), search=True)
    except TrainingInterrupted:
        if slurm_env.job_id():
            log.warning("preempted: requeueing job %s (the rerun goes on where it stopped)", job)
            subprocess.run(["scontrol", "requeue", job], check=False)
        return 3
    finally:
        (root.ray / job).mkdir(parents=True, exist_ok=True)
        atomic_write_text(root.ray / job / DONE_FILE, "done\n")  # workers still waiting for a search: leave
    print(root.final.joinpath("report", "table1.md").read_text(), flush=True)
    return 0
