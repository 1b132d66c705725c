"""Slurm's task variables become torch's env:// variables (the only place the package reads SLURM_*)."""

from __future__ import annotations

import json
import os
from unittest import mock

import pytest

from ctsl_hpc.launch import slurm_env
from ctsl_hpc.track.tags import RUN_TAGS_ENV, SOURCE_TYPE, command_tags, context_tags
from ctsl_hpc.train.ranks import rank_env

TORCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _slurm_task(monkeypatch: pytest.MonkeyPatch, job: int, procid: int, localid: int) -> None:
    for key in TORCH_VARS:
        monkeypatch.delenv(key, raising=False)
    values = {
        "SLURM_JOB_ID": str(job), "SLURM_PROCID": str(procid), "SLURM_NTASKS": "4", "SLURM_LOCALID": str(localid),
        "SLURM_NODEID": str(procid // 2), "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "gpu[07-08]",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)


@pytest.fixture(autouse=True)
def _restore_environment():
    """Exports write os.environ directly: restore all of it (monkeypatch forgets keys that were absent)."""
    with mock.patch.dict(os.environ):
        yield


def test_slurm_task_variables_become_torch_rank_variables(monkeypatch, rng):
    job = int(rng.integers(1, 10**6))
    ports = []
    for procid, localid in ((0, 0), (3, 1)):
        _slurm_task(monkeypatch, job, procid, localid)
        slurm_env.export_ranks()
        env = rank_env()  # the core reads only the exported env:// variables
        assert (env.rank, env.world_size, env.local_rank) == (procid, 4, localid)
        assert os.environ["MASTER_ADDR"] == "gpu07"
        ports.append(int(os.environ["MASTER_PORT"]))
    assert ports[0] == ports[1] and 20000 <= ports[0] <= 60000  # every task agrees without talking


def test_a_single_task_job_exports_nothing(monkeypatch):
    _slurm_task(monkeypatch, 5, 0, 0)
    monkeypatch.setenv("SLURM_NTASKS", "1")
    slurm_env.export_ranks()
    assert "RANK" not in os.environ


def test_job_ids_reach_every_run_as_tags(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setenv(RUN_TAGS_ENV, "")
    slurm_env.export_run_tags()
    assert json.loads(os.environ[RUN_TAGS_ENV])["slurm.job_id"] == "4242"
    assert context_tags()["slurm.array_task_id"] == "3"


def test_a_job_keeps_the_command_its_submitter_exported_and_says_it_is_a_job(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    submitted = command_tags("python -m ctsl_hpc.launch", ["sweep", "--cluster", "slurm", "x=1"])
    monkeypatch.setenv(RUN_TAGS_ENV, json.dumps(submitted))  # inherited from the sbatch environment
    slurm_env.export_run_tags()
    tags = context_tags()
    assert {k: tags[k] for k in submitted} == submitted
    assert tags[SOURCE_TYPE] == "JOB" and tags["slurm.job_id"] == "77"
