"""Training across hosts on the multi-node dev Slurm: DeepSpeed and DDP, USR2, a lost node, a changed world size.

One module fixture runs everything once (tiny model, dropout 0; every job 1 task x 1 CPU per node,
gloo over the nodes' bridge; the jobs run concurrently where the nodes have room):

- the references, in this process on ONE rank (plain engine): a teacher, and an RM+TL+CL student on
  a copy of each sweep's teacher (a student compared to one trained on another teacher would carry
  the teachers' fp32 differences through its teacher loss);
- sweeps D and P: ``sweep --cluster slurm`` with ``train.engine=deepspeed`` (ZeRO-2) and ``ddp``,
  ``slurm.nodes=2``: teacher, student, evaluation (1 node);
- job U: D's student again on a copy of D's teacher, sent ``USR2`` once both ranks are up: the ranks
  on both hosts save one collective checkpoint, rank 0 requeues the job, the restart resumes mid-epoch;
- job F: P's student again on a copy of P's teacher, on node1 and node3 (the other jobs exclude
  node3), tracked in a real MLflow server on the nodes' bridge. After its first complete checkpoint
  every process of the job on node3 is killed (-9) and node3 set DOWN. Slurm ends the job NODE_FAIL
  and requeues it itself (a batch job is requeueable by default, ``JobRequeue=1``; submitit does not
  pass ``--no-requeue``): it waits for its nodes, starts again once node3 is resumed, and continues
  from the newest complete checkpoint. No ``resume`` is needed;
- job W: D's student again, cancelled once it has a checkpoint from 2 nodes, then
  ``resume --workdir W slurm.nodes=1``: DeepSpeed's universal checkpoint carries Adam's moments to
  the single rank.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from ctsl_hpc.config import load_config
from ctsl_hpc.experiment import Experiment, train_student, train_teacher
from ctsl_hpc.launch.job_registry import Registry
from ctsl_hpc.train.checkpoint import complete_checkpoints
from ctsl_hpc.workdir import RunDir
from tests.helpers import cli
from tests.launch.cluster import SlurmCluster
from tests.launch.training_runs import (
    RESUMED,
    assert_close_runs,
    assert_identical_runs,
    copy_with_teacher,
    finished,
    submit,
    task_log,
)
from tests.mlflow_fixtures import MlflowServer

pytestmark = [pytest.mark.multinode, pytest.mark.slow]

VARIANT, STUDENT, RUN = "RM+TL+CL", "student/RM+TL+CL", "RM_TL_CL"
EPOCHS = 3
TWO_NODES = ["slurm.nodes=2", "slurm.tasks_per_node=1", "slurm.cpus_per_task=1", "slurm.mem_gb=1", "slurm.time_min=15"]
NOT_NODE3 = "slurm.additional={exclude: node3}"  # node3 is failed on purpose: only job F runs there
FAILED_NODE = "node3"
SLURM_DONE = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE")


def student_dir(workdir: Path) -> Path:
    return workdir / "students" / RUN


def job_processes(cluster: SlurmCluster, node: str) -> list[int]:
    """Every process on ``node`` (its network namespace) but its slurmd: the job steps and their ranks."""
    record = (cluster.state_dir / "etc" / "network").read_text().split()
    netns = next(name for name in record if name.endswith(f"-{node}"))
    slurmd = int((cluster.state_dir / "run" / f"slurmd-{node}.pid").read_text())
    pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True, check=True).stdout.split()
    return [int(p) for p in pids if int(p) != slurmd]


def scontrol_node(node: str, state: str, reason: str = "") -> None:
    args = ["scontrol", "update", f"nodename={node}", f"state={state}"] + ([f"reason={reason}"] if reason else [])
    subprocess.run(args, check=True, capture_output=True)


def sacct(job_id: str, fields: str) -> list[list[str]]:
    out = subprocess.run(["sacct", "-n", "-P", "-X", "-D", "-j", job_id, "-o", fields], capture_output=True,
                         text=True, check=True).stdout
    return [line.split("|") for line in out.splitlines() if line]


@dataclass
class Trigger:
    """Do ``act`` once, as soon as ``ready``: the fixture's steps that wait on a job."""

    name: str
    ready: Callable[[], bool]
    act: Callable[[], object]
    done: bool = False


