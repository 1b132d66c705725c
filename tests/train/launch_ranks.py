"""Running a test worker on several CPU ranks with ``torchrun`` (gloo), as the distributed tests do.

DeepSpeed's one JIT op (the shared-memory collective) is cached in ``TORCH_EXTENSIONS_DIR`` (tests/conftest.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from ctsl_hpc.processes import free_port

REPO = Path(__file__).resolve().parents[2]


def launch(worker: Path, nproc: int, run_dir: Path, overrides: list[str], *args: str) -> dict:
    """Run ``worker`` on ``nproc`` ranks; return what rank 0 wrote."""
    out = run_dir.with_suffix(".pt")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "CI": "1",
    }
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS"):
        env.pop(key, None)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(worker),
        "--run-dir", str(run_dir), "--out", str(out), *args, "--overrides", *overrides,
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return torch.load(out, weights_only=False)
