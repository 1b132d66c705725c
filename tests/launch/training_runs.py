"""Checks shared by the tests that train on the dev Slurm: jobs' state and logs, runs compared to a reference."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import torch

from ctsl_hpc.config import ExperimentConfig, load_config
from ctsl_hpc.launch.backends.slurm import SlurmBackend
from ctsl_hpc.launch.job_registry import Registry
from ctsl_hpc.model import load_weights
from ctsl_hpc.run_records import read_history
from ctsl_hpc.workdir import RunDir, Workdir
from tests.launch.cluster import sweep_task

RESUMED = re.compile(r"resumed from step-(\d+) \(epoch (\d+), batch (\d+)\)")


def finished(workdir: Path, key: str) -> bool:
    """True once the job of ``key`` completed; an AssertionError once it failed."""
    record = Registry(workdir).get(key)
    if record is not None and record.state == "FAILED":
        raise AssertionError(f"{key} failed: {record.message}")
    return record is not None and record.state == "COMPLETED"


def task_log(workdir: Path, job_id: str, rank: int) -> Path:
    """The stdout of one rank (Slurm task) of a job."""
    return workdir / "slurm" / job_id / f"{job_id}_{rank}_log.out"


def submit(workdir: Path, cfg: ExperimentConfig, key: str) -> str:
    """Submit the sweep task ``key`` alone (no dependency) to Slurm; its job id."""
    task = sweep_task(workdir, cfg, key)
    (job_id,) = SlurmBackend(Workdir(workdir), cfg).submit(task.stage, [task], [])
    return job_id


def copy_with_teacher(source: Path, dest: Path, overrides: list[str]) -> tuple[Path, ExperimentConfig]:
    """A new work directory with ``source``'s trained teacher and statistics, configured by ``overrides``."""
    dest.mkdir(parents=True)
    shutil.copy2(source / "waveform_stats.json", dest / "waveform_stats.json")
    shutil.copytree(source / "teacher", dest / "teacher")  # no cache/: every rank embeds (atomic writes)
    cfg = load_config(None, [*overrides, f"workdir={dest}"])
    Workdir.open(cfg, dest)
    return dest, cfg


def epoch_weights(run_dir: Path, epoch: int) -> dict[str, torch.Tensor]:
    return load_weights(RunDir(run_dir).epoch_dir(epoch))


def history(run_dir: Path) -> list[dict]:
    return read_history(RunDir(run_dir).history).to_list()


def assert_close_runs(ours: Path, reference: Path, epochs: int) -> None:
    """Same losses, dev CCC and weights within fp32 tolerance (summation order differs across ranks)."""
    mine, ref = history(ours), history(reference)
    assert [r["epoch"] for r in mine] == [r["epoch"] for r in ref] == list(range(1, epochs + 1))
    for a, b in zip(mine, ref):
        assert a["losses"].keys() == b["losses"].keys()
        np.testing.assert_allclose([a["losses"][k] for k in a["losses"]], [b["losses"][k] for k in a["losses"]], rtol=1e-5)
        np.testing.assert_allclose(a["dev_ccc"], b["dev_ccc"], atol=1e-4)
    for epoch in range(1, epochs + 1):
        a, b = epoch_weights(ours, epoch), epoch_weights(reference, epoch)
        assert a.keys() == b.keys()
        for name in a:
            torch.testing.assert_close(a[name], b[name], atol=2e-5, rtol=1e-4, msg=f"epoch {epoch} {name}")


def assert_identical_runs(ours: Path, reference: Path, epochs: int) -> None:
    """The same history and bitwise the same weights at every epoch."""
    assert history(ours) == history(reference)
    for epoch in range(1, epochs + 1):
        a, b = epoch_weights(ours, epoch), epoch_weights(reference, epoch)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), f"epoch {epoch}"
