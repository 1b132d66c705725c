"""The demo pipeline logs its whole run tree to a real MLflow server, and a rerun duplicates nothing."""

from __future__ import annotations

import json
import re

import pytest
from mlflow import MlflowClient

from ctsl_hpc.launch.__main__ import main
from ctsl_hpc.model import WEIGHTS_FILE
from ctsl_hpc.stage_jobs import evaluate_job
from ctsl_hpc.workdir import Workdir
from tests.helpers import STUDENT_ARTIFACTS, STUDENT_TAGS, student_run_shape

STUDENTS = ["RH", "RM", "RM+TL", "RM+CL", "RM+TL+CL"]


def child_runs(client: MlflowClient, experiment: str) -> dict[str, object]:
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=100)
    return {r.info.run_name: r for r in runs}


@pytest.mark.slow
def test_sweep_logs_tree_metrics_and_artifacts_to_a_real_server(mlflow_server, tiny_overrides, tmp_path):
    experiment = "pipeline-test"
    args = ["sweep", *tiny_overrides(tmp_path / "w"), f"tracking.uri={mlflow_server.url}", f"tracking.experiment={experiment}"]
    assert main(args) == 0
    client = MlflowClient(mlflow_server.url)
    runs = child_runs(client, experiment)
    assert set(runs) == {f"sweep {tmp_path.joinpath('w').name}", "teacher", *(f"student/{v}" for v in STUDENTS)}
    parent = runs.pop(f"sweep {tmp_path.joinpath('w').name}")
    assert parent.data.params["student.lambda_tl"] == "100.0"
    fingerprint = json.loads(Workdir(tmp_path / "w").fingerprint.read_text())["fingerprint"]
    assert parent.data.tags["ctsl.corpus_fingerprint"] == fingerprint  # what data this sweep saw
    assert parent.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "report")} >= {
        "report/table1.md", "report/table1.json", "report/table2.md", "report/scores.csv", "report/ccc_vs_snr.png",
        "report/diagnostics.md", "report/pred_vs_true.png", "report/predictions",
    }
    for name, run in runs.items():
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        history = client.get_metric_history(run.info.run_id, "dev/ccc_mean")
        assert sorted(m.step for m in history) == [1, 2], name
        for key in ("loss/ccc", "loss/total", "ccc/snr0/arousal", "ccc/clean/valence", "r/snr0/arousal",
                    "bias/clean/valence", "emb/snr0/rmse", "emb/snr5/infonce", "emb/snr5/anchors"):
            assert key in run.data.metrics, (name, key)
        assert f"model/{WEIGHTS_FILE}" in {a.path for a in client.list_artifacts(run.info.run_id, "model")}
        assert run.info.status == "FINISHED", name
        if name.startswith("student/"):
            assert student_run_shape(client, run) == (STUDENT_ARTIFACTS, STUDENT_TAGS), name
    colours = [run.data.tags["mlflow.runColor"] for run in runs.values()]  # the charts tell the six models apart
    assert len(set(colours)) == len(runs) and all(re.fullmatch("#[0-9a-f]{6}", c) for c in colours), colours
    tl = client.get_metric_history(runs["student/RM+TL+CL"].info.run_id, "loss/tl")
    assert all(m.value > 0 for m in tl)

    assert main(args) == 0  # the same command again: reopens the same runs, logs nothing twice
    again = child_runs(client, experiment)
    assert {n: r.info.run_id for n, r in again.items() if n in runs} == {n: r.info.run_id for n, r in runs.items()}
    assert len(again) == len(runs) + 1
    history = client.get_metric_history(runs["teacher"].info.run_id, "dev/ccc_mean")
    assert sorted(m.step for m in history) == [1, 2]
    assert {n: r.info.status for n, r in again.items()} == {n: "FINISHED" for n in again}

    # the Slurm evaluation job's path: extra parent metrics (its GPU-hours) land before the tree ends
    evaluate_job(tmp_path / "w", usage=lambda workdir: {"gpu_hours/total": 1.5})
    parent = client.get_run(parent.info.run_id)
    assert parent.data.metrics["gpu_hours/total"] == 1.5 and parent.info.status == "FINISHED"
    assert "GPU-hours of the sweep: 1.500" in parent.data.tags["mlflow.note.content"]


def test_only_rank_zero_of_a_multi_rank_job_opens_the_run_tree(tiny_overrides, tmp_path, monkeypatch):
    from ctsl_hpc import stage_jobs
    from ctsl_hpc.config import load_config
    from ctsl_hpc.experiment import Experiment

    exp = Experiment.open(load_config(None, tiny_overrides(tmp_path / "w")))  # tracking on: the embedded store
    for key, value in {"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(key, value)  # as a launcher exports them to the job's second rank
    assert stage_jobs._tracker(exp) == (None, "")
    assert not (tmp_path / "w" / "mlflow.db").exists() and not (tmp_path / "w" / "tracking").exists()
