"""Tracking against a real MLflow server: the run tree, restarts, and a server that goes away."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from ctsl_hpc.config import load_config
from ctsl_hpc.launch import slurm_env
from ctsl_hpc.track.replay import replay_spool
from ctsl_hpc.track.runs import Tracker, flatten
from ctsl_hpc.track.tags import RUN_TAGS_ENV

if TYPE_CHECKING:
    from tests.mlflow_fixtures import MlflowServer


REPO = Path(__file__).resolve().parents[2]
JOB_ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


def _experiment_id(server: MlflowServer, name: str) -> str:
    return server.api("experiments/get-by-name", experiment_name=name)["experiment"]["experiment_id"]


def _runs(server: MlflowServer, experiment: str) -> dict[str, dict]:
    """Run name -> run JSON of every run in ``experiment``."""
    found = server.post("runs/search", {"experiment_ids": [_experiment_id(server, experiment)], "max_results": 100})
    return {run["info"]["run_name"]: run for run in found.get("runs", [])}


def _history(server: MlflowServer, run_id: str, key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of a metric's full history, ordered by step."""
    metrics = server.api("metrics/get-history", run_id=run_id, metric_key=key).get("metrics", [])
    pairs = sorted((int(m.get("step", 0)), m["value"]) for m in metrics)
    return [s for s, _ in pairs], [v for _, v in pairs]


