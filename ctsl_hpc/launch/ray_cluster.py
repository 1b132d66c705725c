"""A Ray cluster inside one Slurm allocation, with the Tune sweep driver on its head node.

One task per node (``srun``/submitit, ``SLURM_PROCID`` = node rank): rank 0 starts ``ray start --head``,
publishes its address in ``<workdir>/ray/<job id>/address`` (shared storage), waits for every node and
runs the search (:func:`ctsl_hpc.tune.driver.search_job`); the other ranks start ``ray start --address ...`` and
stay until the head writes ``DONE``. Every port Ray opens (GCS, node manager, object manager, agents,
metrics, the worker range) is chosen free on the node instead of Ray's fixed defaults,
so two allocations sharing a node do not collide; each node's processes run in their own process group
and only those are stopped (``ray stop`` would kill every Ray of the user on the node).

``ray symmetric-run`` (Ray >= 2.49) does the same start-run-stop dance, but it refuses to start when any
Ray runs on the node, takes the GCS port from the command line and ends with ``ray stop``: on shared
nodes this module is the safer choice.

Preemption: the job's stop request (SIGUSR2, ``slurm.signal_delay_s`` before the end) becomes a stop
file the trials read; the search then ends with ``TrainingInterrupted``, the job requeues itself like
every stage's (:mod:`ctsl_hpc.launch.slurm_job`) and the rerun restores the Tune experiment from the
shared storage.

Entry points: :func:`search_task`, the job graph's search (any backend runs or submits it: on Slurm
one allocation with the ``slurm.tune`` stage's resources, one task per node), and :mod:`ctsl_hpc.launch.ray_node`
(what ``launch/ray-on-slurm.sh`` runs: the search's whole graph in one hand-made allocation).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ctsl_hpc.atomic_io import atomic_write_text, owner_only
from ctsl_hpc.launch import slurm_env
from ctsl_hpc.processes import free_port, stop_process_group
from ctsl_hpc.workdir import Workdir

log = logging.getLogger(__name__)

ADDRESS_FILE = "address"
DONE_FILE = "DONE"
TOKEN_FILE = "auth_token"
WORKER_PORTS = 200  # ports reserved for Ray's worker processes on each node


def _range_is_free(start: int, count: int) -> bool:
    for port in range(start, start + count, 7):  # spot checks: a busy range is rarely sparse
        with socket.socket() as sock:
            try:
                sock.bind(("", port))
            except OSError:
                return False
    return True


@dataclass(frozen=True)
class RayPorts:
    """Every port one Ray node listens on."""

    gcs: int
    node_manager: int
    object_manager: int
    runtime_env_agent: int
    dashboard_agent_grpc: int
    dashboard_agent_listen: int
    metrics_export: int
    min_worker: int
    max_worker: int

    @classmethod
    def pick(cls, rng: random.Random | None = None) -> RayPorts:
        """Free ports for this node (the worker range is a free block in 20000-59999)."""
        rng = rng or random.Random()
        singles = [free_port("") for _ in range(7)]
        if len(set(singles)) < len(singles):
            return cls.pick(rng)
        for _ in range(100):
            start = rng.randrange(20000, 60000 - WORKER_PORTS)
            if _range_is_free(start, WORKER_PORTS) and not any(start <= p < start + WORKER_PORTS for p in singles):
                return cls(*singles, start, start + WORKER_PORTS - 1)
        raise RuntimeError(f"no free block of {WORKER_PORTS} ports for Ray workers on {socket.gethostname()}")

    def start_args(self, head: bool) -> list[str]:
        """The ``ray start`` options that pin these ports."""
        args = [
            f"--node-manager-port={self.node_manager}",
            f"--object-manager-port={self.object_manager}",
            f"--runtime-env-agent-port={self.runtime_env_agent}",
            f"--dashboard-agent-grpc-port={self.dashboard_agent_grpc}",
            f"--dashboard-agent-listen-port={self.dashboard_agent_listen}",
            f"--metrics-export-port={self.metrics_export}",
            f"--min-worker-port={self.min_worker}",
            f"--max-worker-port={self.max_worker}",
        ]
        if head:
            args.append(f"--port={self.gcs}")
        return args


def node_resources() -> list[str]:
    """``--num-cpus``/``--num-gpus`` of this node's share of the allocation."""
    cpus = slurm_env.cpus_per_task() or len(os.sched_getaffinity(0))
    args = [f"--num-cpus={cpus}"]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        args.append(f"--num-gpus={len([d for d in visible.split(',') if d.strip()])}")
    return args


def start_node(address: str | None, ports: RayPorts, temp_dir: Path, node_ip: str) -> subprocess.Popen:
    """``ray start --block`` for a head (``address`` None) or a worker, in its own process group."""
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", f"--node-ip-address={node_ip}"]
    cmd += ["--head", "--include-dashboard=false", f"--temp-dir={temp_dir}"] if address is None else [f"--address={address}"]
    cmd += ports.start_args(head=address is None) + node_resources()
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_worker_niceness="0")  # trials: the job's own priority
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)  # the job's torch ranks (one per node) are not the trials': each trains alone
    log.info("starting Ray %s: %s", "head" if address is None else "worker", " ".join(cmd))
    return subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=_ignore_preemption_signal)


