"""The multi-node dev Slurm (``slurm/dev-cluster/start.sh --nodes N``): separate hosts, and a clean stop."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.launch.cluster import DEV_CLUSTER, SlurmCluster, free_port_base

pytestmark = [pytest.mark.multinode, pytest.mark.timeout(240)]


def test_a_two_node_job_step_runs_on_two_hosts_that_resolve_each_other(multinode_cluster: SlurmCluster, tmp_path):
    assert multinode_cluster.nodes == ("node1", "node2", "node3")
    out = tmp_path / "out.txt"
    script = "srun hostname; srun bash -c 'getent hosts node1 node2 | sort | tr -s \" \\t\" \" \"'"
    job = multinode_cluster.sbatch("-N2", "--output", str(out), "--error", str(tmp_path / "srun.err"), "--wrap", script)
    assert multinode_cluster.wait_for(job) == "COMPLETED"
    # the steps' output alone: srun's own notes (a step waiting for nodes the one before still holds) go to stderr
    lines = out.read_text().splitlines()
    hosts = lines[:2]
    assert len(set(hosts)) == 2 and set(hosts) <= set(multinode_cluster.nodes), lines
    resolved = lines[2:]
    subnet = multinode_cluster.service_host.rsplit(".", 1)[0]
    expected = [f"{subnet}.11 node1", f"{subnet}.12 node2"]
    assert resolved == expected * 2, resolved  # both hosts resolve both names to their bridge addresses
    rows = multinode_cluster.wait_for_sacct(job, "COMPLETED")
    nodelist = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job, "-o", "NodeList"], capture_output=True,
                              text=True, check=True).stdout.split()
    assert rows and nodelist and re.fullmatch(r"node\[\d[-,]\d\]", nodelist[-1]), nodelist


def _recorded(state: Path) -> dict[str, list[str]]:
    """What start.sh recorded making: namespaces, veths, the bridge."""
    kinds: dict[str, list[str]] = {}
    for line in (state / "etc" / "network").read_text().splitlines():
        kind, name = line.split()
        kinds.setdefault(kind, []).append(name)
    return kinds


def _present(names: list[str]) -> list[str]:
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout.split()
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    return [n for n in names if n in netns or re.search(rf"^\d+: {re.escape(n)}[@:]", links, re.M)]


def _daemon_pids(state: Path) -> list[int]:
    """The pids in the cluster's pid files (slurmctld, each node's slurmd, slurmdbd, MariaDB, munged)."""
    files = [*(state / "run").glob("*.pid"), state / "munge" / "munged.pid"]
    return [int(f.read_text().split()[0]) for f in files if f.is_file() and f.read_text().strip()]


def _running(pid: int) -> bool:
    """The process exists and has not exited (a zombie waiting for its parent has)."""
    try:
        return "\tZ" not in Path(f"/proc/{pid}/status").read_text().split("State:")[1].splitlines()[0]
    except (OSError, IndexError):
        return False


@pytest.mark.slow
def test_stop_removes_every_namespace_link_and_daemon_it_made():
    if os.geteuid() != 0:
        pytest.skip("the dev Slurm cluster runs as root")
    state = Path(tempfile.mkdtemp(prefix="ctsl-slurm-stop-", dir="/tmp"))
    state.chmod(0o755)
    env = {**os.environ, "CTSL_SLURM_STATE": str(state), "CTSL_SLURM_PORT": str(free_port_base(7300))}
    env.pop("SLURM_CONF", None)
    try:
        up = subprocess.run([DEV_CLUSTER / "start.sh", "--nodes", "2"], env=env, capture_output=True, text=True,
                            timeout=300)
        assert up.returncode == 0, up.stderr
        made = _recorded(state)
        assert [len(made[k]) for k in ("netns", "veth", "bridge")] == [2, 2, 1], made
        names = made["netns"] + made["veth"] + made["bridge"]
        assert _present(names) == names
        pids = _daemon_pids(state)
        slurmds = [int((state / "run" / f"slurmd-node{i}.pid").read_text()) for i in (1, 2)]
        assert len(pids) == 6 and set(slurmds) <= set(pids) and all(Path(f"/proc/{p}").exists() for p in pids)
        again = subprocess.run([DEV_CLUSTER / "start.sh", "--nodes", "3"], env=env, capture_output=True, text=True)
        assert again.returncode != 0 and "a cluster of 2 node(s) runs" in again.stderr

        down = subprocess.run([DEV_CLUSTER / "stop.sh"], env=env, capture_output=True, text=True, timeout=300)
        assert down.returncode == 0, down.stderr
        assert _present(names) == [] and not (state / "etc" / "network").exists()
        assert [p for p in pids if _running(p)] == []
    finally:
        subprocess.run([DEV_CLUSTER / "stop.sh", "--purge"], env=env, capture_output=True, timeout=300)