@dataclass
class Runs:
    reference: Path  # the one-rank teacher
    references: dict[str, Path]  # engine -> the one-rank student on a copy of that sweep's teacher
    sweeps: dict[str, Path]  # engine -> work directory
    usr2: Path
    failed: Path
    resized: Path
    failed_checkpoint: int  # the newest complete checkpoint when node3 went down
    resized_checkpoint: int  # ... when job W was cancelled
    mlflow: MlflowServer
    experiment: str


@pytest.fixture(scope="module")
def runs(multinode_cluster: SlurmCluster, bridge_mlflow, tiny_overrides, tmp_path_factory) -> Runs:
    with pytest.MonkeyPatch.context() as env:  # inherited by the jobs through sbatch
        env.setenv("HF_HUB_OFFLINE", "1")
        base = tmp_path_factory.mktemp("multinode")
        overrides = [*tiny_overrides(base / "ref"), "model.dropout=0.0", f"student.variants=[{VARIANT}]",
                     "tracking.enabled=false", f"student.epochs={EPOCHS}"]  # fmt: skip
        engines = {"deepspeed": ["train.engine=deepspeed"], "ddp": ["train.engine=ddp"]}
        sweeps = {engine: base / engine for engine in engines}
        for engine, extra in engines.items():
            cli("sweep", "--cluster", "slurm", "--workdir", sweeps[engine], *overrides, *extra, *TWO_NODES, NOT_NODE3, check=True)

        torch.set_num_threads(1)  # the one-rank reference teacher, while the sweeps run
        ref = Experiment.open(load_config(None, overrides), base / "ref")
        train_teacher(ref)

        def after_teacher(engine: str, name: str, extra: list[str]) -> tuple[Path, str]:
            multinode_cluster.wait_until(lambda: finished(sweeps[engine], "teacher"), 420, f"{engine} teacher",
                                         sweeps[engine])
            work, cfg = copy_with_teacher(sweeps[engine], base / name, [*overrides, *engines[engine], *TWO_NODES,
                                                                        *extra])
            return work, submit(work, cfg, STUDENT)

        env.setenv("SLURM_KILL_BAD_EXIT", "1")  # as with KillOnBadExit=1: one task ending non-zero ends the step
        usr2, usr2_job = after_teacher("deepspeed", "usr2", [NOT_NODE3])
        env.delenv("SLURM_KILL_BAD_EXIT")
        resized, resized_job = after_teacher("deepspeed", "resized", [NOT_NODE3])
        experiment = "multinode-node-failure"
        tracked = ["tracking.enabled=true", f"tracking.uri={bridge_mlflow.url}", f"tracking.experiment={experiment}",
                   "slurm.additional={nodelist: 'node1,node3'}"]
        failed, failed_job = after_teacher("ddp", "failed", tracked)

        seen: dict[str, int] = {}

        def ranks_ready() -> bool:
            logs = [task_log(usr2, usr2_job, rank) for rank in (0, 1)]
            return all(p.is_file() and f"rank {r} of 2 ready" in p.read_text() for r, p in enumerate(logs))

        def checkpointed(work: Path, key: str) -> bool:
            found = complete_checkpoints(student_dir(work))
            if found:
                seen[key] = RunDir.checkpoint_step(found[-1])
            return bool(found)

        def lose_node() -> None:
            for pid in job_processes(multinode_cluster, FAILED_NODE):
                os.kill(pid, signal.SIGKILL)
            scontrol_node(FAILED_NODE, "down", "test: node lost")

        def requeued() -> bool:
            return any(row[0].startswith("NODE_FAIL") for row in sacct(failed_job, "State"))

        def cancelled() -> bool:
            return multinode_cluster.job_state(resized_job).split()[0] == "CANCELLED"

        def resume_on_one_node() -> None:
            cli("resume", "--workdir", resized, "slurm.nodes=1", check=True)
            cli("cancel", "--workdir", resized, "eval", check=True)  # only the student matters here

        # job F trains its 3 epochs in a few seconds: node3 is lost by a thread of its own, which polls for the
        # first complete checkpoint every 20 ms (the loop below polls Slurm too, and may take a second a round)
        lost, stop_watching = threading.Event(), threading.Event()

        def lose_node_at_the_first_checkpoint() -> None:
            while not checkpointed(failed, "failed"):
                if stop_watching.wait(0.02):
                    return
            lose_node()
            lost.set()

        watcher = threading.Thread(target=lose_node_at_the_first_checkpoint, daemon=True)
        watcher.start()
        triggers = [
            Trigger("USR2 to U", ranks_ready, lambda: subprocess.run(["scancel", "--signal=USR2", usr2_job], check=True)),
            Trigger("node3 back", lambda: lost.is_set() and requeued(), lambda: scontrol_node(FAILED_NODE, "resume")),
            Trigger("cancel W", lambda: checkpointed(resized, "resized"),
                    lambda: subprocess.run(["scancel", resized_job], check=True)),
            Trigger("W on 1 node", cancelled, resume_on_one_node),
        ]

        def failed_job_finished() -> bool:
            """Job F's rank 0 records FAILED (its peer vanished) while Slurm already requeues the job: that
            only counts once Slurm, too, is done with the job."""
            record = Registry(failed).get(STUDENT)
            if record.state == "FAILED" and multinode_cluster.job_state(failed_job).split()[0] in SLURM_DONE:
                raise AssertionError(f"job F failed: {record.message}")
            return record.state == "COMPLETED"

        def all_done() -> bool:
            for trigger in triggers:
                if not trigger.done and trigger.ready():
                    trigger.act()
                    trigger.done = True
            keys = [(sweeps["deepspeed"], "eval"), (sweeps["ddp"], "eval"), (usr2, STUDENT)]
            done = all(finished(work, key) for work, key in keys) and failed_job_finished()
            return done and triggers[-1].done and finished(resized, STUDENT)

        try:
            multinode_cluster.wait_until(all_done, 900, "sweeps D and P, jobs U, F and W", base)
        finally:
            stop_watching.set()
            watcher.join()
            if "DOWN" in _node_state(FAILED_NODE):  # whatever happened: later tests may need the node
                scontrol_node(FAILED_NODE, "resume")
        references = {}
        for engine in engines:  # after the jobs: training here meanwhile could delay a trigger past its moment
            work, cfg = copy_with_teacher(sweeps[engine], base / f"ref-{engine}", overrides)
            train_student(Experiment.open(cfg, work), VARIANT)
            references[engine] = work
        return Runs(ref.workdir.root, references, sweeps, usr2, failed, resized, seen["failed"], seen["resized"],
                    bridge_mlflow, experiment)