def _ignore_preemption_signal() -> None:
    """Slurm sends USR2 to every process of the job step; Ray's processes would die of it (measured):
    they inherit "ignore" instead, and the driver relays the request to the trials itself."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def stop_node(proc: subprocess.Popen, timeout_s: float = 5.0) -> None:
    """Stop this node's Ray processes (its process group only). By now every result is on shared
    storage: ``ray start``'s drain on SIGTERM (30 s, measured) would only hold the allocation longer."""
    stop_process_group(proc, timeout_s)


def _wait_for(condition: Callable[[], bool], what: str, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode} while waiting for {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout_s:.0f} s")
        time.sleep(1.0)  # polling shared storage / the GCS, not synchronising threads


def _alive_nodes() -> int:
    import ray

    return sum(1 for node in ray.nodes() if node["Alive"])


def run_in_allocation(driver: Callable[[str], int], rendezvous: Path, timeout_s: float = 600.0) -> int:
    """Start this node's part of the Ray cluster; rank 0 runs ``driver(address)`` and returns its status.

    Rank and node count come from Slurm (one task per node; 0 of 1 outside Slurm).
    """
    import ray

    rank, nodes = slurm_env.task_rank(), slurm_env.task_count()
    if nodes > 1 and os.environ.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "1") == "0":
        log.warning("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (keep Ray on loopback) dropped: %d nodes must reach each other",
                    nodes)
    rendezvous.mkdir(parents=True, exist_ok=True)
    address_file, done_file, token_file = (rendezvous / name for name in (ADDRESS_FILE, DONE_FILE, TOKEN_FILE))
    # One token per allocation (Ray's token auth), read by every node and the driver from shared storage.
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file))
    _reload_ray_auth()
    job = slurm_env.job_id() or str(os.getpid())
    temp_dir = Path(tempfile.gettempdir()) / f"ray-{job}"  # short: Ray's socket paths must stay < 108 chars
    node_ip = node_address(nodes)
    ports = RayPorts.pick()
    if rank == 0:
        done_file.unlink(missing_ok=True)
        with owner_only():
            atomic_write_text(token_file, secrets.token_hex(32))
        proc = start_node(None, ports, temp_dir, node_ip)
        address = f"{node_ip}:{ports.gcs}"
        try:
            _wait_for(lambda: _gcs_answers(address), "the Ray head", timeout_s, proc)
            atomic_write_text(address_file, json.dumps({"address": address, "job": job, "ports": asdict(ports)}))
            ray.init(address=address, include_dashboard=False)
            _wait_for(lambda: _alive_nodes() >= nodes, f"{nodes} Ray node(s)", timeout_s, proc)
            log.info("Ray cluster of %d node(s) at %s: %s", nodes, address, ray.cluster_resources())
            return driver(address)
        finally:
            atomic_write_text(done_file, "done\n")
            address_file.unlink(missing_ok=True)
            ray.shutdown()
            stop_node(proc)
    _ignore_preemption_signal()  # a worker node only waits; the driver on the head handles USR2
    _wait_for(address_file.is_file, f"the head's address in {address_file}", timeout_s)
    address = json.loads(address_file.read_text())["address"]
    proc = start_node(address, ports, temp_dir, node_ip)
    try:
        _wait_for(lambda: done_file.is_file() or proc.poll() is not None, "the end of the sweep", float("inf"))
        if not done_file.is_file():
            # this node is lost to the search; the head goes on (Tune retries its trials elsewhere)
            log.warning("Ray on %s exited with %s before the sweep ended", socket.gethostname(), proc.returncode)
    finally:
        stop_node(proc)
    return 0


def node_address(nodes: int) -> str:
    """The address other nodes reach this one at: Ray's choice (the interface of the default route,
    else what the hostname resolves to), or for several nodes what the hostname resolves to when Ray
    chose loopback (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes it). Loopback cannot serve several nodes."""
    import ray

    address = ray.util.get_node_ip_address()
    if nodes > 1 and address.startswith("127."):
        with contextlib.suppress(OSError):
            address = socket.gethostbyname(socket.gethostname())
    if nodes > 1 and address.startswith("127."):
        raise RuntimeError(
            f"{socket.gethostname()} has no route out and its hostname resolves to {address}: the other "
            f"{nodes - 1} node(s) of this allocation cannot reach Ray here. Fix the node's /etc/hosts or DNS."
        )
    return address


def _reload_ray_auth() -> None:
    """Make this process re-read ``RAY_AUTH_*`` (what ``ray.init`` does itself when it enables token auth)."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def _gcs_answers(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


def search_task(workdir: str | Path, should_stop: Callable[[], bool] | None = None) -> Any:
    """The graph's search task (stage ``tune``): in a Slurm allocation, a Ray cluster of its nodes with the search
    on the first (the others serve as Ray workers until it ends); elsewhere a private local Ray (or the cluster at
    ``$RAY_ADDRESS``). Returns the final students' work directory (on the first node)."""
    from ctsl_hpc.tune.driver import search_job

    job = slurm_env.job_id()
    if job is None:
        return search_job(workdir, os.environ.get("RAY_ADDRESS"), should_stop)
    return run_in_allocation(lambda address: search_job(workdir, address, should_stop), Workdir(workdir).ray / job)
