"""The sweep on the one-node dev Slurm: graph, preemption, requeue, management commands.

One tiny configuration everywhere (about 2 minutes of CPU for a whole sweep). The module fixture
submits the sweep to Slurm, requeues its teacher with ``scontrol requeue`` once the first epoch's
checkpoint is complete, and runs the same sweep locally in this process meanwhile (the reference).
The other tests start from a copy of the reference's data and trained teacher.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from ctsl_hpc.config import config_from_dict
from ctsl_hpc.launch.__main__ import main
from ctsl_hpc.launch.backends.slurm import SlurmBackend
from ctsl_hpc.launch.job_registry import Registry
from ctsl_hpc.launch.slurm_cli import job_states
from ctsl_hpc.model import load_weights
from ctsl_hpc.run_records import read_history
from ctsl_hpc.train.checkpoint import complete_checkpoints
from ctsl_hpc.workdir import Workdir
from tests.helpers import cli
from tests.launch.cluster import sweep_task

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

TINY = [
    "synthetic.utterances=40", "data.max_seconds=2.0", "model.tiny.hidden_size=32", "model.tiny.num_layers=1",
    "model.tiny.intermediate_size=64", "model.tiny.conv_dim=32", "model.head_hidden=32", "train.epochs=2",
    "student.epochs=2", "student.variants=[RM,RM+TL]", "train.batch_size=4", "eval.n_groups=2", "eval.top_k=1",
    "tracking.enabled=false", "slurm.time_min=15", "slurm.cpus_per_task=1", "slurm.mem_gb=1",
    "slurm.students.gpus_per_node=1",
]
RESUMED = re.compile(r"resumed from step-(\d+) \(epoch (\d+), batch (\d+)\)")


def status_table(stdout: str) -> list[dict[str, str]]:
    """The rows of ``status``'s aligned table, by column name (a cell starts where its header does)."""
    lines = [line for line in stdout.splitlines() if line and not line.startswith("GPU-hours")]
    columns = [(m.group(), m.start()) for m in re.finditer(r"\S+(?: \S+)*", lines[0])]
    ends = [start for _, start in columns[1:]] + [None]
    bounds = [(name, start, end) for (name, start), end in zip(columns, ends, strict=True)]
    return [{name: line[start:end].strip() for name, start, end in bounds} for line in lines[1:]]


def _state(workdir: Path, key: str) -> tuple[str | None, int]:
    record = Registry(workdir).get(key)
    return (None, 0) if record is None else (record.state, record.requeues)


def _sweep_finished(workdir: Path) -> bool:
    records = Registry(workdir).all()
    failed = [r for r in records if r.state == "FAILED"]
    if failed:
        raise AssertionError(f"{[(r.key, r.message) for r in failed]}")  # wait_until adds the job logs
    return any(r.key == "eval" and r.state == "COMPLETED" for r in records)


@dataclass
class Sweeps:
    local: Path
    slurm: Path
    submit_s: float
    dependencies: dict[str, str]
    teacher_epoch1_step: int


@pytest.fixture(scope="module")
def sweeps(slurm_cluster, tmp_path_factory) -> Sweeps:
    base = tmp_path_factory.mktemp("sweeps")
    local, remote = base / "local", base / "slurm"
    started = time.monotonic()
    out = cli("sweep", "--cluster", "slurm", "--workdir", remote, *TINY)
    submit_s = time.monotonic() - started
    assert out.returncode == 0, out.stderr
    registry = Registry(remote)
    ids = {r.key: r.job_id for r in registry.all()}
    deps = {
        key: subprocess.run(["squeue", "-h", "-j", job, "-o", "%E"], capture_output=True, text=True).stdout.strip()
        for key, job in ids.items()
    }
    # scontrol requeue (no USR2) once the teacher's first epoch is safely on disk
    slurm_cluster.wait_until(lambda: bool(complete_checkpoints(remote / "teacher")), 240, "teacher epoch 1 checkpoint", remote)
    epoch1 = int(complete_checkpoints(remote / "teacher")[-1].name.split("-")[1])
    subprocess.run(["scontrol", "requeue", ids["teacher"]], check=True, capture_output=True)
    torch.set_num_threads(1)
    assert main(["sweep", "--workdir", str(local), *TINY]) == 0  # the local reference, meanwhile
    slurm_cluster.wait_until(lambda: _sweep_finished(remote), 480, "the Slurm sweep reaches its report", remote)
    return Sweeps(local, remote, submit_s, deps, epoch1)