def _tags(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def _params(run: dict) -> dict[str, str]:
    return {p["key"]: p["value"] for p in run["data"].get("params", [])}


def _artifacts(server: MlflowServer, run_id: str, path: str = "") -> set[str]:
    listing = server.api("artifacts/list", run_id=run_id, path=path).get("files", [])
    return {f["path"] for f in listing}


def _wait_for_system_metrics(server: MlflowServer, run_id: str, timeout_s: float) -> bool:
    """Poll (bounded) until the run has a ``system/`` metric logged by MLflow's monitor thread."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        metrics = server.api("runs/get", run_id=run_id)["run"]["data"].get("metrics", [])
        if any(m["key"].startswith("system/") for m in metrics):
            return True
        time.sleep(0.2)
    return False


def test_run_tree_with_params_tags_metrics_and_artifacts_reaches_the_server(
    mlflow_server: MlflowServer,
    tmp_path: Path,
    experiment: str,
    monkeypatch: pytest.MonkeyPatch,
    rng: np.random.Generator,
):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv(RUN_TAGS_ENV, "")
    slurm_env.export_run_tags()  # what a Slurm job does before it opens runs
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")
    config = load_config(None, [f"name={experiment}", "train.epochs=3", f"train.lr={rng.uniform()}", "student.variants=[RM]"])
    tracker = Tracker(tmp_path / "work", mlflow_server.url, experiment, system_metrics=True)
    parent = tracker.parent(config=config)
    losses = {key: rng.uniform(size=3) for key in ("teacher", "student/RM+TL")}
    for key, values in losses.items():
        with tracker.child(key, tags={"variant": key}) as run:
            for epoch, value in enumerate(values, start=1):
                run.log_metrics({"loss/total": value, "dev/ccc_mean": 1 - value}, step=epoch)
            run.log_metrics({"ccc/snr0/valence": float(values[-1])}, step=3)
            files = tmp_path / "work" / key
            (files / "model").mkdir(parents=True)
            (files / "scores.csv").write_text("condition,ccc\nsnr0,0.1\n")
            (files / "model" / "config.json").write_text("{}")
            run.log_artifact(files / "scores.csv")
            run.log_artifacts(files / "model", "model")
            assert _wait_for_system_metrics(mlflow_server, run.run_id, timeout_s=20)
    parent.finish()

    runs = _runs(mlflow_server, experiment)
    assert set(runs) == {f"sweep {tmp_path.joinpath('work').name}", "teacher", "student/RM+TL"}
    parent_run = runs[f"sweep {tmp_path.joinpath('work').name}"]
    parent_id = parent_run["info"]["run_id"]
    assert _params(parent_run) == flatten(config.to_dict())
    tags = _tags(parent_run)
    assert tags["slurm.job_id"] == "4242"
    assert len(tags["ctsl.config_hash"]) == 12 and tags["ctsl.version"] and tags["ctsl.host"]
    for key, values in losses.items():
        run = runs[key]
        run_id = run["info"]["run_id"]
        assert run["info"]["status"] == "FINISHED"
        assert _tags(run)["mlflow.parentRunId"] == parent_id
        assert _tags(run)["variant"] == key
        steps, logged = _history(mlflow_server, run_id, "loss/total")
        assert steps == [1, 2, 3] and logged == pytest.approx(values)
        steps, logged = _history(mlflow_server, run_id, "ccc/snr0/valence")
        assert steps == [3] and logged == pytest.approx([values[-1]])
        assert _artifacts(mlflow_server, run_id) == {"scores.csv", "model"}
        assert _artifacts(mlflow_server, run_id, "model") == {"model/config.json"}
    assert json.loads((tmp_path / "work" / "tracking" / "runs.json").read_text())["runs"] == {
        "parent": parent_id,
        **{key: runs[key]["info"]["run_id"] for key in losses},
    }


_KILLED_JOB = textwrap.dedent(
    """
    import json, os, sys
    from ctsl_hpc.config import load_config
    from ctsl_hpc.track.runs import Tracker
    workdir, uri, experiment, values = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    tracker = Tracker(workdir, uri, experiment, system_metrics=False)
    tracker.parent(config=load_config(None, ["seed=1"]))
    run = tracker.child("teacher")
    for epoch, value in enumerate(values, start=1):
        run.log_metrics({"loss/total": value}, step=epoch)
    print(json.dumps(tracker.run_ids()), flush=True)
    os._exit(137)  # killed: no finish(), no clean-up
    """
)


def test_restarted_job_reopens_its_runs_and_logs_no_duplicate_steps(
    mlflow_server: MlflowServer, tmp_path: Path, experiment: str, rng: np.random.Generator
):
    before, after = rng.uniform(size=3).tolist(), rng.uniform(size=4).tolist()
    job = subprocess.run(
        [sys.executable, "-c", _KILLED_JOB, str(tmp_path), mlflow_server.url, experiment, json.dumps(before)],
        capture_output=True, text=True, cwd=REPO, env=JOB_ENV, timeout=60,
    )  # fmt: skip
    assert job.returncode == 137, job.stderr
    first_ids = json.loads(job.stdout.strip().splitlines()[-1])
    assert _runs(mlflow_server, experiment)["teacher"]["info"]["status"] == "RUNNING"

    tracker = Tracker(tmp_path, mlflow_server.url, experiment, system_metrics=False)
    tracker.parent(config=load_config(None, ["seed=1"]))
    with tracker.child("teacher") as run:  # resumed from the epoch-1 checkpoint: epochs 2..5 again
        assert run.run_id == first_ids["teacher"]
        for epoch, value in enumerate(after, start=2):
            run.log_metrics({"loss/total": value}, step=epoch)
    assert tracker.run_ids() == first_ids

    runs = _runs(mlflow_server, experiment)
    assert len(runs) == 2
    assert runs["teacher"]["info"]["status"] == "FINISHED"
    steps, values = _history(mlflow_server, first_ids["teacher"], "loss/total")
    assert steps == [1, 2, 3, 4, 5]
    assert values == pytest.approx(before + after[2:])  # the first value of a (name, step) wins


def test_server_stopped_mid_run_spools_and_next_call_replays_everything_once(
    mlflow_server: MlflowServer, tmp_path: Path, experiment: str, rng: np.random.Generator
):
    values = rng.uniform(size=5).tolist()
    tracker = Tracker(tmp_path, mlflow_server.url, experiment, system_metrics=False, retry_interval_s=0)
    parent = tracker.parent(config=load_config(None, ["seed=2"]))
    teacher = tracker.child("teacher")
    for epoch in (1, 2):
        teacher.log_metrics({"loss/total": values[epoch - 1]}, step=epoch)

    durations = []

    def timed(call, *args, **kwargs):
        started = time.monotonic()
        result = call(*args, **kwargs)
        durations.append(time.monotonic() - started)
        return result

    mlflow_server.stop()
    try:
        for epoch in (3, 4, 5):
            timed(teacher.log_metrics, {"loss/total": values[epoch - 1], "dev/ccc_mean": 1.0 / epoch}, step=epoch)
        (tmp_path / "scores.csv").write_text("a,b\n1,2\n")
        timed(teacher.log_artifact, tmp_path / "scores.csv")
        timed(teacher.finish)
        student = timed(tracker.child, "student/RM")  # created while the server is away
        timed(student.log_metrics, {"loss/total": values[0]}, step=1)
        assert student.run_id is None
        assert tracker.pending() >= 7
    finally:
        mlflow_server.start()
    # each call tried the server once (retry_interval_s=0) and gave up fast (MLflow's default: minutes)
    assert max(durations) < 10, f"calls during the outage took {durations}"

    parent.set_tags({"phase": "server back"})  # the next call replays the spool, in order
    student.finish()
    parent.finish()
    assert tracker.pending() == 0
    assert replay_spool(tmp_path, mlflow_server.url) == 0

    runs = _runs(mlflow_server, experiment)
    ids = tracker.run_ids()
    assert {r["info"]["run_id"] for r in runs.values()} == set(ids.values())
    assert _tags(runs["student/RM"])["mlflow.parentRunId"] == ids["parent"]
    assert _tags(runs[f"sweep {tmp_path.name}"])["phase"] == "server back"
    assert all(run["info"]["status"] == "FINISHED" for run in runs.values())
    steps, logged = _history(mlflow_server, ids["teacher"], "loss/total")
    assert steps == [1, 2, 3, 4, 5] and logged == pytest.approx(values)
    assert _history(mlflow_server, ids["teacher"], "dev/ccc_mean")[0] == [3, 4, 5]
    assert _history(mlflow_server, ids["student/RM"], "loss/total") == ([1], pytest.approx([values[0]]))
    assert _artifacts(mlflow_server, ids["teacher"]) == {"scores.csv"}


def test_sync_replays_a_sweep_that_never_reached_its_server(
    mlflow_server: MlflowServer, tmp_path: Path, experiment: str, rng: np.random.Generator
):
    from ctsl_hpc.processes import free_port

    values = rng.uniform(size=3).tolist()
    unreachable = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    tracker = Tracker(tmp_path, unreachable, experiment, system_metrics=False, retry_interval_s=3600)
    parent = tracker.parent(config=load_config(None, ["train.epochs=3"]))
    with tracker.child("teacher") as teacher:
        for epoch, value in enumerate(values, start=1):
            teacher.log_metrics({"loss/total": value}, step=epoch)
    parent.finish()
    assert time.monotonic() - started < 10
    assert tracker.run_ids() == {}
    spooled = tracker.pending()

    assert replay_spool(tmp_path, mlflow_server.url) == 0
    assert replay_spool(tmp_path, mlflow_server.url) == 0  # a second sync sends nothing again
    ids = json.loads((tmp_path / "tracking" / "runs.json").read_text())["runs"]
    runs = _runs(mlflow_server, experiment)
    assert spooled >= 6 and set(runs) == {f"sweep {tmp_path.name}", "teacher"}
    assert runs["teacher"]["info"]["run_id"] == ids["teacher"]
    assert _params(runs[f"sweep {tmp_path.name}"]) == flatten(load_config(None, ["train.epochs=3"]).to_dict())
    steps, logged = _history(mlflow_server, ids["teacher"], "loss/total")
    assert steps == [1, 2, 3] and logged == pytest.approx(values)


_PARALLEL_JOB = textwrap.dedent(
    """
    import sys
    from ctsl_hpc.track.runs import Tracker
    tracker = Tracker(sys.argv[1], None, "parallel", system_metrics=False)
    tracker.parent()
    with tracker.child(sys.argv[2]) as run:
        for epoch in range(1, 4):
            run.log_metrics({"loss/total": 1.0 / epoch}, step=epoch)
    """
)


def test_parallel_jobs_share_the_embedded_sqlite_store_of_a_fresh_workdir(tmp_path: Path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    JOB_ENV.pop("MLFLOW_TRACKING_URI", None)
    jobs = [
        subprocess.Popen(
            [sys.executable, "-c", _PARALLEL_JOB, str(tmp_path), key], cwd=REPO, env=JOB_ENV, stderr=subprocess.PIPE
        )
        for key in ("student/RM", "student/RH")
    ]
    for job in jobs:
        _, err = job.communicate(timeout=120)
        assert job.returncode == 0, err.decode()[-2000:]
    assert (tmp_path / "mlflow.db").exists()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("parallel").experiment_id])
    by_key = {run.data.tags["ctsl.run_key"]: run for run in runs}
    assert sorted(by_key) == ["parent", "student/RH", "student/RM"]
    for key in ("student/RH", "student/RM"):
        assert by_key[key].data.tags["mlflow.parentRunId"] == by_key["parent"].info.run_id
        history = client.get_metric_history(by_key[key].info.run_id, "loss/total")
        assert sorted(m.step for m in history) == [1, 2, 3]


def test_a_line_torn_by_a_crash_is_set_aside_and_the_rest_of_the_spool_replays(
    tmp_path: Path, rng: np.random.Generator
):
    from mlflow import MlflowClient

    from ctsl_hpc.processes import free_port

    values = rng.uniform(size=4).tolist()
    tracker = Tracker(tmp_path, f"http://127.0.0.1:{free_port()}", "torn", system_metrics=False, retry_interval_s=3600)
    tracker.parent()
    run = tracker.child("teacher")
    run.log_metrics({"loss/total": values[0]}, step=1)
    spool = tmp_path / "tracking" / "spool.jsonl"
    with open(spool, "a") as handle:  # a process killed in the middle of a write
        handle.write('{"op": "metrics", "key": "teacher", "metr')
    for epoch in (2, 3, 4):
        run.log_metrics({"loss/total": values[epoch - 1]}, step=epoch)

    uri = f"sqlite:///{tmp_path / 'replayed.db'}"
    assert replay_spool(tmp_path, uri) == 0
    client = MlflowClient(uri)
    run_id = json.loads((tmp_path / "tracking" / "runs.json").read_text())["runs"]["teacher"]
    history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "loss/total"))
    assert history == [(step, pytest.approx(v)) for step, v in enumerate(values, start=1)]
    assert '"metr' in (tmp_path / "tracking" / "spool.rejected.jsonl").read_text()


def _server(tmp_path: Path, name: str, auth_config: Path | None = None):
    from tests.mlflow_fixtures import MlflowServer

    server = MlflowServer(tmp_path / name, auth_config=auth_config)
    server.start()
    return server


def test_a_hung_server_costs_training_one_short_wait_then_everything_arrives(tmp_path: Path, experiment: str):
    server = _server(tmp_path, "hung")
    tracker = Tracker(tmp_path / "work", server.url, experiment, system_metrics=False)
    tracker.parent()
    run = tracker.child("teacher")
    os.killpg(server.proc.pid, signal.SIGSTOP)  # accepts connections, answers nothing
    try:
        blocked = 0.0
        for epoch in range(1, 11):  # ten epochs of a short training
            started = time.monotonic()
            run.log_metrics({"loss/total": 1.0 / epoch}, step=epoch)
            blocked += time.monotonic() - started
            time.sleep(0.5)  # the epoch's work
        assert blocked < 5.0, f"training waited {blocked:.1f} s on a hung server"  # one 3 s try, then only the spool
        assert tracker.pending() > 0
    finally:
        os.killpg(server.proc.pid, signal.SIGCONT)
    assert tracker.flush(force=True)
    steps, values = _history(server, tracker.run_ids()["teacher"], "loss/total")
    assert steps == list(range(1, 11)) and values == pytest.approx([1.0 / e for e in range(1, 11)])
    server.stop()


def test_basic_auth_server_refuses_strangers_and_keeps_their_records_until_they_log_in(
    tmp_path: Path, experiment: str, monkeypatch: pytest.MonkeyPatch
):
    password = uuid.uuid4().hex
    ini = tmp_path / "basic_auth.ini"
    ini.write_text(f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{tmp_path / 'users.db'}\n"
                   f"admin_username = admin\nadmin_password = {password}\n"
                   "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    server = _server(tmp_path, "auth", auth_config=ini)
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            server.api("experiments/search", max_results=1)
        assert refused.value.code == 401
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
        tracker = Tracker(tmp_path / "work", server.url, experiment, system_metrics=False, retry_interval_s=0)
        tracker.parent()
        tracker.child("teacher").log_metrics({"loss/total": 0.5}, step=1)
        assert tracker.pending() > 0 and not tracker.run_ids()  # refused, kept: nothing dropped
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        assert replay_spool(tmp_path / "work", server.url) == 0
        assert "teacher" in Tracker(tmp_path / "work", server.url, experiment, system_metrics=False).run_ids()
    finally:
        server.stop()


def test_spool_replay_uploads_files_of_the_work_directory_only(mlflow_server: MlflowServer, tmp_path: Path, experiment: str):
    work = tmp_path / "work"
    tracker = Tracker(work, mlflow_server.url, experiment, system_metrics=False)
    run = tracker.parent()
    outside = tmp_path / "secret.txt"
    outside.write_text("not yours")
    with pytest.raises(ValueError, match="outside the work directory"):
        run.log_artifact(outside)
    spool = work / "tracking" / "spool.jsonl"  # a tampered spool naming a file elsewhere
    with spool.open("a") as handle:
        handle.write(json.dumps({"op": "artifact", "key": "parent", "path": str(outside), "artifact_path": None}) + "\n")
        handle.write(json.dumps({"op": "artifact", "key": "parent", "path": "../secret.txt", "artifact_path": None}) + "\n")
    assert replay_spool(work, mlflow_server.url) == 0
    assert _artifacts(mlflow_server, run.run_id) == set()
    rejected = (work / "tracking" / "spool.rejected.jsonl").read_text()
    assert rejected.count("secret.txt") == 2


def test_the_tracking_server_listens_on_this_machine_only_unless_told(tmp_path: Path):
    from ctsl_hpc.launch.__main__ import build_parser

    args = build_parser().parse_args(["mlflow-server", "--backend-store-uri", "sqlite:///x.db", "--artifacts-destination", "a"])
    assert args.host == "127.0.0.1" and args.auth_config is None
    script = (REPO / "launch" / "mlflow-server.sh").read_text()
    assert 'host="${CTSL_MLFLOW_HOST:-127.0.0.1}"' in script


def test_a_login_in_the_tracking_uri_reaches_mlflow_through_its_environment(tmp_path: Path, monkeypatch):
    from ctsl_hpc.track.replay import resolve_uri

    password = uuid.uuid4().hex
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    monkeypatch.setenv("CTSL_TEST_PASSWORD", password)
    uri = resolve_uri(tmp_path, "https://al%40ice:${env:CTSL_TEST_PASSWORD}@mlflow.example.org:5443/")
    assert uri == "https://mlflow.example.org:5443/"  # what MLflow prints in its "View run at" lines
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == ("al@ice", password)
    assert resolve_uri(tmp_path, "postgresql://u:p@db/mlflow") == "postgresql://u:p@db/mlflow"  # a store's own login