def _node_state(node: str) -> str:
    return subprocess.run(["sinfo", "-h", "-N", "-n", node, "-o", "%T"], capture_output=True, text=True).stdout.upper()


def _hosts(work: Path, run: str) -> list[list[str]]:
    return [start["hosts"] for start in RunDir(work / run).starts()]


@pytest.mark.parametrize("engine", ["deepspeed", "ddp"])
def test_sweep_on_two_hosts_matches_one_rank(runs: Runs, engine: str):
    work = runs.sweeps[engine]
    assert_close_runs(work / "teacher", runs.reference / "teacher", epochs=2)
    assert_close_runs(student_dir(work), student_dir(runs.references[engine]), epochs=EPOCHS)
    for run, key in (("teacher", "teacher"), (f"students/{RUN}", STUDENT)):
        (hosts,) = _hosts(work, run)  # rank r's host, recorded by the rank itself
        assert len(set(hosts)) == 2, hosts
        ((nodelist,),) = sacct(Registry(work).get(key).job_id, "NodeList")
        expanded = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                                  check=True).stdout.split()
        assert expanded == hosts, (nodelist, hosts)  # Slurm's allocation, in rank order
    assert finished(work, "eval") and (work / "report" / "table1.json").is_file()


def test_usr2_on_two_hosts_saves_one_checkpoint_and_resumes_bitwise(runs: Runs):
    record = Registry(runs.usr2).get(STUDENT)
    assert record.requeues == 1
    logs = [task_log(runs.usr2, record.job_id, rank).read_text() for rank in (0, 1)]
    for log in logs:
        resumed = [m.groups() for m in RESUMED.finditer(log)]
        assert len(resumed) == 1 and int(resumed[0][2]) > 0, f"not resumed once mid-epoch: {resumed}"
    starts = _hosts(runs.usr2, f"students/{RUN}")
    assert len(starts) == 2 and all(len(set(hosts)) == 2 for hosts in starts), starts
    shards = sorted(p.name for p in (student_dir(runs.usr2) / "checkpoints").glob("*/deepspeed/*optim_states.pt"))
    assert any("rank_0" in s for s in shards) and any("rank_1" in s for s in shards), shards
    assert_identical_runs(student_dir(runs.usr2), student_dir(runs.sweeps["deepspeed"]), epochs=EPOCHS)


