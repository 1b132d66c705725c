"""Ray inside a Slurm allocation: free ports per node, and `sweep --tune` as one job on the dev cluster."""

from __future__ import annotations

import socket

import pytest

from ctsl_hpc.launch import ray_cluster


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
def test_tune_sweep_runs_as_one_allocation_with_ray_on_its_node(slurm_cluster, tiny_overrides, tmp_path):
    import yaml

    from ctsl_hpc.config import SWEEP_CONFIG, load_config
    from ctsl_hpc.workdir import Workdir

    workdir = tmp_path / "tune"
    cfg = load_config(SWEEP_CONFIG, [
        *tiny_overrides(workdir), "tune.num_samples=2", "tune.max_t=2", "tune.noise_minutes=[0.25,1.0]",
        "tune.final_variants=[RM+TL+CL]", f"slurm.cpus_per_task={slurm_cluster.cpus_per_node}", "slurm.mem_gb=4",
        "slurm.time_min=30",
    ])
    job = ray_cluster.submit(cfg, Workdir.open(cfg))
    assert job.result() == 0, job.stderr()
    rendezvous = workdir / "ray" / job.job_id
    assert (rendezvous / ray_cluster.DONE_FILE).is_file() and not (rendezvous / ray_cluster.ADDRESS_FILE).exists()
    assert "Ray cluster of 1 node(s)" in job.stderr()
    best = yaml.safe_load(Workdir(workdir).best_config.read_text())
    assert best["params"]["noise_minutes"] in (0.25, 1.0)
    assert Workdir(Workdir(workdir).final).report.table1_md.is_file()
