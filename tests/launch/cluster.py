"""The dev Slurm cluster as the tests see it: what a started cluster offers (:class:`SlurmCluster`),
reading its generated ``slurm.conf``, and finding a sweep's task. The fixtures that start it are in
``tests/launch/conftest.py``."""

from __future__ import annotations

import shlex
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DEV_CLUSTER = Path(__file__).resolve().parents[2] / "slurm" / "dev-cluster"
FINISHED_STATES = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE"}
)


def _run(args: list[str], timeout_s: float = 30) -> str:
    """Run a Slurm client command and return its stdout; raise with its stderr on failure."""
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


@dataclass(frozen=True)
class SlurmCluster:
    """A running dev cluster: where it lives and what it offers."""

    state_dir: Path
    conf: Path
    nodes: tuple[str, ...]
    service_host: str  # where services the jobs talk to must listen: 127.0.0.1, or the nodes' bridge
    partitions: tuple[str, ...]
    default_partition: str
    high_partition: str
    max_array_size: int
    gpus_per_node: int
    cpus_per_node: int

    def sbatch(self, *args: str) -> str:
        """Submit with `sbatch --parsable ARGS` and return the job id."""
        return _run(["sbatch", "--parsable", *args]).strip().split(";")[0]

    def job_state(self, job_id: str) -> str:
        """Current state of a job as slurmctld sees it (e.g. PENDING, RUNNING, COMPLETED)."""
        return _run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"]).strip()

    def sacct_rows(self, job_id: str) -> list[dict[str, str]]:
        """Accounting rows of the job allocation, one per run (requeues included), oldest first."""
        fields = ["JobID", "Partition", "State", "ElapsedRaw", "ExitCode"]
        out = _run(["sacct", "-n", "-P", "-X", "-D", "-j", job_id, "-o", ",".join(fields)])
        return [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line]

    def wait_for(self, job_id: str, states: frozenset[str] = FINISHED_STATES, timeout_s: float = 90) -> str:
        """Poll the job until its state (first word, e.g. `CANCELLED by 0`) is in `states`; return it."""
        deadline = time.monotonic() + timeout_s
        while True:
            state = self.job_state(job_id).split(" ")[0]
            if state in states:
                return state
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {state!r} after {timeout_s} s (wanted {sorted(states)})")
            time.sleep(0.2)

    def wait_until(self, predicate: Callable[[], bool], timeout_s: float, what: str, workdir: Path | None = None) -> None:
        """Poll ``predicate`` until it is true. On timeout, or an AssertionError from it (a job that
        failed), raise with the tail of every job log of the sweep in ``workdir``."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if predicate():
                    return
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{_job_logs(workdir)}") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"not within {timeout_s:.0f} s: {what}\n{_job_logs(workdir)}")
            time.sleep(0.2)

    def wait_for_sacct(self, job_id: str, state: str, timeout_s: float = 30) -> list[dict[str, str]]:
        """Poll `sacct` until the job's newest row has `state` and every row its partition.

        Accounting lags slurmctld: for about a second after a short job ends, sacct can already
        show it COMPLETED with an empty Partition.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            rows = self.sacct_rows(job_id)
            if rows and rows[-1]["State"].split(" ")[0] == state and all(r["Partition"] for r in rows):
                return rows
            if time.monotonic() > deadline:
                raise TimeoutError(f"sacct never showed job {job_id} as {state}: {rows}")
            time.sleep(0.2)


def sweep_task(workdir: Path, cfg, key: str):
    """The task ``key`` (``teacher``, ``student/RM``, ``eval``) of the sweep's job graph in ``workdir``."""
    from ctsl_hpc.launch.graph import sweep_tasks
    from ctsl_hpc.workdir import Workdir

    return {t.key: t for t in sweep_tasks(Workdir(workdir), cfg)}[key]


def _job_logs(workdir: Path | None) -> str:
    if workdir is None:
        return ""
    return "\n".join(f"== {p}\n{p.read_text()[-3000:]}" for p in sorted((workdir / "slurm").glob("*/*_log.*")))


def free_port_base(start: int = 6817) -> int:
    """First port >= start such that it and the next two are free on 127.0.0.1."""
    port = start
    while True:
        try:
            for p in range(port, port + 3):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            return port
        except OSError:
            port += 3


def _conf_fields(conf: Path, key: str) -> list[dict[str, str]]:
    """The `key=...` lines of a generated slurm.conf, each as a dict of its `name=value` words."""
    rows = []
    for line in conf.read_text().splitlines():
        if line.startswith(f"{key}="):
            rows.append(dict(word.split("=", 1) for word in line.split()))
    if not rows:
        raise KeyError(f"no {key}= line in {conf}")
    return rows


def describe(state: Path) -> SlurmCluster:
    """Read what the generated slurm.conf (and, for several nodes, the network record) under `state` declares."""
    conf = state / "etc" / "slurm.conf"
    partitions = _conf_fields(conf, "PartitionName")
    by_tier = sorted(partitions, key=lambda p: int(p.get("PriorityTier", "1")))
    nodes = _conf_fields(conf, "NodeName")
    network = state / "etc" / "network"
    subnet = dict(line.split() for line in network.read_text().splitlines()).get("subnet") if network.is_file() else None
    return SlurmCluster(
        state_dir=state,
        conf=conf,
        nodes=tuple(n["NodeName"] for n in nodes),
        service_host="127.0.0.1" if subnet is None else f"{subnet}.1",
        partitions=tuple(p["PartitionName"] for p in partitions),
        default_partition=next(p["PartitionName"] for p in partitions if p.get("Default") == "YES"),
        high_partition=by_tier[-1]["PartitionName"],
        max_array_size=int(_conf_fields(conf, "MaxArraySize")[0]["MaxArraySize"]),
        gpus_per_node=int(nodes[0].get("Gres", "gpu:0").rsplit(":", 1)[1]),
        cpus_per_node=int(nodes[0]["CPUs"]),
    )
