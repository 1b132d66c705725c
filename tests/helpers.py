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
