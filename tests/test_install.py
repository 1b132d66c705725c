"""The package installs as a wheel and runs from anywhere: its configs travel inside it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ctsl_hpc.workdir import Workdir
from tests.conftest import pip_install

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_wheel_runs_a_dry_run_and_a_tiny_sweep_from_an_unrelated_folder(fresh_venv, tiny_overrides, tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", dist, REPO],
                   check=True, timeout=300)
    (wheel,) = dist.glob("ctsl_hpc-*.whl")
    python = fresh_venv()
    pip_install(python, str(wheel))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only what the environment installed

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([python, *args], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)

    where = run("-c", "import ctsl_hpc; print(ctsl_hpc.__file__)").stdout.strip()
    assert str(REPO) not in where and "site-packages" in where, where
    # the paper's config by its shipped name; its DeepSpeed config ("configs/deepspeed/zero2.json") and the backbone
    # shipped with the package; a corpus and noise that exist (the dry run checks every input)
    inputs = [o for o in tiny_overrides(tmp_path / "paper") if o.split("=")[0] in
              ("data.corpus", "data.manifest", "noise.train", "noise.dev", "noise.test")]
    out = run("-m", "ctsl_hpc.launch", "sweep", "--config", "paper", "--dry-run", "--cluster", "slurm",
              "--workdir", str(tmp_path / "paper"), *inputs, "model.backbone=tiny-ssl")
    assert out.returncode == 0, out.stderr
    assert "teacher: submit [teacher]" in out.stdout and "students: submit [RH, RM, RM+TL, RM+CL, RM+TL+CL]" in out.stdout
    workdir = Workdir(tmp_path / "w")
    out = run("-m", "ctsl_hpc.launch", "sweep", *tiny_overrides(workdir.root), "student.variants=[RM]",
              "tracking.enabled=false")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| RM |" in out.stdout and workdir.report.table1_json.is_file()
