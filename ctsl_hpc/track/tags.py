"""Tags that say where a run ran: package version, git commit, host, and what the job's launcher adds.

Torch- and MLflow-free: launchers import it to hand their tags (e.g. Slurm ids) to the runs a job opens.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import ctsl_hpc
from ctsl_hpc.code import package_hash

RUN_TAGS_ENV = "CTSL_RUN_TAGS"  # JSON tags a launcher exports for every run of its job (and its Ray workers)


def context_tags() -> dict[str, str]:
    """Package version, the content hash of the code running (:mod:`ctsl_hpc.code`), git commit, host, and
    the tags the job's launcher exported in ``$CTSL_RUN_TAGS``."""
    tags = {"ctsl.version": ctsl_hpc.__version__, "ctsl.code_hash": package_hash(), "ctsl.host": socket.gethostname()}
    package_dir = Path(ctsl_hpc.__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=package_dir, capture_output=True, text=True, timeout=5
        )
        if commit.returncode == 0:
            tags["mlflow.source.git.commit"] = commit.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    tags.update(json.loads(os.environ.get(RUN_TAGS_ENV) or "{}"))
    return tags
