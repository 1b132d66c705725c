"""Ray inside a Slurm allocation: free ports per node, and the search as a job of the graph on the dev cluster."""

from __future__ import annotations

import socket

import pytest

from ctsl_hpc.launch import ray_cluster
from ctsl_hpc.launch.job_registry import Registry
from ctsl_hpc.workdir import Workdir
from tests.helpers import cli


def test_ray_ports_are_free_distinct_and_outside_each_others_worker_range():
    first, second = ray_cluster.RayPorts.pick(), ray_cluster.RayPorts.pick()
    for ports in (first, second):
        singles = [ports.gcs, ports.node_manager, ports.object_manager, ports.runtime_env_agent,
                   ports.dashboard_agent_grpc, ports.dashboard_agent_listen, ports.metrics_export]
        assert len(set(singles)) == len(singles)
        assert not any(ports.min_worker <= p <= ports.max_worker for p in singles)
        for port in (ports.gcs, ports.min_worker, ports.max_worker):
            with socket.socket() as sock:
                sock.bind(("", port))  # nobody listens there
    head = first.start_args(head=True)
    assert f"--port={first.gcs}" in head and not any(a.startswith("--port=") for a in first.start_args(head=False))


@pytest.mark.slow
@pytest.mark.cluster
def test_a_search_on_slurm_is_a_job_of_the_graph_that_status_logs_cancel_and_resume_manage(
    slurm_cluster, tiny_overrides, tmp_path
):
    workdir = Workdir(tmp_path / "tune")
    overrides = [
        *tiny_overrides(workdir.root), "tune.num_samples=3", "tune.max_t=2", "tune.brackets=1", "tune.noise_minutes=[0.25,1.0]",
        "tune.final_variants=[RM+TL+CL]", "tune.max_concurrent=1",
        "tune.reuse_actors=false",  # a fresh process per trial (the other search tests reuse one): still running at the cancel
        f"slurm.cpus_per_task={slurm_cluster.cpus_per_node}",
        "slurm.mem_gb=2", "slurm.time_min=30", "tracking.enabled=false",
    ]
    dry = cli("sweep", "--tune", "--dry-run", "--cluster", "slurm", *overrides)
    assert dry.returncode == 0, dry.stderr
    assert "tune: submit [search]" in dry.stdout and "3 trials of RM+TL+CL" in dry.stdout, dry.stdout
    assert not workdir.root.exists()  # the dry run ran and submitted nothing

    out = cli("sweep", "--tune", "--cluster", "slurm", *overrides)
    assert out.returncode == 0, out.stderr
    registry = Registry(workdir.root)
    assert {r.key for r in registry.all()} == {"prepare", "teacher", "tune", "final/student/RM+TL+CL", "final/eval"}
    search = registry.get("tune").job_id

    def a_trial_reported() -> bool:
        return any(p.stat().st_size > 2 for p in (workdir.tune / "trials").glob("*/history.json"))

    slurm_cluster.wait_until(a_trial_reported, 300, "a trial's first epoch", workdir.root)
    status = cli("status", "--workdir", workdir.root, check=True).stdout
    assert any(line.split()[:2] == ["tune", "search"] and search in line and "RUNNING" in line
               for line in status.splitlines()), status
    header = ["trial", "lambda_tl", "lambda_cl", "noise_minutes", "state"]  # columns as wide as the trial ids
    assert "search (tune): " in status and any(line.split()[:5] == header for line in status.splitlines()), status
    assert "Ray cluster of 1 node(s)" in cli("logs", "--workdir", workdir.root, "tune", check=True).stdout

    cancelled = cli("cancel", "--workdir", workdir.root, check=True).stdout
    assert search in cancelled
    assert slurm_cluster.wait_for(search) == "CANCELLED"
    resumed = cli("resume", "--workdir", workdir.root)  # a search goes on as a search, on Slurm where it ran
    assert resumed.returncode == 0 and "tune: submitted search=" in resumed.stdout, resumed.stdout + resumed.stderr
    again = Registry(workdir.root).get("tune")
    assert again.job_id != search and again.history == [search]
    final = Workdir(workdir.final)
    slurm_cluster.wait_until(lambda: final.report.done.is_file(), 600, "the final evaluation", workdir.root)
    log = "".join(p.read_text() for p in Registry(workdir.root).logs(Registry(workdir.root).get("tune")))
    assert "continuing the search in" in log  # restored, not started again
    assert final.report.table1_md.is_file() and workdir.best_config.is_file()
    status = cli("status", "--workdir", workdir.root, check=True).stdout
    assert "3 of 3 trials started" in status and "running or waiting" not in status, status
