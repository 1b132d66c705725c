"""A work directory keeps its experiment; only runtime settings may change between runs."""

import pytest
import yaml

from ctsl_hpc.config import load_config
from ctsl_hpc.workdir import ConfigMismatch, RunDir, Workdir


def test_runtime_settings_may_change_and_are_saved(tmp_path):
    Workdir.open(load_config(None, [f"workdir={tmp_path}"]))
    moved = load_config(None, [f"workdir={tmp_path}", "slurm.partition=gpu", "tracking.uri=http://127.0.0.1:5000"])
    workdir = Workdir.open(moved)
    saved = yaml.safe_load(workdir.config_file.read_text())
    assert saved["slurm"]["partition"] == "gpu" and saved["tracking"]["uri"] == "http://127.0.0.1:5000"
    assert workdir.read_config() == moved


def test_experiment_changes_are_refused_naming_the_keys(tmp_path):
    Workdir.open(load_config(None, [f"workdir={tmp_path}"]))
    with pytest.raises(ConfigMismatch, match=r"differs at: student\.lambda_cl, train\.epochs\)"):
        Workdir.open(load_config(None, [f"workdir={tmp_path}", "train.epochs=3", "student.lambda_cl=1"]))


def test_a_stage_summary_names_no_path_so_a_moved_run_still_finds_its_best_model(tmp_path, rng):
    scores = {epoch: float(rng.uniform()) for epoch in range(1, 6)}
    best = max(scores, key=scores.get)
    RunDir(tmp_path / "a").path.mkdir()
    RunDir(tmp_path / "a").write_summary(best, scores)
    (tmp_path / "a").rename(tmp_path / "b")
    summary = RunDir(tmp_path / "b").summary()
    assert summary.dev_scores == scores and summary.best_dir == tmp_path / "b" / "epochs" / f"epoch-{best:03d}"
    assert str(tmp_path) not in RunDir(tmp_path / "b").done.read_text()


def test_each_start_of_a_run_records_its_ranks_hosts_and_status_shows_them(tmp_path, rng):
    from ctsl_hpc.launch.manage import StatusRow, format_status

    run = RunDir(tmp_path / "teacher")
    run.path.mkdir()
    assert run.starts() == []
    hosts = [f"node{int(i)}" for i in rng.integers(1, 9, size=3)]
    run.record_start(hosts, None)
    run.record_start(hosts[:1], 42)  # resumed on fewer nodes
    starts = run.starts()
    assert [(s["hosts"], s["resumed_step"]) for s in starts] == [(hosts, None), (hosts[:1], 42)]
    row = StatusRow("teacher", "", "7", "RUNNING", 60, 1, 2, 0.5, None, nodes="node[1-2]")
    header, line = format_status([row]).splitlines()[:2]
    assert header.split()[:5] == ["stage", "variant", "job", "id", "state"] and "nodes" in header
    assert line.split()[:4] == ["teacher", "7", "RUNNING", "node[1-2]"]