def test_slurm_sweep_returns_at_once_and_reproduces_the_local_table1(sweeps: Sweeps):
    assert sweeps.submit_s < 30, f"sweep --cluster slurm took {sweeps.submit_s:.1f} s to return"
    registry = Registry(sweeps.slurm)
    teacher, rm, rm_tl = (registry.get(k).job_id for k in ("teacher", "student/RM", "student/RM+TL"))
    assert rm.split("_")[0] == rm_tl.split("_")[0], "the students form one array"
    assert sweeps.dependencies["student/RM"] == f"afterok:{teacher}(unfulfilled)"
    assert f"afterok:{rm}" in sweeps.dependencies["eval"] and f"afterok:{rm_tl}" in sweeps.dependencies["eval"]
    table = lambda work: json.loads((work / "report" / "table1.json").read_text())  # noqa: E731
    assert table(sweeps.slurm) == table(sweeps.local)


def test_scontrol_requeue_resumes_from_the_last_complete_checkpoint(sweeps: Sweeps, slurm_cluster):
    record = Registry(sweeps.slurm).get("teacher")
    assert record.requeues == 1
    log = Registry(sweeps.slurm).logs(record)[0].read_text()
    resumed = [int(m.group(1)) for m in RESUMED.finditer(log)]
    assert len(resumed) == 1 and resumed[0] >= sweeps.teacher_epoch1_step, log[-3000:]
    rows = slurm_cluster.sacct_rows(record.job_id)
    assert [r["State"] for r in rows][-1] == "COMPLETED" and len(rows) == 2
    weights = lambda work: load_weights(Workdir(work).teacher.epoch_dir(2))  # noqa: E731
    local, remote = weights(sweeps.local), weights(sweeps.slurm)
    assert all(torch.equal(local[k], remote[k]) for k in local)


def test_status_and_logs_read_the_work_directory(sweeps: Sweeps):
    out = cli("status", "--workdir", sweeps.slurm)
    assert out.returncode == 0, out.stderr
    rows = {(row["stage"], row["variant"]): row for row in status_table(out.stdout)}
    assert rows["students", "RM"]["state"] == "COMPLETED" and rows["students", "RM"]["last epoch"] == "2"
    teacher = rows["teacher", ""]
    teacher_job = Registry(sweeps.slurm).get("teacher").job_id
    assert (teacher["job id"], teacher["state"], teacher["requeues"]) == (teacher_job, "COMPLETED", "1")
    assert teacher["nodes"]  # sacct's node list
    hours = float(re.search(r"GPU-hours of the sweep: ([\d.]+)", out.stdout).group(1))
    assert hours > 0  # the students held one (fake) GPU each
    logs = cli("logs", "--workdir", sweeps.slurm, "teacher")
    assert logs.returncode == 0 and "resumed from step-" in logs.stdout
    follow = cli("logs", "--workdir", sweeps.slurm, "RM+TL", "--follow")  # finished job: prints and returns
    assert follow.returncode == 0 and "RM+TL epoch 2" in follow.stdout
    assert "done [teacher]" in cli("sweep", "--dry-run", "--cluster", "slurm", "--workdir", sweeps.slurm, *TINY).stdout


