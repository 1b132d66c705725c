"""The one-node dev Slurm (slurm/dev-cluster): jobs, accounting, GPUs, preemption and submitit on it."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import cloudpickle
import pytest
import submitit

if TYPE_CHECKING:
    from conftest import SlurmCluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(150)]

# Jobs unpickle this module's functions and classes in a fresh interpreter that cannot import it.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def wait_for_file(path: Path, timeout_s: float = 60) -> str:
    """Poll until `path` exists and is not empty; return its text."""
    deadline = time.monotonic() + timeout_s
    while not (path.exists() and path.stat().st_size > 0):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} not written within {timeout_s} s")
        time.sleep(0.1)
    return path.read_text()


def trapping_script(folder: Path, partition: str, cpus: int) -> Path:
    """A batch script that marks each run's start, waits, and records USR2 per run (SLURM_RESTART_COUNT).

    The first run waits up to 5 minutes for a signal; a requeued run exits at once. Like submitit,
    it ignores the SIGTERM that Slurm sends right after the preemption signal.
    """
    script = folder / "trap.sh"
    script.write_text(
        f"""#!/bin/bash
#SBATCH --partition={partition} --cpus-per-task={cpus} --signal=B:USR2@60
#SBATCH --output={folder}/out-%j.txt --open-mode=append
run=${{SLURM_RESTART_COUNT:-0}}
trap 'echo usr2 > {folder}/usr2.$run; exit 0' USR2
trap '' TERM
echo started > {folder}/started.$run
[ "$run" -ge 1 ] && exit 0
sleep 300 &
wait
"""
    )
    return script


def test_cluster_declares_partitions_gpus_and_array_limit(slurm_cluster: SlurmCluster) -> None:
    assert slurm_cluster.partitions == ("debug", "high")
    assert (slurm_cluster.default_partition, slurm_cluster.high_partition) == ("debug", "high")
    sinfo = subprocess.run(["sinfo", "-h", "-o", "%P %G"], capture_output=True, text=True, check=True).stdout
    assert sinfo.split() == ["debug*", f"gpu:{slurm_cluster.gpus_per_node}", "high", f"gpu:{slurm_cluster.gpus_per_node}"]
    too_big = subprocess.run(
        ["sbatch", f"--array=0-{slurm_cluster.max_array_size}", "--output=/dev/null", "--wrap", "true"],
        capture_output=True,
        text=True,
    )
    assert too_big.returncode != 0 and "array" in too_big.stderr.lower()


def test_sbatch_job_completes_and_sacct_reports_state_and_elapsed(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    token = f"{random.getrandbits(64):x}"
    job = slurm_cluster.sbatch("--output", str(tmp_path / "out.txt"), "--wrap", f"sleep 1; echo {token}")
    assert slurm_cluster.wait_for(job) == "COMPLETED"
    rows = slurm_cluster.wait_for_sacct(job, "COMPLETED")
    assert [(r["JobID"], r["Partition"], r["ExitCode"]) for r in rows] == [(job, "debug", "0:0")]
    assert int(rows[0]["ElapsedRaw"]) >= 1
    assert (tmp_path / "out.txt").read_text().strip() == token


def test_concurrent_gpu_jobs_get_distinct_cuda_visible_devices(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    gpus = slurm_cluster.gpus_per_node
    seen = tmp_path / "devices"
    seen.mkdir()
    jobs = []
    for i in range(gpus):
        # Each job records its device, then waits for all others so that they provably overlap.
        script = f"echo $CUDA_VISIBLE_DEVICES > {seen}/{i}; until [ $(ls {seen} | wc -l) -ge {gpus} ]; do sleep 0.1; done"
        jobs.append(
            slurm_cluster.sbatch(
                "--gpus-per-node=1", "--cpus-per-task=1", "--time=2", "--output", f"{tmp_path}/out-{i}.txt", "--wrap", script
            )
        )
    assert [slurm_cluster.wait_for(job) for job in jobs] == ["COMPLETED"] * gpus
    devices = sorted((seen / str(i)).read_text().strip() for i in range(gpus))
    assert devices == [str(i) for i in range(gpus)]


def test_high_partition_job_preempts_debug_job_which_gets_usr2_and_is_requeued(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    cpus = slurm_cluster.cpus_per_node
    low = slurm_cluster.sbatch(str(trapping_script(tmp_path, slurm_cluster.default_partition, cpus)))
    wait_for_file(tmp_path / "started.0")
    high = slurm_cluster.sbatch(
        "--partition", slurm_cluster.high_partition, "--cpus-per-task", str(cpus),
        "--output", str(tmp_path / "high.txt"), "--wrap", "true",
    )
    assert wait_for_file(tmp_path / "usr2.0").strip() == "usr2"
    assert slurm_cluster.wait_for(high) == "COMPLETED"
    assert slurm_cluster.wait_for(low) == "COMPLETED"
    assert (tmp_path / "started.1").exists() and not (tmp_path / "usr2.1").exists()
    rows = slurm_cluster.wait_for_sacct(low, "COMPLETED")
    assert [r["State"] for r in rows] == ["PREEMPTED", "COMPLETED"]


def test_scancel_signal_usr2_reaches_the_batch_script(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    job = slurm_cluster.sbatch(str(trapping_script(tmp_path, slurm_cluster.default_partition, 1)))
    wait_for_file(tmp_path / "started.0")
    subprocess.run(["scancel", "--batch", "--signal=USR2", job], check=True)
    assert slurm_cluster.wait_for(job) == "COMPLETED"
    assert (tmp_path / "usr2.0").read_text().strip() == "usr2"


def weighted_sum(values: list[int], weight: int) -> int:
    """A plain function for a submitit job."""
    return weight * sum(values)


class StepCounter(submitit.helpers.Checkpointable):
    """Counts steps, slowly until its first checkpoint, and logs the step count at each (re)start."""

    def __init__(self) -> None:
        self.steps_done = 0
        self.checkpoints = 0

    def __call__(self, steps: int, start_log: str) -> tuple[int, int]:
        with open(start_log, "a") as log:
            log.write(f"{self.steps_done}\n")
        while self.steps_done < steps:
            self.steps_done += 1
            if self.checkpoints == 0:
                time.sleep(0.01)
        return self.steps_done, self.checkpoints

    def checkpoint(self, steps: int, start_log: str) -> submitit.helpers.DelayedSubmission:
        self.checkpoints += 1
        return super().checkpoint(steps, start_log)


def slurm_executor(folder: Path, partition: str) -> submitit.AutoExecutor:
    """An AutoExecutor that must pick the Slurm backend."""
    executor = submitit.AutoExecutor(folder=folder)
    assert executor.cluster == "slurm"
    executor.update_parameters(slurm_partition=partition, timeout_min=15, cpus_per_task=1)
    return executor


def test_submitit_job_returns_the_function_result(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    values = [random.randrange(1000) for _ in range(10)]
    weight = random.randrange(1, 10)
    job = slurm_executor(tmp_path, slurm_cluster.default_partition).submit(weighted_sum, values, weight)
    assert job.result() == weight * sum(values)
    assert slurm_cluster.wait_for_sacct(job.job_id, "COMPLETED")


def test_submitit_checkpointable_resumes_its_state_after_usr2(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    steps = 30_000  # about 5 minutes at the slow pace of the first run: it is signalled long before
    start_log = tmp_path / "starts.txt"
    job = slurm_executor(tmp_path, slurm_cluster.default_partition).submit(StepCounter(), steps, str(start_log))
    wait_for_file(start_log)
    subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True)
    assert job.result() == (steps, 1)
    first, resumed = (int(n) for n in start_log.read_text().split())
    assert first == 0 and 0 < resumed < steps
    assert [r["State"] for r in slurm_cluster.wait_for_sacct(job.job_id, "COMPLETED")][-1] == "COMPLETED"
