"""Running a test worker on several CPU ranks (gloo), as the distributed tests do.

The ranks are started here with the ``env://`` variables a launcher exports (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), as the Slurm backend's tasks get them; ``torchrun=True``
starts them through ``torchrun`` instead (its elastic agent is one more Python process per launch, so only
one test uses it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from ctsl_hpc.processes import free_port

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 600
RANK_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                  "SLURM_PROCID", "SLURM_NTASKS")  # fmt: skip


def launch(worker: Path, nproc: int, run_dir: Path, overrides: list[str], *args: str, torchrun: bool = False) -> dict:
    """Run ``worker`` on ``nproc`` ranks; return what rank 0 wrote."""
    out = run_dir.with_suffix(".pt")
    env = {key: value for key, value in os.environ.items() if key not in RANK_VARIABLES}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", CI="1")
    port = str(free_port())
    worker_args = [str(worker), "--run-dir", str(run_dir), "--out", str(out), *args, "--overrides", *overrides]
    if torchrun:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                   "--master_addr", "127.0.0.1", "--master_port", port, *worker_args]  # fmt: skip
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    else:
        _run_ranks([sys.executable, *worker_args], nproc, env, port, run_dir.with_suffix(".log"))
    return torch.load(out, weights_only=False)


def _run_ranks(command: list[str], nproc: int, env: dict[str, str], port: str, log: Path) -> None:
    """Start ``nproc`` ranks of ``command`` (their output in ``log``.<rank>) and wait for all of them; a
    rank that fails ends the others (they would wait in a collective until the timeout)."""
    world = {"WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
    logs = [log.with_name(f"{log.name}.{rank}") for rank in range(nproc)]
    log.parent.mkdir(parents=True, exist_ok=True)
    ranks = []
    for rank in range(nproc):
        with open(logs[rank], "wb") as out:  # the rank writes through its own copy of the descriptor
            ranks.append(subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                          env={**env, **world, "RANK": str(rank), "LOCAL_RANK": str(rank)}))
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while any(p.poll() is None for p in ranks):
            failed = [r for r, p in enumerate(ranks) if p.poll() not in (None, 0)]
            assert not failed and time.monotonic() < deadline, _tails(logs, "rank failed" if failed else "timeout")
            time.sleep(0.1)  # polling the ranks: one that fails must end the others
        assert all(p.returncode == 0 for p in ranks), _tails(logs, "rank failed")
    finally:
        for p in ranks:
            if p.poll() is None:
                p.kill()
                p.wait()


def _tails(logs: list[Path], what: str) -> str:
    return what + "\n" + "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in logs)
