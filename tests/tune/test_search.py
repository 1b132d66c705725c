"""The Ray Tune sweep: search space from the config, the stop relay, and `sweep --tune` end to end: ASHA
stopping trials early, the search killed (-9) mid-search, then asked to stop (USR2), then resumed to
completion with the best point of the same search uninterrupted, no finished trial trained again, no
duplicate MLflow run, and the final students' runs carrying what a plain sweep's students carry. The
search on the one-node Slurm (status, logs, cancel, resume) is in tests/launch/test_ray_cluster.py."""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from ctsl_hpc.config import ConfigError, load_config
from ctsl_hpc.launch.__main__ import STOPPED
from ctsl_hpc.tune.driver import relayed
from ctsl_hpc.tune.relay import PreemptionRelay
from ctsl_hpc.tune.space import apply_params, overrides_for, search_space
from ctsl_hpc.tune.summary import read_best_config
from ctsl_hpc.workdir import Workdir
from tests.helpers import STUDENT_ARTIFACTS, STUDENT_TAGS, student_run_shape


def test_search_space_samples_stay_in_the_configured_ranges():
    low_tl, high_tl = sorted(random.uniform(0.5, 50) for _ in range(2))
    cfg = load_config(None, [f"tune.lambda_tl=[{low_tl},{high_tl}]", "tune.noise_minutes=[0.5,3]"])
    space = search_space(cfg.tune)
    for _ in range(200):
        assert low_tl <= space["lambda_tl"].sample() <= high_tl
        assert 0.1 <= space["lambda_cl"].sample() <= 100
        assert space["noise_minutes"].sample() in (0.5, 3.0)
    params = {"lambda_tl": high_tl, "lambda_cl": 0.3, "noise_minutes": 3.0}
    trial = apply_params(cfg, params, epochs=2)
    assert (trial.student.lambda_tl, trial.student.lambda_cl, trial.noise.minutes, trial.student.epochs) == (
        high_tl, 0.3, 3.0, 2,
    )
    again = load_config(None, overrides_for(params))
    assert (again.student.lambda_tl, again.student.lambda_cl, again.noise.minutes) == (high_tl, 0.3, 3.0)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("tune.lambda_tl=[10,1]", "tune.lambda_tl"),
        ("tune.lambda_cl=[0,5]", "tune.lambda_cl"),
        ("tune.noise_minutes=[]", "tune.noise_minutes"),
        ("tune.variant=RX", "tune.variant"),
        ("tune.grace_period=5", "tune.grace_period"),
        ("tune.search_alg=grid", "tune.search_alg"),
    ],
)
def test_a_bad_search_setting_names_its_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_the_jobs_stop_request_reaches_the_trials_as_a_file_in_the_work_directory(tmp_path):
    relay = PreemptionRelay(tmp_path / "tune")
    trial_view = PreemptionRelay(tmp_path / "tune")  # what a trial process sees
    asked: list[bool] = []
    with relayed(lambda: bool(asked), relay, poll_s=0.01):
        time.sleep(0.05)
        assert not trial_view.requested()
        asked.append(True)  # the job's signal flag (SIGUSR2 on Slurm, or to a local sweep)
        deadline = time.monotonic() + 5
        while not trial_view.requested():
            assert time.monotonic() < deadline
            time.sleep(0.01)  # polling the file the watcher thread writes
    relay.clear()
    assert not trial_view.requested()


def test_the_dry_run_of_a_search_prints_its_plan_and_cost_and_starts_no_ray(tiny_overrides, tiny_search, tmp_path):
    code = ("import sys; from ctsl_hpc.launch.__main__ import main; status = main(sys.argv[1:]); "
            "assert 'ray' not in sys.modules, 'the dry run imported Ray'; sys.exit(status)")
    args = ["sweep", "--tune", "--dry-run", *tiny_overrides(tmp_path / "w"), *tiny_search.overrides(0)]
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=tiny_search.env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"search: {tiny_search.num_samples} trials of RM+TL+CL" in out.stdout
    assert f"at most {tiny_search.num_samples * tiny_search.max_t}" in out.stdout
    assert "tune: submit [search]" in out.stdout and "eval: submit [final/eval]" in out.stdout
    assert "trial-epochs expected" in out.stdout and "  cost: " in out.stdout  # the passes of each stage
    assert not (tmp_path / "w").exists()  # nothing made, nothing run


def _sweep_command(workdir: Path, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "ctsl_hpc.launch", "sweep", "--tune", *overrides]


def _reports(storage: Path) -> int:
    """How many epoch results Tune has recorded so far."""
    return sum(len(p.read_text().splitlines()) for p in storage.glob("search/*/result.json"))


