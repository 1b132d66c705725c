"""Ray Tune across hosts: ``sweep --tune --cluster slurm slurm.tune.nodes=2`` on the multi-node dev Slurm.

The search's job (a task of the graph, after the prepare and teacher jobs) takes two nodes: the first
runs the Ray head and the search, the second a Ray worker (one CPU each: one trial per node at a time). Once a trial on the worker node has a complete checkpoint,
every Ray process on that node is killed (-9): the trial fails there and Tune retries it
(``tune.max_failures``) from its checkpoint on the head node's CPU, and the search, the final
students and the report finish on the head alone. Every trial reports to a real MLflow server
on the nodes' bridge.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ctsl_hpc.launch.job_registry import Registry
from ctsl_hpc.launch.ray_cluster import DONE_FILE
from ctsl_hpc.train.checkpoint import complete_checkpoints
from ctsl_hpc.workdir import RunDir, Workdir
from tests.launch.cluster import SlurmCluster

pytestmark = [pytest.mark.multinode, pytest.mark.slow]

MAX_T = 4


def _trials(workdir: Workdir) -> dict[str, RunDir]:
    root = workdir.root / "tune" / "trials"
    return {p.name: RunDir(p) for p in sorted(root.iterdir())} if root.is_dir() else {}


def _ray_processes(cluster: SlurmCluster, node: str) -> list[int]:
    """The Ray processes on ``node`` (``ray start``, raylet, workers), not the job's own task."""
    record = (cluster.state_dir / "etc" / "network").read_text().split()
    netns = next(name for name in record if name.endswith(f"-{node}"))
    pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True, check=True).stdout.split()
    found = []
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "ray" in cmdline and "submitit" not in cmdline and "slurm" not in cmdline:
            found.append(int(pid))
    return found


def test_trials_run_on_both_hosts_and_the_search_survives_losing_the_worker(
    multinode_cluster: SlurmCluster, bridge_mlflow, tiny_overrides, tmp_path
):
    workdir = Workdir(tmp_path / "tune")
    experiment = "multinode-tune"
    overrides = [
        *tiny_overrides(workdir.root), "tune.num_samples=4", f"tune.max_t={MAX_T}", "tune.grace_period=2", "tune.brackets=1",
        "tune.noise_minutes=[0.25,1.0]", "tune.final_variants=[RM]", "tune.cpus_per_trial=1", "tune.max_failures=2",
        "slurm.tune.nodes=2", "slurm.cpus_per_task=1", "slurm.mem_gb=2", "slurm.time_min=30",
        "slurm.additional={exclude: node3}", "tracking.enabled=true", f"tracking.uri={bridge_mlflow.url}",
        f"tracking.experiment={experiment}",
    ]
    # the tests keep every other Ray on loopback (tests/conftest.py); the job would inherit that through sbatch
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    env["HF_HUB_OFFLINE"] = "1"
    out = subprocess.run([sys.executable, "-m", "ctsl_hpc.launch", "sweep", "--tune", "--cluster", "slurm",
                          "--workdir", workdir.root, *overrides], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    job = Registry(workdir.root).get("tune").job_id

    def worker_trial_checkpointed() -> bool:
        if multinode_cluster.job_state(job).split()[0] in ("FAILED", "CANCELLED", "COMPLETED", "TIMEOUT"):
            raise AssertionError(f"job {job} ended before a trial ran on node2")
        for run in _trials(workdir).values():
            starts = run.starts()
            if starts and starts[-1]["hosts"] == ["node2"] and complete_checkpoints(run.path) and not run.done.is_file():
                return True
        return False

    multinode_cluster.wait_until(worker_trial_checkpointed, 600, "a trial on node2 with a checkpoint", workdir.root)
    for pid in _ray_processes(multinode_cluster, "node2"):
        os.kill(pid, signal.SIGKILL)
    final = Workdir(workdir.final)
    multinode_cluster.wait_until(lambda: final.report.done.is_file(), 900, "the search, the final students and the "
                                 "report", workdir.root)
    assert multinode_cluster.wait_for_sacct(job, "COMPLETED")
    log = "".join(p.read_text() for p in Registry(workdir.root).logs(Registry(workdir.root).get("tune")))
    assert "Ray cluster of 2 node(s)" in log
    assert (workdir.ray / job / DONE_FILE).is_file()
    assert Workdir(workdir.final).report.table1_md.is_file()

    trials = _trials(workdir)
    hosts = {run_id: [s["hosts"][0] for s in run.starts()] for run_id, run in trials.items()}
    assert {h for trail in hosts.values() for h in trail} == {"node1", "node2"}, hosts
    moved = [run_id for run_id, trail in hosts.items() if trail[:1] == ["node2"] and "node1" in trail]
    assert moved, f"no trial lost on node2 was retried on node1: {hosts}"
    for run_id in moved:
        retry = trials[run_id].starts()[-1]
        assert retry["resumed_step"] is not None, f"{run_id} restarted from scratch: {trials[run_id].starts()}"

    client = MlflowClient(bridge_mlflow.url)
    tracked = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    names = [r.info.run_name for r in tracked if r.info.run_name.startswith("trial/")]
    assert sorted(names) == sorted(f"trial/{t}" for t in trials), names  # one run per trial, retried or not
    hosts_tagged = {r.data.tags.get("ctsl.host") for r in tracked if r.info.run_name.startswith("trial/")}
    assert "node1" in hosts_tagged
