"""The Slurm layer without a cluster: array chunks, sacct parsing, the plan, config, CLI errors, dry run."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ctsl_hpc.config import ConfigError, load_config
from ctsl_hpc.launch import slurm_cli
from ctsl_hpc.launch.backends.slurm import executor_parameters, tasks_per_node
from ctsl_hpc.launch.graph import plan_sweep
from ctsl_hpc.launch.job_registry import JobRecord, Registry
from ctsl_hpc.run_records import EpochRecord, History, write_history
from ctsl_hpc.workdir import RunDir, Workdir


def test_arrays_are_split_into_chunks_of_at_most_max_array_size():
    rng = random.Random()
    for _ in range(50):
        items = list(range(rng.randint(1, 80)))
        size = rng.randint(1, 20)
        parts = slurm_cli.chunks(items, size)
        assert [x for part in parts for x in part] == items
        assert all(1 <= len(part) <= size for part in parts)
        assert len(parts) == -(-len(items) // size)
    with pytest.raises(ValueError):
        slurm_cli.chunks([1], 0)


def test_afterok_dependency_lists_every_job():
    assert slurm_cli.dependency(["12", "13_0", "13_1"]) == "afterok:12:13_0:13_1"
    assert slurm_cli.dependency([]) is None


def test_sacct_array_ids_and_gpu_counts_are_parsed():
    assert slurm_cli._expand_array("12_[0-2,5%2]") == ["12_0", "12_1", "12_2", "12_5"]
    assert slurm_cli._expand_array("12_3") == ["12_3"]
    assert slurm_cli._gpus("billing=2,cpu=2,gres/gpu=2,mem=2000M,node=1") == 2
    assert slurm_cli._gpus("cpu=8,gres/gpu:a100=4,node=1") == 4
    assert slurm_cli._gpus("cpu=1,mem=1000M,node=1") == 0


def test_stage_settings_inherit_defaults_and_merge_additional():
    cfg = load_config(None, [
        "slurm.partition=gpu", "slurm.gpus_per_node=1", "slurm.additional={exclusive: true}",
        "slurm.students.gpus_per_node=4", "slurm.students.additional={reservation: r1}", "slurm.eval.partition=cpu",
    ])
    students, teacher, evaluation = (cfg.slurm.stage(s) for s in ("students", "teacher", "eval"))
    assert (students.partition, students.gpus_per_node) == ("gpu", 4)
    assert students.additional == {"exclusive": True, "reservation": "r1"}
    assert (teacher.partition, teacher.gpus_per_node, teacher.additional) == ("gpu", 1, {"exclusive": True})
    assert evaluation.partition == "cpu"
    with pytest.raises(ConfigError, match="slurm.students.signal_delay_s"):
        load_config(None, ["slurm.students.time_min=2", "slurm.students.signal_delay_s=120"])
    with pytest.raises(ConfigError, match="slurm.teacher.cpus_per_task"):
        load_config(None, ["slurm.teacher.cpus_per_task=0"])


def test_ddp_training_stages_get_one_task_per_gpu():
    cfg = load_config(None, ["train.engine=ddp", "slurm.gpus_per_node=4"])
    assert tasks_per_node(cfg, "students") == 4
    assert tasks_per_node(cfg, "eval") == 1
    assert tasks_per_node(load_config(None, ["slurm.gpus_per_node=4"]), "teacher") == 1


def test_plan_skips_done_stages_and_waits_on_queued_jobs(tmp_path: Path):
    cfg = load_config(None, ["student.variants=[RM,RM+TL,RM+CL]"])
    Workdir(tmp_path).teacher.path.mkdir()
    Workdir(tmp_path).teacher.write_summary(2, {1: 0.1, 2: 0.2})
    registry = Registry(tmp_path)
    registry.put(JobRecord("student/RM", "students", "RM", job_id="7_0"))
    registry.put(JobRecord("student/RM+CL", "students", "RM+CL", job_id="7_2"))
    plan = {p.stage: p for p in plan_sweep(Workdir(tmp_path), cfg, {"7_0": "RUNNING", "7_2": "FAILED"})}
    assert [t.key for t in plan["teacher"].done] == ["teacher"] and not plan["teacher"].submit
    assert {t.key: j for t, j in plan["students"].running.items()} == {"student/RM": "7_0"}
    assert [t.key for t in plan["students"].submit] == ["student/RM+TL", "student/RM+CL"]
    assert [t.key for t in plan["eval"].submit] == ["eval"]


def test_registry_round_trips_records_and_run_folders_report_training_progress(tmp_path: Path):
    registry = Registry(tmp_path)
    registry.put(JobRecord("student/RM+TL", "students", "RM+TL", job_id="3_1", resources={"mem_gb": 2.0}))
    registry.update("student/RM+TL", state="RUNNING", requeues=2)
    record = Registry(tmp_path).get("student/RM+TL")
    assert (record.job_id, record.state, record.requeues, record.resources) == ("3_1", "RUNNING", 2, {"mem_gb": 2.0})
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    write_history(run.history, History([EpochRecord(1, [0.4] * 3, 0.4, {}), EpochRecord(2, [0.3] * 3, 0.3, {})]))
    assert run.progress() == (2, 0.4)
    with pytest.raises(KeyError):
        registry.update("eval", state="RUNNING")


def _cli(*args: str, path: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if path is not None:
        env["PATH"] = path
    return subprocess.run([sys.executable, "-m", "ctsl_hpc.launch", *args], capture_output=True, text=True, env=env, timeout=120)


def test_slurm_sweep_without_sbatch_on_path_fails_with_a_clear_error(tmp_path: Path):
    out = _cli("sweep", "--cluster", "slurm", "--workdir", str(tmp_path / "w"), path=str(Path(sys.executable).parent))
    assert out.returncode == 2, out.stderr
    assert "sbatch" in out.stderr and "not found on PATH" in out.stderr
    assert not (tmp_path / "w").exists()


def test_dry_run_prints_jobs_and_resources_quickly_and_submits_nothing(tmp_path: Path):
    work = tmp_path / "w"
    started = time.monotonic()
    out = _cli("sweep", "--dry-run", "--cluster", "slurm", "--workdir", str(work), "student.variants=[RM,RM+TL]",
               "slurm.students.gpus_per_node=2", "slurm.students.partition=gpu", path=str(Path(sys.executable).parent))
    elapsed = time.monotonic() - started
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("dry run: nothing is submitted")
    assert any(line.startswith("students: submit [RM, RM+TL]") for line in lines)
    assert any("partition=gpu" in line and "gpus/node=2" in line and "afterok on the teacher" in line for line in lines)
    assert any(line.startswith("eval: submit [eval]") for line in lines)
    prepare = next(i for i, line in enumerate(lines) if line.startswith("prepare: submit [prepare]"))
    assert prepare < next(i for i, line in enumerate(lines) if line.startswith("teacher: submit [teacher]"))
    resources = next(line for line in lines[prepare:] if "gpus/node=" in line)
    assert "gpus/node=0" in resources and "dependency" not in resources  # a CPU job at the head of the graph
    assert not work.exists()
    assert elapsed < 2.0 * (1 + os.getloadavg()[0] / 2), f"dry run took {elapsed:.1f} s"


def test_gpu_example_config_runs_one_task_per_gpu_the_teacher_on_two_nodes_and_one_gpu_for_eval():
    from ctsl_hpc.config import CONFIG_DIR

    cfg = load_config(CONFIG_DIR / "slurm-gpu.yaml")
    teacher, evaluation = cfg.slurm.stage("teacher"), cfg.slurm.stage("eval")
    assert (teacher.nodes, teacher.gpus_per_node, tasks_per_node(cfg, "teacher"), teacher.time_min) == (2, 4, 4, 1440)
    assert (evaluation.nodes, evaluation.gpus_per_node, tasks_per_node(cfg, "eval")) == (1, 1, 1)
    params = executor_parameters("x", cfg.slurm.stage("students"), tasks_per_node(cfg, "students"))
    assert params["gpus_per_node"] == 4 and params["tasks_per_node"] == 4 and params["slurm_partition"] == "gpu"
    assert params["nodes"] == 1 and cfg.train.batch_size % (teacher.nodes * tasks_per_node(cfg, "teacher")) == 0


@pytest.mark.parametrize(("overrides", "key", "message"), [
    (["slurm.nodes=2"], "slurm.teacher.nodes", "several nodes need train.engine ddp or deepspeed"),
    (["train.engine=ddp", "slurm.nodes=3", "train.batch_size=8"], "slurm.teacher.nodes",
     "train.batch_size=8 is the global batch: it must divide by the ranks, nodes x tasks per node = 3 x 1 = 3"),
    (["train.engine=deepspeed", "slurm.students.nodes=2", "slurm.gpus_per_node=3", "train.batch_size=9"],
     "slurm.students.nodes", "nodes x tasks per node = 2 x 3 = 6"),
    (["train.engine=ddp", "slurm.eval.nodes=2"], "slurm.eval.nodes", "the eval stage is one process: it runs on 1 node"),
    (["slurm.prepare.nodes=2"], "slurm.prepare.nodes", "the prepare stage is one process: it runs on 1 node"),
])
def test_multi_node_settings_are_checked_before_submission(overrides, key, message, tmp_path: Path):
    from ctsl_hpc.config import check_training_ranks

    pattern = rf"^{re.escape(key)}: (.* )?{re.escape(message)}"
    if key in ("slurm.eval.nodes", "slurm.prepare.nodes"):  # wrong in any sweep: refused when the config is read
        with pytest.raises(ConfigError, match=pattern):
            load_config(None, overrides)
        return
    cfg = load_config(None, overrides)  # sweep --tune reads it: its nodes are Ray nodes
    with pytest.raises(ConfigError, match=pattern):
        check_training_ranks(cfg)
    out = subprocess.run([sys.executable, "-m", "ctsl_hpc.launch", "sweep", "--cluster", "slurm", "--dry-run",
                          "--workdir", str(tmp_path / "w"), *overrides], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and f"{key}: " in out.stderr and message in out.stderr, out.stderr
    assert not (tmp_path / "w").exists()


def test_several_nodes_keep_the_evaluation_on_one_and_export_slurm_env(tmp_path: Path, rng: np.random.Generator):
    from ctsl_hpc.launch.backends.slurm import stage_parameters

    nodes = int(rng.integers(2, 9))
    cfg = load_config(None, ["train.engine=ddp", f"slurm.nodes={nodes}", f"train.batch_size={4 * nodes}",
                             "slurm.env={GLOO_SOCKET_IFNAME: eth0, NCCL_SOCKET_IFNAME: ib0}"])
    for stage, expected in (("teacher", nodes), ("students", nodes), ("eval", 1), ("tune", nodes)):
        _, params = stage_parameters(cfg, stage, code=tmp_path)
        assert params["nodes"] == expected, stage
        assert {"export GLOO_SOCKET_IFNAME=eth0", "export NCCL_SOCKET_IFNAME=ib0"} <= set(params["slurm_setup"])


def test_job_environment_exports_runs_setup_then_the_frozen_code_and_wraps_containers(tmp_path: Path):
    from ctsl_hpc.launch.job_script import PYXIS_MOUNTS_VARIABLE, job_environment

    cfg = load_config(None, [
        "slurm.setup=['module load cuda/12.4', 'source /shared/venv/bin/activate']", "slurm.env={NCCL_SOCKET_IFNAME: ib0}",
        "slurm.students.setup=['conda activate ctsl']", "slurm.teacher.gpus_per_node=4",
        "slurm.teacher.container={runtime: apptainer, image: /shared/ctsl.sif, mounts: [/shared, '/scratch/$USER']}",
        "slurm.eval.container={runtime: pyxis, image: 'nvcr.io#nvidia/pytorch:24.05-py3', mounts: ['/shared:/shared']}",
    ])
    python, setup, srun = job_environment(cfg.slurm.stage("students"), tmp_path / "code" / "abc")
    assert setup == ["export NCCL_SOCKET_IFNAME=ib0", "conda activate ctsl",
                     f"export PYTHONPATH={tmp_path}/code/abc${{PYTHONPATH:+:$PYTHONPATH}}", "export PYTHONSAFEPATH=1"]
    assert python is None and srun == []  # the interpreter that submits
    python, setup, _ = job_environment(cfg.slurm.stage("teacher"), None)
    assert setup[1:] == ["module load cuda/12.4", "source /shared/venv/bin/activate"]
    # the mounts expand in the job: $USER is the user's there, not a literal
    assert python == 'apptainer exec --nv "--bind=/shared" "--bind=/scratch/$USER" /shared/ctsl.sif python3'
    python, setup, srun = job_environment(cfg.slurm.stage("eval"), None)
    assert python == "python3"
    assert srun == ["--container-image=nvcr.io#nvidia/pytorch:24.05-py3"]
    assert setup[-1] == f'export {PYXIS_MOUNTS_VARIABLE}="/shared:/shared"'


def test_the_job_script_first_checks_who_can_write_what_it_runs(tmp_path: Path):
    from ctsl_hpc.launch.job_script import job_environment

    cfg = load_config(None, ["slurm.env={TOKEN: '${env:MY_TOKEN}'}"])
    _, setup, _ = job_environment(cfg.slurm.stage("students"), tmp_path / "code", tmp_path / "slurm")
    assert "-perm /022" in setup[0] and str(tmp_path / "slurm") in setup[0] and str(tmp_path / "code") in setup[0]
    assert setup[1] == 'export TOKEN="${MY_TOKEN}"'  # the secret is the job's environment's, never in the script
    job = tmp_path / "slurm" / "41"
    job.mkdir(parents=True, mode=0o750)
    (tmp_path / "slurm").chmod(0o750)
    (tmp_path / "code").mkdir(mode=0o750)
    (job / "41_submitted.pkl").write_bytes(b"")
    (job / "41_submitted.pkl").chmod(0o640)

    def started() -> subprocess.CompletedProcess:
        script = f"{setup[0]}\necho started"
        return subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                              env={"PATH": os.environ["PATH"], "SLURM_JOB_ID": "41", "MY_TOKEN": "x"})

    assert started().stdout == "started\n"
    (job / "41_submitted.pkl").chmod(0o660)  # a group member could replace what submitit unpickles
    refused = started()
    assert refused.returncode == 1 and refused.stdout == ""
    assert f"{job}/41_submitted.pkl is writable by others than its owner" in refused.stderr


@pytest.mark.parametrize(("override", "key"), [
    ('slurm.setup=["one\\ntwo"]', "slurm.setup[0]"),
    ("slurm.container={runtime: pyxis}", "slurm.container.image"),
    ("slurm.env={'A-B': x}", "slurm.env.A-B"),
    ("slurm.tune.python=''", "slurm.tune.python"),
])
def test_a_bad_job_environment_names_its_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.").replace("[", r"\[")):
        load_config(None, [override])