def _finished(storage: Path) -> set[str]:
    """The trials that Tune's saved experiment state holds as ended (TERMINATED: stopped early or at max_t)."""
    states = sorted((storage / "search").glob("experiment_state-*.json"))
    try:
        trials = [json.loads(t) for t, _ in json.loads(states[-1].read_text())["trial_data"]] if states else []
    except json.JSONDecodeError:  # being rewritten
        return set()
    return {t["trial_id"] for t in trials if t["status"] == "TERMINATED"}


def _start_and_wait_for_a_report(
    cmd: list[str], log: Path, storage: Path, env: dict[str, str], after_a_finished_trial: bool = False
) -> subprocess.Popen:
    """Start the search; return once it has made a new trial report (after one trial finished, if asked)."""
    proc = subprocess.Popen(cmd, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 600
    before = _reports(storage)
    while _reports(storage) <= before or (after_a_finished_trial and not _finished(storage)):
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "no new trial report within 600 s"
        if after_a_finished_trial and not _finished(storage):
            before = _reports(storage)
        time.sleep(0.5)  # polling the Tune storage for the next report
    return proc


@dataclass
class ResumedSweep:
    workdir: Path
    stdout: str
    seconds: float
    finished_before_kill: set[str]  # trials done when the search was killed
    reference: Path  # the same search, uninterrupted, from the same teacher


def _same_teacher(workdir: Path, dest: Path) -> None:
    """``dest``: a work directory holding ``workdir``'s config, prepared data, teacher and cache."""
    dest.mkdir(parents=True)
    for name in ("config.yaml", "waveform_stats.json"):
        shutil.copy2(workdir / name, dest / name)
    for name in ("data", "teacher", "cache"):
        shutil.copytree(workdir / name, dest / name)


@pytest.fixture(scope="module")
def resumed_sweep(tiny_overrides, tmp_path_factory, tiny_search):
    """`sweep --tune` killed (SIGKILL to its process group) at a trial report after a first trial finished,
    rerun and asked to stop (SIGUSR2, relayed to the trials) after its next report, then rerun to
    completion; meanwhile the same search from a copy of its teacher, uninterrupted, until its best point."""
    workdir = tmp_path_factory.mktemp("tune")
    storage = workdir / "tune"
    settings = tiny_search.overrides(random.randrange(1000))
    cmd = _sweep_command(workdir, [*tiny_overrides(workdir), *settings])
    killed = _start_and_wait_for_a_report(cmd, workdir.parent / "killed.log", storage, tiny_search.env,
                                          after_a_finished_trial=True)  # fmt: skip
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    finished = _finished(storage)
    reference = workdir.parent / "reference"
    _same_teacher(workdir, reference)
    uninterrupted = subprocess.Popen(_sweep_command(reference, [*tiny_overrides(reference), *settings]),
                                     env=tiny_search.env, stdout=subprocess.DEVNULL,
                                     stderr=open(workdir.parent / "reference.log", "wb"), start_new_session=True)
    preempted = _start_and_wait_for_a_report(cmd, workdir.parent / "preempted.log", storage, tiny_search.env)
    os.kill(preempted.pid, signal.SIGUSR2)
    assert preempted.wait(timeout=300) == STOPPED, (workdir.parent / "preempted.log").read_text()[-3000:]
    assert not Workdir(workdir).best_config.exists()
    started = time.monotonic()
    final = subprocess.run(cmd, env=tiny_search.env, capture_output=True, text=True, timeout=900)
    assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
    deadline = time.monotonic() + 900  # only the reference's best point is compared: its final stages are not run
    while not Workdir(reference).best_config.is_file():
        assert uninterrupted.poll() is None, (workdir.parent / "reference.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "the uninterrupted search wrote no best point within 900 s"
        time.sleep(0.5)
    if uninterrupted.poll() is None:
        os.killpg(uninterrupted.pid, signal.SIGKILL)
    uninterrupted.wait()
    return ResumedSweep(workdir, final.stdout, time.monotonic() - started, finished, reference)


def _trial_rows(workdir: Path) -> list[dict[str, str]]:
    with open(Workdir(workdir).trials_csv) as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_asha_stops_some_trials_before_max_t(resumed_sweep, tiny_search):
    workdir = resumed_sweep.workdir
    rows = _trial_rows(workdir)
    assert len(rows) == tiny_search.num_samples
    epochs = [int(r["epochs"]) for r in rows]
    assert max(epochs) == tiny_search.max_t
    assert min(epochs) < tiny_search.max_t, f"ASHA stopped no trial early: {epochs}"
    for row in rows:  # Tune's own per-trial results agree with the summary, one line per epoch
        results = [json.loads(line) for p in (workdir / "tune" / "search").glob(f"*{row['trial_id']}*/result.json")
                   for line in p.read_text().splitlines()]
        assert sorted({r["epoch"] for r in results}) == list(range(1, int(row["epochs"]) + 1))


@pytest.mark.slow
def test_killed_sweep_resumes_with_one_mlflow_run_per_trial(resumed_sweep, tiny_search):
    from mlflow import MlflowClient

    workdir = resumed_sweep.workdir
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)
    keys = [r.data.tags.get("ctsl.run_key", "") for r in runs]
    trial_keys = [k for k in keys if k.startswith("trial/")]
    assert len(trial_keys) == tiny_search.num_samples == len(set(trial_keys))
    assert len(keys) == len(set(keys)), f"duplicate runs: {sorted(keys)}"
    epochs = {r["trial_id"]: int(r["epochs"]) for r in _trial_rows(workdir)}
    for run in runs:
        key = run.data.tags.get("ctsl.run_key", "")
        if key.startswith("trial/"):
            history = client.get_metric_history(run.info.run_id, "dev/ccc_mean")
            steps = sorted(m.step for m in history)
            assert steps == list(range(1, epochs[key.removeprefix("trial/")] + 1)), (key, steps)
            assert run.info.status == "FINISHED"
            seen = {d.dataset.name: json.loads(d.dataset.profile) for d in run.inputs.dataset_inputs}
            assert set(seen) == {"csv corpus", "train noise", "dev noise"}, key
            assert seen["train noise"]["minutes"] == pytest.approx(float(run.data.params["noise_minutes"]), abs=1e-3)


@pytest.mark.slow
def test_best_config_is_written_and_its_students_reach_table1(resumed_sweep):
    workdir, stdout = resumed_sweep.workdir, resumed_sweep.stdout
    best = read_best_config(workdir)
    rows = _trial_rows(workdir)
    top = max(rows, key=lambda r: float(r["best"]))
    assert best["trial_id"] == top["trial_id"]
    assert best["value"] == pytest.approx(float(top["best"]))
    final = yaml.safe_load(Workdir(workdir).final.joinpath("config.yaml").read_text())
    assert final["student"]["lambda_tl"] == pytest.approx(best["params"]["lambda_tl"])
    assert final["noise"]["minutes"] == pytest.approx(best["params"]["noise_minutes"])
    table1 = json.loads(Workdir(Workdir(workdir).final).report.table1_json.read_text())
    assert list(table1) == ["original", "RM+TL+CL"]
    assert Workdir(workdir).tune_summary_plot.stat().st_size > 0
    assert "RM+TL+CL" in stdout and str(Workdir(workdir).best_config) in stdout


@pytest.mark.slow
def test_the_final_students_are_described_and_registered(resumed_sweep):
    from mlflow import MlflowClient

    workdir = resumed_sweep.workdir
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = {r.data.tags["ctsl.run_key"]: r for r in client.search_runs(
        [e.experiment_id for e in client.search_experiments()], max_results=1000)}  # fmt: skip
    assert "| RM+TL+CL |" in runs["parent"].data.tags["mlflow.note.content"]
    assert "0 dB gain over original" in runs["final/student/RM+TL+CL"].data.tags["mlflow.note.content"]
    final = Workdir(Workdir(workdir).final)
    versions = {m.name: client.search_model_versions(f"name = '{m.name}'") for m in client.search_registered_models()}
    student = next(v for name, v in versions.items() if name.endswith("-RM+TL+CL"))
    assert {v.tags["sweep"] for v in student} == {str(final.root)}
    assert {v.run_id for v in student} == {runs["final/student/RM+TL+CL"].info.run_id}
    artifacts, tags = student_run_shape(client, runs["final/student/RM+TL+CL"])
    assert (artifacts, tags) == (STUDENT_ARTIFACTS, STUDENT_TAGS)  # what a plain sweep's students carry
    assert runs["final/student/RM+TL+CL"].data.tags["mlflow.parentRunId"] == runs["parent"].info.run_id
    assert runs["parent"].info.status == "FINISHED" and (final.report.done).is_file()


@pytest.mark.slow
def test_the_resumed_search_ends_at_the_uninterrupted_ones_best_point_training_no_finished_trial_again(
    resumed_sweep, tiny_search
):
    resumed, reference = read_best_config(resumed_sweep.workdir), read_best_config(resumed_sweep.reference)
    assert (resumed["params"], resumed["value"], resumed["epoch"]) == (
        reference["params"], reference["value"], reference["epoch"])  # one trial at a time, a seeded search
    assert resumed_sweep.finished_before_kill, "no trial had finished when the search was killed"
    for trial in resumed_sweep.finished_before_kill:
        starts = Workdir(resumed_sweep.workdir).trial(trial).starts()
        assert len(starts) == 1, f"{trial} finished before the kill and was trained again: {starts}"