def test_lost_node_requeues_the_job_which_continues_from_its_checkpoint(runs: Runs, multinode_cluster: SlurmCluster):
    record = Registry(runs.failed).get(STUDENT)
    # accounting lags slurmctld: the requeued run may still read RUNNING for a moment after it ended
    states = [row["State"].split()[0] for row in multinode_cluster.wait_for_sacct(record.job_id, "COMPLETED")]
    assert states == ["NODE_FAIL", "COMPLETED"] and record.requeues == 1, (states, record.requeues)
    starts = RunDir(student_dir(runs.failed)).starts()
    assert [s["hosts"] for s in starts] == [["node1", FAILED_NODE]] * 2
    assert starts[1]["resumed_step"] >= runs.failed_checkpoint  # the newest complete one (one may follow ours)
    assert_identical_runs(student_dir(runs.failed), student_dir(runs.sweeps["ddp"]), epochs=EPOCHS)
    assert "IDLE" in _node_state(FAILED_NODE)  # resumed: later jobs may use it

    client = MlflowClient(runs.mlflow.url)
    experiment = client.get_experiment_by_name(runs.experiment)
    tracked = client.search_runs([experiment.experiment_id])
    names = sorted(r.info.run_name for r in tracked)
    assert names.count(STUDENT) == 1 and len([n for n in names if n.startswith("sweep")]) == 1, names
    student = next(r for r in tracked if r.info.run_name == STUDENT)
    for metric in ("dev/ccc_mean", "loss/total"):
        steps = [m.step for m in client.get_metric_history(student.info.run_id, metric)]
        assert sorted(steps) == list(range(1, EPOCHS + 1)), (metric, steps)


def test_a_deepspeed_job_resumed_on_fewer_nodes_continues_with_its_optimizer_state(runs: Runs):
    starts = RunDir(student_dir(runs.resized)).starts()
    # the scancel's SIGTERM made both ranks save one more (mid-epoch) checkpoint: the resume starts there
    assert [len(s["hosts"]) for s in starts] == [2, 1] and starts[1]["resumed_step"] > runs.resized_checkpoint
    record = Registry(runs.resized).get(STUDENT)
    log = "".join(path.read_text() for path in Registry(runs.resized).logs(record))
    assert "universal" in log, log[-2000:]
    # Adam's moments carried over: the one rank ends where the uninterrupted two-rank run ended
    # (restarted moments would move every weight by about the learning rate at the next step).
    assert_close_runs(student_dir(runs.resized), student_dir(runs.sweeps["deepspeed"]), epochs=EPOCHS)
