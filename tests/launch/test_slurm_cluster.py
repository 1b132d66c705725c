"""The sweep on the one-node dev Slurm: graph, preemption, requeue, management commands.

One tiny configuration everywhere (about 2 minutes of CPU for a whole sweep). The module fixture
submits the sweep to Slurm, requeues its teacher with ``scontrol requeue`` once the first epoch's
checkpoint is complete, and runs the same sweep locally in this process meanwhile (the reference).
The other tests start from a copy of the reference's data and trained teacher.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
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
    stage: Path  # the Slurm sweep's data.stage_dir
    staged: set[str]  # the staged files seen while its jobs ran


@pytest.fixture(scope="module")
def sweeps(slurm_cluster, tmp_path_factory) -> Sweeps:
    """The Slurm sweep (its jobs read the corpus staged in a node-local folder) and the same sweep run here,
    reading the files in place: the reference."""
    base = tmp_path_factory.mktemp("sweeps")
    local, remote, stage = base / "local", base / "slurm", base / "node-local"
    started = time.monotonic()
    out = cli("sweep", "--cluster", "slurm", "--workdir", remote, *TINY, f"data.stage_dir={stage}")
    submit_s = time.monotonic() - started
    assert out.returncode == 0, out.stderr
    registry = Registry(remote)
    ids = {r.key: r.job_id for r in registry.all()}
    deps = {
        key: subprocess.run(["squeue", "-h", "-j", job, "-o", "%E"], capture_output=True, text=True).stdout.strip()
        for key, job in ids.items()
    }
    staged: set[str] = set()

    def watching(condition):  # every poll also notes the staged copies present at that moment
        def check() -> bool:
            staged.update(str(p.relative_to(stage)) for p in stage.glob("ctsl-*/*.npy"))
            return condition()
        return check

    # scontrol requeue (no USR2) once the teacher's first epoch is safely on disk
    slurm_cluster.wait_until(watching(lambda: bool(complete_checkpoints(remote / "teacher"))), 240,
                             "teacher epoch 1 checkpoint", remote)
    epoch1 = int(complete_checkpoints(remote / "teacher")[-1].name.split("-")[1])
    subprocess.run(["scontrol", "requeue", ids["teacher"]], check=True, capture_output=True)
    torch.set_num_threads(1)
    assert main(["sweep", "--workdir", str(local), *TINY]) == 0  # the local reference, meanwhile
    slurm_cluster.wait_until(watching(lambda: _sweep_finished(remote)), 480, "the Slurm sweep reaches its report", remote)
    return Sweeps(local, remote, submit_s, deps, epoch1, stage, staged)


def test_slurm_sweep_returns_at_once_and_reproduces_the_local_table1(sweeps: Sweeps, slurm_cluster):
    assert sweeps.submit_s < 30, f"sweep --cluster slurm took {sweeps.submit_s:.1f} s to return"
    registry = Registry(sweeps.slurm)
    prepare, teacher, rm, rm_tl = (registry.get(k).job_id for k in ("prepare", "teacher", "student/RM", "student/RM+TL"))
    assert sweeps.dependencies["teacher"] == f"afterok:{prepare}(unfulfilled)"
    times = {job: _start_end(job) for job in (prepare, teacher)}
    assert times[prepare][1] <= times[teacher][0], times  # sacct: the prepare job ended before the teacher began
    assert rm.split("_")[0] == rm_tl.split("_")[0], "the students form one array"
    assert sweeps.dependencies["student/RM"] == f"afterok:{teacher}(unfulfilled)"
    assert f"afterok:{rm}" in sweeps.dependencies["eval"] and f"afterok:{rm_tl}" in sweeps.dependencies["eval"]
    table = lambda work: json.loads((work / "report" / "table1.json").read_text())  # noqa: E731
    assert table(sweeps.slurm) == table(sweeps.local)  # read from the staged pack or from the files: the same


def test_the_jobs_read_a_staged_copy_of_the_packed_corpus_and_remove_it(sweeps: Sweeps):
    assert Workdir(sweeps.slurm).packed_done.is_file()
    assert any(name.endswith(".npy") for name in sweeps.staged), "no staged shard seen while the jobs ran"
    assert list(sweeps.stage.iterdir()) == []  # every job removed its copy at its end
    log = Registry(sweeps.slurm).logs(Registry(sweeps.slurm).get("teacher"))[0].read_text()
    assert "staged the packed corpus" in log


def _start_end(job: str) -> tuple[str, str]:
    """Slurm's accounting of a job's first start and last end (ISO times sort as text)."""
    out = subprocess.run(["sacct", "-n", "-P", "-X", "-D", "-j", job, "-o", "Start,End"], capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0].split("|")[0], out[-1].split("|")[1]


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


# ------------------------------------------------------------------------ a sweep in a folder its group shares

PEER, GROUP = "ctsl-peer", "ctsl-group"  # a second Unix user, in the group that owns the shared folder

_APPTAINER = """#!/bin/sh
# A stand-in for apptainer: records its arguments, then runs the command after the image.
printf '%s\\n' "$@" > "$CTSL_APPTAINER_ARGS"
while [ $# -gt 0 ]; do case "$1" in exec|--nv|--bind=*) shift ;; *) shift; break ;; esac; done
exec "$@"
"""


@dataclass
class SharedSweep:
    work: Path
    secrets: tuple[str, ...]  # typed into the config, each must stay on this machine
    probe: str  # the value of the variable ${env:CTSL_TEST_PROBE} named, read in the job alone
    apptainer_args: Path
    eval_job: str  # still pending (it may begin in an hour)


def _as_peer(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", f"--reuid={PEER}", f"--regid={GROUP}", "--init-groups", "sh", "-c", script],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def shared_sweep(sweeps: Sweeps, slurm_cluster, mlflow_server) -> SharedSweep:
    """The students and the evaluation submitted with the defaults into a folder that the group ``ctsl-group`` may
    enter and write (so that only the package's permissions decide), tracked by a real server through a URI
    with a password, with secrets in ``slurm.env`` and a setup line, the students in a (stand-in) Apptainer."""
    import secrets as random_secrets

    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("a second Unix user needs root and useradd")
    subprocess.run(["groupadd", "-f", GROUP], check=True)
    if subprocess.run(["id", PEER], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "-M", "-N", "-g", GROUP, "-s", "/bin/sh", PEER], check=True)
    shared = Path(tempfile.mkdtemp(prefix="ctsl-shared-", dir="/tmp"))
    shutil.chown(shared, group=GROUP)
    shared.chmod(0o2770)  # setgid: what is made inside belongs to the group
    bin_dir = shared / "bin"
    bin_dir.mkdir()
    (bin_dir / "apptainer").write_text(_APPTAINER)
    (bin_dir / "apptainer").chmod(0o755)
    work, _ = _copy_with_teacher(sweeps.local, shared / "w")
    password, token, key, probe = (random_secrets.token_hex(8) for _ in range(4))
    host = mlflow_server.url.removeprefix("http://")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "USER": "root", "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "CTSL_TEST_PROBE": probe, "CTSL_APPTAINER_ARGS": str(shared / "apptainer-args")}
    out = subprocess.run([
        sys.executable, "-m", "ctsl_hpc.launch", "sweep", "--cluster", "slurm", "--workdir", str(work), *TINY,
        "tracking.enabled=true", f"tracking.uri=http://alice:{password}@{host}",
        "tracking.experiment=shared-sweep", f"slurm.env={{HF_TOKEN: {token}, CTSL_PROBE: '${{env:CTSL_TEST_PROBE}}'}}",
        f"slurm.setup=['export WANDB_API_KEY={key}', 'echo \"$CTSL_PROBE\" > {shared}/probe']",
        "slurm.students.container={runtime: apptainer, image: /images/ctsl.sif, mounts: ['/scratch/$USER:/scratch']}",
        f"slurm.students.python={sys.executable}", "slurm.eval.additional={begin: now+3600}",
    ], capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[2], timeout=300)
    assert out.returncode == 0, out.stderr
    eval_job = Registry(work).get("eval").job_id
    slurm_cluster.wait_until(lambda: all(_state(work, f"student/{v}")[0] == "COMPLETED" for v in ("RM", "RM+TL")), 240,
                             "the students finish", work)
    yield SharedSweep(work, (password, token, key), probe, shared / "apptainer-args", eval_job)
    subprocess.run(["scancel", eval_job], capture_output=True)
    shutil.rmtree(shared, ignore_errors=True)


def test_a_group_member_cannot_write_what_the_jobs_run(shared_sweep: SharedSweep):
    work = shared_sweep.work
    made = [p for top in ("code", "slurm", "tracking", "jobs", "students") for p in [work / top, *(work / top).rglob("*")]]
    writable = [p for p in made if p.stat().st_mode & 0o022]
    assert not writable and (work / "tracking").is_dir() and list((work / "code").iterdir())
    pickles, scripts = list(work.glob("slurm/*/*.pkl")), list(work.glob("slurm/*/*_submission.sh"))
    assert pickles and scripts
    code = next((work / "code").iterdir())
    spool = [p for p in (work / "tracking").rglob("*") if p.is_file()]
    targets = [*pickles, *scripts, code / "ctsl_hpc" / "__init__.py", *spool]
    folders = [work, work / "slurm", *(p.parent for p in pickles), code, code / "ctsl_hpc", work / "tracking"]
    probe = ("for f in " + " ".join(shlex.quote(str(p)) for p in targets) + '; do echo x >> "$f" 2>/dev/null && '
             'echo "wrote $f"; done; for d in ' + " ".join(shlex.quote(str(p)) for p in folders) +
             '; do touch "$d/planted" 2>/dev/null && echo "made $d/planted"; done; touch ' +
             shlex.quote(str(work.parent / "peer-was-here")) + " && echo the peer writes the shared folder")
    seen = _as_peer(probe)
    assert seen.stdout == "the peer writes the shared folder\n", seen.stdout + seen.stderr  # and nothing of the sweep
    for log in work.glob("slurm/*/*_log.*"):  # Slurm makes them the job's: its owner's and its primary group's
        assert log.stat().st_mode & 0o777 == 0o640, log  # readable, so a group can follow a shared sweep
    assert all(p.group() == GROUP for p in [work / "slurm", *work.glob("slurm/*/")])  # the shared folder's group


def test_a_job_whose_folder_the_group_can_write_refuses_to_start(shared_sweep: SharedSweep, slurm_cluster):
    folder = shared_sweep.work / "slurm" / shared_sweep.eval_job
    folder.chmod(0o770)  # a member of the group could now swap the pickle submitit unpickles
    subprocess.run(["scontrol", "update", f"jobid={shared_sweep.eval_job}", "StartTime=now"], check=True)
    assert slurm_cluster.wait_for(shared_sweep.eval_job) == "FAILED"
    err = (folder / f"{shared_sweep.eval_job}_0_log.err").read_text()
    assert f"refusing to start: {folder} is writable by others than its owner" in err
    assert "Traceback" not in err  # nothing was unpickled


def test_secrets_reach_neither_the_server_nor_the_logs_and_env_references_reach_the_job(
    shared_sweep: SharedSweep, mlflow_server
):
    work = shared_sweep.work
    runs = mlflow_server.post("runs/search", {"experiment_ids": [
        mlflow_server.api("experiments/get-by-name", experiment_name="shared-sweep")["experiment"]["experiment_id"]]})
    assert runs["runs"] and any(p["key"] == "tracking.uri" for r in runs["runs"] for p in r["data"].get("params", []))
    server_side = [p for p in mlflow_server.root.rglob("*") if p.is_file()]  # the database, every artifact, its log
    kept = {work / "config.yaml", *work.glob("slurm/*/*_submission.sh"), *work.glob("slurm/*/*_submitted.pkl"),
            *work.glob("slurm/.submission_file_*.sh")}  # (submitit's links to the scripts)
    ours = [p for p in work.rglob("*") if p.is_file() and p not in kept]
    for secret in (*shared_sweep.secrets, shared_sweep.probe):
        leaks = [p for p in [*server_side, *ours] if secret.encode() in p.read_bytes()]
        assert not leaks, [line for p in leaks for line in p.read_text(errors="replace").splitlines() if secret in line]
    shared = [p for p in kept if p.stat().st_mode & 0o077]
    assert not shared, shared  # what keeps them is its owner's alone
    assert (work.parent / "probe").read_text() == f"{shared_sweep.probe}\n"  # ${env:...} read in the job
    assert "${env:CTSL_TEST_PROBE}" in (work / "config.yaml").read_text()
    assert "--bind=/scratch/root:/scratch" in shared_sweep.apptainer_args.read_text().splitlines()  # $USER expanded