def _copy_with_teacher(reference: Path, dest: Path, **slurm_overrides: int) -> tuple[Path, object]:
    """A new work directory holding the reference's config, data and trained teacher."""
    dest.mkdir(parents=True)
    for name in ("config.yaml", "waveform_stats.json"):
        shutil.copy2(reference / name, dest / name)
    for name in ("data", "teacher", "cache"):
        shutil.copytree(reference / name, dest / name)
    cfg = config_from_dict(yaml.safe_load((dest / "config.yaml").read_text()))
    cfg.workdir = str(dest)
    (dest / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    for key, value in slurm_overrides.items():  # for the submission only; the jobs train by config.yaml
        setattr(cfg.slurm.students, key, value)
    return dest, cfg


def test_student_preempted_twice_mid_epoch_matches_an_uninterrupted_run(sweeps: Sweeps, slurm_cluster, tmp_path):
    work, cfg = _copy_with_teacher(sweeps.local, tmp_path / "p")
    key = "student/RM"
    (job,) = SlurmBackend(Workdir(work), cfg).submit("students", [sweep_task(work, cfg, key)], [])
    slurm_cluster.wait_until(lambda: _state(work, key) == ("RUNNING", 0), 120, "student running", work)
    preemptor = slurm_cluster.sbatch(
        "-p", slurm_cluster.high_partition, "-c", str(slurm_cluster.cpus_per_node), "--mem=100M", "--wrap", "true"
    )
    slurm_cluster.wait_until(lambda: _state(work, key) == ("RUNNING", 1), 120, "student back after preemption", work)
    assert slurm_cluster.wait_for(preemptor) == "COMPLETED"
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    slurm_cluster.wait_until(lambda: _state(work, key) == ("RUNNING", 2), 120, "student back after USR2", work)
    slurm_cluster.wait_until(lambda: _state(work, key)[0] == "COMPLETED", 240, "student finishes", work)

    log = Registry(work).logs(Registry(work).get(key))[0].read_text()
    batches = [int(m.group(3)) for m in RESUMED.finditer(log)]
    assert len(batches) == 2 and all(b > 0 for b in batches), f"not resumed mid-epoch twice: {batches}"
    states = [r["State"] for r in slurm_cluster.wait_for_sacct(job, "COMPLETED")]
    assert states[0] == "PREEMPTED" and len(states) == 3, states

    def history(work: Path) -> list[dict]:
        return read_history(Workdir(work).student("RM").history).to_list()

    assert history(work) == history(sweeps.local)
    for epoch in (1, 2):
        ours = load_weights(Workdir(work).student("RM").epoch_dir(epoch))
        reference = load_weights(Workdir(sweeps.local).student("RM").epoch_dir(epoch))
        assert ours.keys() == reference.keys()
        assert all(torch.equal(ours[k], reference[k]) for k in ours), epoch


def test_job_requeued_more_than_max_requeues_fails_with_a_clear_message(sweeps: Sweeps, slurm_cluster, tmp_path):
    work, cfg = _copy_with_teacher(sweeps.local, tmp_path / "limit", max_requeues=0)
    key = "student/RM+TL"
    (job,) = SlurmBackend(Workdir(work), cfg).submit("students", [sweep_task(work, cfg, key)], [])
    slurm_cluster.wait_until(lambda: _state(work, key) == ("RUNNING", 0), 120, "student running", work)
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    slurm_cluster.wait_until(lambda: _state(work, key)[0] == "FAILED", 120, "student fails", work)
    slurm_cluster.wait_for_sacct(job, "FAILED")
    message = Registry(work).get(key).message
    assert "more than slurm.students.max_requeues=0" in message and "resume" in message
    status = cli("status", "--workdir", work).stdout
    assert "FAILED" in status and "max_requeues=0" in status


def test_cancel_then_resume_resubmits_only_what_is_unfinished(sweeps: Sweeps, slurm_cluster, tmp_path):
    work, _ = _copy_with_teacher(sweeps.local, tmp_path / "c")
    # The students may start in an hour only: cancel finds every job pending. (A started tiny student
    # can finish inside scancel's grace period, since submitit bypasses SIGTERM; resume then rightly
    # keeps its result.)
    out = cli("sweep", "--cluster", "slurm", "--workdir", work, *TINY, "slurm.students.additional={begin: now+3600}")
    assert out.returncode == 0 and "done ['teacher']" in out.stdout, out.stderr
    first = {r.key: r.job_id for r in Registry(work).all()}
    assert set(first) == {"student/RM", "student/RM+TL", "eval"}
    out = cli("cancel", "--workdir", work)
    assert out.returncode == 0 and all(j in out.stdout for j in first.values()), out.stdout
    deadline = time.monotonic() + 60  # pending array tasks are accounted under their array's row
    while set(job_states(list(first.values())).values()) != {"CANCELLED"}:
        assert time.monotonic() < deadline, job_states(list(first.values()))
        time.sleep(0.5)
    assert cli("status", "--workdir", work).stdout.count("CANCELLED") == 3

    out = cli("resume", "--workdir", work)
    assert out.returncode == 0 and "done ['teacher']" in out.stdout, out.stderr
    records = {r.key: r for r in Registry(work).all()}
    assert set(records) == set(first)
    for key, record in records.items():
        assert record.job_id != first[key] and record.history == [first[key]] and record.submissions == 2
    assert cli("cancel", "--workdir", work).returncode == 0


def test_arrays_above_max_array_size_are_split_and_wait_on_their_dependency(sweeps: Sweeps, slurm_cluster, tmp_path):
    work, cfg = _copy_with_teacher(sweeps.local, tmp_path / "chunks")
    held = slurm_cluster.sbatch("--hold", "--wrap", "true")
    cfg.student.variants = ["RM", "RM+TL", "RM+CL"]
    tasks = [sweep_task(work, cfg, f"student/{v}") for v in cfg.student.variants]
    ids = SlurmBackend(Workdir(work), cfg, max_array=2).submit("students", tasks, [held])
    try:  # an array of two tasks, then a single job
        assert ids[0].endswith("_0") and ids[1] == ids[0][:-1] + "1" and "_" not in ids[2], ids
        for job in ids:
            dep = subprocess.run(["squeue", "-h", "-j", job, "-o", "%E"], capture_output=True, text=True).stdout
            assert dep.strip() == f"afterok:{held}(unfulfilled)"
    finally:
        subprocess.run(["scancel", held, *ids], check=True)


def test_invalid_partition_is_refused_before_anything_is_submitted(slurm_cluster, tmp_path):
    out = cli("sweep", "--cluster", "slurm", "--workdir", tmp_path / "w", *TINY, "slurm.students.partition=nope")
    assert out.returncode == 2
    assert "slurm.students.partition: partition 'nope' does not exist" in out.stderr
    assert slurm_cluster.default_partition in out.stderr
    assert not (tmp_path / "w" / "jobs").exists()


def test_multi_task_job_exports_torch_ranks_without_touching_cuda_devices(slurm_cluster, tmp_path):
    import submitit

    code = (
        "import os; from ctsl_hpc.launch.slurm_env import export_ranks; export_ranks(); "
        "print(*(os.environ.get(k) for k in ('RANK','WORLD_SIZE','LOCAL_RANK','MASTER_ADDR','MASTER_PORT',"
        "'CUDA_VISIBLE_DEVICES')))"
    )
    executor = submitit.AutoExecutor(folder=tmp_path / "%j", cluster="slurm")
    executor.update_parameters(timeout_min=15, tasks_per_node=2, cpus_per_task=1, mem_gb=0.2, gpus_per_node=2)
    job = executor.submit(submitit.helpers.CommandFunction([sys.executable, "-c", code]))
    slurm_cluster.wait_until(job.done, 120, "the two-task job")
    ranks = sorted(out.split() for out in job.results())
    assert [r[:3] for r in ranks] == [["0", "2", "0"], ["1", "2", "1"]]
    assert ranks[0][3:5] == ranks[1][3:5] and ranks[0][4].isdigit()
    assert ranks[0][5] == ranks[1][5] == "0,1"
