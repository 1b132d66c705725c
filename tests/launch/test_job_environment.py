"""Jobs set up their environment (setup lines, an interpreter command) and run the code they were submitted with.

On the dev Slurm: a copy of the package installed (editable) in an environment of its own submits a sweep
whose jobs run ``slurm.setup`` lines and start Python through a wrapper that records its calls. The teacher
runs; then the copy changes and the students are submitted again, with a new frozen snapshot (the sweep
says so); then the copy breaks (a syntax error in ``losses.py``) and a running student is preempted: it
resumes and finishes from its snapshot, and every run records the code it ran in MLflow.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from mlflow import MlflowClient

from ctsl_hpc.launch.job_registry import Registry
from ctsl_hpc.workdir import Workdir
from tests.conftest import pip_install

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def _state(workdir: Workdir, key: str) -> str | None:
    record = Registry(workdir.root).get(key)
    if record is not None and record.state == "FAILED":
        raise AssertionError(f"{key} failed: {record.message}")
    return None if record is None else record.state


def test_setup_lines_wrapper_and_frozen_code_survive_an_edited_and_broken_package(
    slurm_cluster, fresh_venv, tiny_overrides, tmp_path
):
    copy = tmp_path / "src"
    shutil.copytree(REPO / "ctsl_hpc", copy / "ctsl_hpc", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, copy / name)
    python = fresh_venv()
    pip_install(python, "-e", str(copy))
    record, marker = tmp_path / "wrapper-calls.txt", tmp_path / "setup-ran.txt"
    wrapper = tmp_path / "python-wrapper.sh"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {record}\nexec {python} "$@"\n')
    wrapper.chmod(0o755)
    workdir = Workdir(tmp_path / "w")
    overrides = [
        *tiny_overrides(workdir.root), "student.variants=[RM]", "student.epochs=3", "slurm.time_min=15",
        "slurm.cpus_per_task=1", "slurm.mem_gb=1", f"slurm.python={wrapper}",
        f"slurm.setup=['echo $SLURM_JOB_ID $CTSL_TEST_STAGE >> {marker}']", "slurm.env={CTSL_TEST_STAGE: any}",
        "slurm.eval.env={CTSL_TEST_STAGE: eval}",
    ]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the copy, as its environment installed it

    def sweep(*extra: str) -> subprocess.CompletedProcess:
        # from the checkout, as users do: its ctsl_hpc/ must not shadow the frozen code in the jobs
        out = subprocess.run([python, "-m", "ctsl_hpc.launch", "sweep", "--cluster", "slurm", *overrides, *extra],
                             cwd=copy, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        return out

    dry = subprocess.run([python, "-m", "ctsl_hpc.launch", "sweep", "--cluster", "slurm", "--dry-run", *overrides],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert "#SBATCH" in dry.stdout and f"echo $SLURM_JOB_ID $CTSL_TEST_STAGE >> {marker}" in dry.stdout
    assert f"{wrapper} -u -m submitit.core._submit" in dry.stdout and "export CTSL_TEST_STAGE=eval" in dry.stdout
    assert "export PYTHONPATH=" in dry.stdout and not workdir.root.exists()  # a dry run writes nothing

    first = sweep("slurm.students.additional={begin: now+3600}")  # the teacher runs; the students wait
    slurm_cluster.wait_until(lambda: _state(workdir, "teacher") == "COMPLETED", 240, "teacher done", workdir.root)
    (code_a,) = workdir.code_snapshots()
    assert f"code {code_a}" in first.stdout
    subprocess.run([python, "-m", "ctsl_hpc.launch", "cancel", "--workdir", workdir.root], env=env, check=True)
    (copy / "ctsl_hpc" / "losses.py").write_text((copy / "ctsl_hpc" / "losses.py").read_text() + "\n# edited\n")
    second = sweep()  # the students and the evaluation again, from the edited package
    code_b = next(c for c in workdir.code_snapshots() if c != code_a)
    assert "the package changed since the earlier submissions" in second.stdout and code_b in second.stdout

    key = "student/RM"
    slurm_cluster.wait_until(lambda: _state(workdir, key) == "RUNNING", 240, "student running", workdir.root)
    (copy / "ctsl_hpc" / "losses.py").write_text("def broken(:\n")  # what a half-saved edit looks like
    job = Registry(workdir.root).get(key).job_id
    subprocess.run(["scancel", "--signal=USR2", job], check=True)  # it stops after its next optimiser step
    slurm_cluster.wait_until(lambda: _state(workdir, "eval") == "COMPLETED", 420, "student resumed, eval done",
                             workdir.root)
    student = Registry(workdir.root).get(key)
    assert student.requeues >= 1 and student.code == code_b
    log = "".join(path.read_text() for path in Registry(workdir.root).logs(student))
    origin = f"code {code_b}: ctsl_hpc imported from {workdir.code / code_b / 'ctsl_hpc'}"
    assert log.count(origin) >= 2, log[-3000:]  # the first start and the restart after the preemption

    calls = record.read_text().splitlines()
    assert len(calls) >= 4 and all("-u -m submitit.core._submit" in c for c in calls)  # teacher, student x2, eval
    setup = marker.read_text().splitlines()
    assert len(setup) == len(calls) and {line.split()[1] for line in setup} == {"any", "eval"}
    status = subprocess.run([python, "-m", "ctsl_hpc.launch", "status", "--workdir", workdir.root], env=env,
                            capture_output=True, text=True, check=True).stdout
    assert code_a in status and code_b in status

    client = MlflowClient(f"sqlite:///{workdir.mlflow_db}")
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("ctsl-demo").experiment_id])}
    assert runs["teacher"].data.tags["ctsl.code_hash"] == code_a
    assert runs[key].data.tags["ctsl.code_hash"] == code_b
    parent = next(r for name, r in runs.items() if name.startswith("sweep "))
    assert parent.data.tags["ctsl.code_snapshots"] == ",".join(sorted([code_a, code_b]))
