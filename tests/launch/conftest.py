"""The dev Slurm fixtures: a real Slurm (slurm/dev-cluster/start.sh) started once per test session.

- ``slurm_cluster``: one compute node, this host (tests marked ``@pytest.mark.cluster``);
- ``multinode_cluster``: three compute nodes ``node1``..``node3``, each its own host (network, UTS
  and mount namespace), the host filesystem shared (tests marked ``@pytest.mark.multinode``). Jobs
  take two of them; the third lets a test fail a node without touching the other tests' jobs.

Each is started the first time a module asks for it and stopped at the end of the session. While a
module uses one, ``SLURM_CONF`` in ``os.environ`` points at it, so ``sbatch``, ``sacct`` and submitit
subprocesses talk to it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.launch.cluster import DEV_CLUSTER, SlurmCluster, describe, free_port_base
from tests.mlflow_fixtures import MlflowServer


@contextlib.contextmanager
def _dev_cluster(nodes: int) -> Iterator[SlurmCluster]:
    """A fresh dev Slurm cluster of ``nodes`` compute nodes, stopped (namespaces and links removed) at the end.

    Its state lives in a new /tmp/ctsl-slurm-test-* folder (munged needs every parent traversable by
    all, which pytest's own tmp folders are not); the logs stay there, the database is removed.
    """
    if os.geteuid() != 0:
        pytest.skip("the dev Slurm cluster runs munged, slurmctld and slurmd as root")
    state = Path(tempfile.mkdtemp(prefix=f"ctsl-slurm-test-{nodes}n-", dir="/tmp"))
    state.chmod(0o755)
    # each pytest-xdist worker searches its own port range: two workers starting clusters at once never pick the same
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    env = {**os.environ, "CTSL_SLURM_STATE": str(state), "CTSL_SLURM_PORT": str(free_port_base(6817 + 100 * worker))}
    env.pop("SLURM_CONF", None)
    start = [str(DEV_CLUSTER / "start.sh"), "--nodes", str(nodes)]
    started = subprocess.run(start, env=env, capture_output=True, text=True, timeout=900)
    try:
        if started.returncode != 0:
            pytest.fail(f"slurm/dev-cluster/start.sh --nodes {nodes} failed ({started.returncode}):\n{started.stderr}")
        yield describe(state)
    finally:
        subprocess.run([str(DEV_CLUSTER / "stop.sh")], env=env, capture_output=True, timeout=300)
        shutil.rmtree(state / "mariadb", ignore_errors=True)


@contextlib.contextmanager
def _pointed_at(cluster: SlurmCluster) -> Iterator[SlurmCluster]:
    """``SLURM_CONF`` (and ``CTSL_SLURM_STATE``) of ``os.environ`` name ``cluster`` meanwhile."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SLURM_CONF", str(cluster.conf))
        env.setenv("CTSL_SLURM_STATE", str(cluster.state_dir))
        yield cluster


@pytest.fixture(scope="session")
def _one_node_cluster() -> Iterator[SlurmCluster]:
    with _dev_cluster(1) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def _multinode_cluster() -> Iterator[SlurmCluster]:
    with _dev_cluster(3) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def slurm_cluster(_one_node_cluster: SlurmCluster) -> Iterator[SlurmCluster]:
    """The one-node dev cluster (started once per session), ``SLURM_CONF`` pointing at it for the module."""
    with _pointed_at(_one_node_cluster) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def bridge_mlflow(multinode_cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real MLflow server where the multi-node cluster's jobs reach it: on the nodes' bridge address."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-bridge"), host=multinode_cluster.service_host)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def multinode_cluster(_multinode_cluster: SlurmCluster) -> Iterator[SlurmCluster]:
    """The three-node dev cluster (started once per session), ``SLURM_CONF`` pointing at it for the module."""
    with _pointed_at(_multinode_cluster) as cluster:
        yield cluster
