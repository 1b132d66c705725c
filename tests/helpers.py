"""Helpers the tests share (fixtures live in the conftest files)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str | Path, timeout: float = 600, check: bool = False) -> subprocess.CompletedProcess:
    """``python -m ctsl_hpc.launch ARGS`` in a fresh process from the checkout (hub offline), output captured;
    ``check``: fail the test unless it exits 0."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "ctsl_hpc.launch", *map(str, args)], capture_output=True, text=True,
                         env=env, timeout=timeout, cwd=REPO)
    if check:
        assert out.returncode == 0, f"{args[0]} exited {out.returncode}: {out.stderr[-3000:]}"
    return out


# What every student's MLflow run of a sweep holds beside its metrics: the same for a plain sweep's students
# (tests/track/test_pipeline.py) and a search's final students (tests/tune/test_search.py).
STUDENT_ARTIFACTS = {"config.yaml", "model", "models"}
STUDENT_TAGS = {"ctsl.run_key", "ctsl.host", "ctsl.code_hash", "mlflow.note.content", "mlflow.parentRunId", "mlflow.runName",
                "mlflow.source.name", "mlflow.runColor"}


def student_run_shape(client, run) -> tuple[set[str], set[str]]:
    """A student run's top-level artifacts, and which of :data:`STUDENT_TAGS` it carries."""
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    return artifacts, STUDENT_TAGS & set(run.data.tags)
