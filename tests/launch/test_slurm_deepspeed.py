"""DeepSpeed ZeRO-2 on the one-node dev Slurm: 2 ranks = 2 Slurm tasks of one job (no launcher).

One module fixture runs everything once (tiny model, 40 utterances, dropout 0):

- the reference: teacher and RM+TL student trained in this process on ONE rank (plain engine);
- job A: the teacher from scratch, ``train.engine=deepspeed``, ``slurm.tasks_per_node=2``;
- job B: the RM+TL student on a copy of the reference's teacher, 2 tasks, uninterrupted;
- job C: the same student, sent ``scancel --signal=USR2`` once both ranks are up: all ranks save
  one collective checkpoint after the first step, rank 0 requeues, the restart resumes mid-epoch.

The node has 2 CPUs: each job asks for 2 tasks x 1 CPU, so the jobs run one after the other.
Job C runs with ``SLURM_KILL_BAD_EXIT=1`` (srun kills the other tasks as soon as one exits non-zero,
as on clusters with ``KillOnBadExit=1``). Two fast tests check the ``slurm.tasks_per_node`` key.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from ctsl_hpc.config import ConfigError, load_config
from ctsl_hpc.experiment import Experiment, train_student, train_teacher
from ctsl_hpc.launch.backends.slurm import executor_parameters, tasks_per_node
from ctsl_hpc.launch.job_registry import Registry
from ctsl_hpc.workdir import Workdir
from tests.launch.training_runs import (
    RESUMED,
    assert_close_runs,
    assert_identical_runs,
    copy_with_teacher,
    finished,
    submit,
    task_log,
)

VARIANT, STUDENT = "RM+TL", "student/RM+TL"
TWO_TASKS = [
    "train.engine=deepspeed", "slurm.tasks_per_node=2", "slurm.cpus_per_task=1", "slurm.mem_gb=3",
    "slurm.time_min=15",
]  # fmt: skip


def test_tasks_per_node_from_the_config_reaches_submitit_for_training_stages_only(rng):
    tasks = int(rng.integers(2, 9))
    cfg = load_config(None, ["train.engine=deepspeed", f"slurm.tasks_per_node={tasks}", "slurm.gpus_per_node=1"])
    for stage in ("teacher", "students"):
        params = executor_parameters("x", cfg.slurm.stage(stage), tasks_per_node(cfg, stage))
        assert params["tasks_per_node"] == tasks and params["gpus_per_node"] == 1
    assert tasks_per_node(cfg, "eval") == 1  # evaluation is one process
    per_stage = load_config(None, ["train.engine=ddp", "slurm.gpus_per_node=4", "slurm.students.tasks_per_node=2"])
    assert (tasks_per_node(per_stage, "teacher"), tasks_per_node(per_stage, "students")) == (4, 2)


def test_invalid_tasks_per_node_names_the_key():
    with pytest.raises(ConfigError, match="slurm.tasks_per_node: must be at least 1"):
        load_config(None, ["train.engine=deepspeed", "slurm.tasks_per_node=0"])
    with pytest.raises(ConfigError, match="slurm.students.tasks_per_node: several tasks need train.engine ddp or deepspeed"):
        load_config(None, ["slurm.students.tasks_per_node=2"])


@dataclass
class Runs:
    reference: Path
    teacher: Path  # job A's work directory
    straight: Path  # job B's
    preempted: Path  # job C's
    preempted_job: str


@pytest.fixture(scope="module")
def runs(slurm_cluster, tiny_overrides, tmp_path_factory) -> Runs:
    with pytest.MonkeyPatch.context() as env:  # inherited by the jobs through sbatch
        env.setenv("HF_HUB_OFFLINE", "1")
        base = tmp_path_factory.mktemp("ds")
        # dropout 0: its masks would depend on how the batch is split across ranks
        overrides = [*tiny_overrides(base / "ref"), "model.dropout=0.0", f"student.variants=[{VARIANT}]",
                     "tracking.enabled=false", "student.epochs=2"]  # fmt: skip

        work_a = base / "a"
        cfg_a = load_config(None, [*overrides, f"workdir={work_a}", *TWO_TASKS])
        Workdir.open(cfg_a, work_a)
        submit(work_a, cfg_a, "teacher")

        torch.set_num_threads(1)  # the one-rank reference, while job A runs
        ref = Experiment.open(load_config(None, overrides), base / "ref")
        train_teacher(ref)
        train_student(ref, VARIANT)

        work_b, cfg_b = copy_with_teacher(ref.workdir.root, base / "b", [*overrides, *TWO_TASKS])
        submit(work_b, cfg_b, STUDENT)
        work_c, cfg_c = copy_with_teacher(ref.workdir.root, base / "c", [*overrides, *TWO_TASKS])
        # as on clusters with KillOnBadExit=1: a task ending non-zero makes srun kill the others at once
        env.setenv("SLURM_KILL_BAD_EXIT", "1")
        job_c = submit(work_c, cfg_c, STUDENT)
        env.delenv("SLURM_KILL_BAD_EXIT")

        def both_ranks_ready() -> bool:
            logs = [task_log(work_c, job_c, rank) for rank in (0, 1)]
            return all(p.is_file() and f"rank {r} of 2 ready" in p.read_text() for r, p in enumerate(logs))

        # C queues behind A, B and the other modules' jobs on this one node: its start is the queue's business
        slurm_cluster.wait_until(lambda: slurm_cluster.job_state(job_c) != "PENDING", 1500, "job C starts", work_c)
        slurm_cluster.wait_until(both_ranks_ready, 420, "job C's two ranks joined", work_c)
        subprocess.run(["scancel", "--signal=USR2", job_c], check=True)
        for work, key in ((work_a, "teacher"), (work_b, STUDENT), (work_c, STUDENT)):
            slurm_cluster.wait_until(lambda: finished(work, key), 420, f"{work.name}: {key} completes", work)
        return Runs(ref.workdir.root, work_a, work_b, work_c, job_c)


@pytest.mark.cluster
@pytest.mark.slow
def test_teacher_on_two_slurm_tasks_matches_one_rank(runs: Runs):
    assert_close_runs(runs.teacher / "teacher", runs.reference / "teacher", epochs=2)
    record = Registry(runs.teacher).get("teacher")
    assert record.resources["tasks_per_node"] == 2 and record.resources["cpus_per_task"] == 1
    rank1 = task_log(runs.teacher, record.job_id, 1).read_text()
    assert "rank 1 of 2 ready" in rank1


@pytest.mark.cluster
@pytest.mark.slow
def test_student_on_two_slurm_tasks_matches_one_rank(runs: Runs):
    assert_close_runs(runs.straight / "students" / "RM_TL", runs.reference / "students" / "RM_TL", epochs=2)
    assert len(list((runs.straight / "cache").glob("teacher-*.safetensors"))) == 1
    assert not list((runs.straight / "cache").glob("*.tmp"))


@pytest.mark.cluster
@pytest.mark.slow
def test_two_task_job_preempted_mid_epoch_resumes_identical_to_uninterrupted(runs: Runs, slurm_cluster):
    record = Registry(runs.preempted).get(STUDENT)
    assert record.requeues == 1 and record.job_id == runs.preempted_job
    resumed = [m.groups() for m in RESUMED.finditer(task_log(runs.preempted, record.job_id, 0).read_text())]
    assert len(resumed) == 1 and int(resumed[0][2]) > 0, f"not resumed once mid-epoch: {resumed}"
    rank1 = task_log(runs.preempted, record.job_id, 1).read_text()
    assert rank1.count("rank 1 of 2 ready") == 2 and "resumed from step-" in rank1  # both ranks restarted
    assert "rank 0 has left" in rank1  # rank 1 outlived rank 0's requeue (kill-on-bad-exit is on)
    states = [r["State"].split()[0] for r in slurm_cluster.wait_for_sacct(record.job_id, "COMPLETED")]
    assert len(states) == 2, states
    # the collective checkpoint holds both ranks' ZeRO-2 optimizer shards
    run_dir = runs.preempted / "students" / "RM_TL"
    shards = sorted(p.name for p in (run_dir / "checkpoints").glob("*/deepspeed/*optim_states.pt"))
    assert any("rank_0" in s for s in shards) and any("rank_1" in s for s in shards), shards

    assert_identical_runs(run_dir, runs.straight / "students" / "RM_TL", epochs=2)
