"""A work directory keeps its experiment; only runtime settings may change between runs."""

import pytest
import yaml

from ctsl_hpc.config import load_config
from ctsl_hpc.workdir import CONFIG_FILE, ConfigMismatch, open_workdir


def test_runtime_settings_may_change_and_are_saved(tmp_path):
    open_workdir(load_config(None, [f"workdir={tmp_path}"]))
    moved = load_config(None, [f"workdir={tmp_path}", "slurm.partition=gpu", "tracking.uri=http://127.0.0.1:5000"])
    open_workdir(moved)
    saved = yaml.safe_load((tmp_path / CONFIG_FILE).read_text())
    assert saved["slurm"]["partition"] == "gpu" and saved["tracking"]["uri"] == "http://127.0.0.1:5000"


def test_experiment_changes_are_refused_naming_the_keys(tmp_path):
    open_workdir(load_config(None, [f"workdir={tmp_path}"]))
    with pytest.raises(ConfigMismatch, match=r"differs at: student\.lambda_cl, train\.epochs\)"):
        open_workdir(load_config(None, [f"workdir={tmp_path}", "train.epochs=3", "student.lambda_cl=1"]))
