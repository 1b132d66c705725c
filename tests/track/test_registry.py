"""Model registry, dataset inputs and descriptions go through the spool like every other record.

A real MLflow server; the work directory first logs to an unreachable one, so every record is
journaled and sent later by ``replay_spool``, twice where a crash could make it so.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from mlflow import MlflowClient

from ctsl_hpc.config import load_config
from ctsl_hpc.processes import free_port
from ctsl_hpc.track.datasets import corpus_input, pool_input
from ctsl_hpc.track.journal import Journal
from ctsl_hpc.track.registry import BEST_ALIAS, EPOCH_TAG, SCORE_TAG, fetch_model, model_name
from ctsl_hpc.track.replay import replay_spool
from ctsl_hpc.track.runs import NOTE_TAG, Tracker
from ctsl_hpc.track.tags import COMMAND_TAG, SOURCE_NAME, SOURCE_TYPE, exported_run_tags

if TYPE_CHECKING:
    from tests.mlflow_fixtures import MlflowServer



def _model_dir(path: Path, rng: np.random.Generator) -> Path:
    """A folder standing in for a model directory (the registry stores whatever files it holds)."""
    path.mkdir(parents=True)
    (path / "model.pt").write_bytes(rng.bytes(256))
    (path / "model_config.json").write_text(json.dumps({"seed": int(rng.integers(1 << 30))}))
    return path


def test_registry_inputs_and_descriptions_are_spooled_and_replayed_once(
    mlflow_server: MlflowServer, tmp_path: Path, small_corpus, tiny_overrides, rng: np.random.Generator, experiment: str
):
    from ctsl_hpc.data.corpus import load_csv_manifest
    from ctsl_hpc.data.noise import NoisePool

    cfg = load_config(None, [*tiny_overrides(tmp_path / "w"), f"name={experiment}"])
    splits = load_csv_manifest(small_corpus.manifest)
    pool = NoisePool.from_directory(small_corpus.noise_train, 16000)
    inputs = [corpus_input(cfg, splits, "train"), pool_input("train", pool, small_corpus.noise_train, "train")]
    scores = {1: float(rng.uniform(0.1, 0.4)), 3: float(rng.uniform(0.5, 0.9))}  # epoch 3 is the best
    dirs = {epoch: _model_dir(tmp_path / "w" / "models" / f"epoch-{epoch:03d}", rng) for epoch in scores}

    started = time.monotonic()
    command = {SOURCE_NAME: "ctsl_hpc.launch sweep", COMMAND_TAG: "python -m ctsl_hpc.launch sweep x=1"}
    with exported_run_tags(command):
        tracker = Tracker(tmp_path / "w", f"http://127.0.0.1:{free_port()}", experiment, system_metrics=False,
                          retry_interval_s=3600)  # fmt: skip
        tracker.parent(config=cfg)
        run = tracker.child("student/RM")
    run.log_inputs(inputs)
    for epoch, folder in dirs.items():
        run.log_artifacts(folder, f"models/{folder.name}")
        tags = {EPOCH_TAG: epoch, SCORE_TAG: scores[epoch], "sweep": tmp_path / "w"}
        run.register_model(model_name(experiment, "RM"), f"models/{folder.name}", tags, "RM models")
    run.set_description("**RM**: a student\n" + "x" * 9000)  # longer than a tag may be: cut, not refused
    run.finish()
    tracker.run("parent").set_description("# Table 1")
    assert time.monotonic() - started < 30 and tracker.pending() >= 8 and tracker.run_ids() == {}

    journal = Journal(tmp_path / "w")
    registrations = [r for r in journal.pending_records() if r["op"] == "register"]
    assert replay_spool(tmp_path / "w", mlflow_server.url) == 0
    with journal.lock:  # a crash between sending and cutting the journal: the same records again
        for record in registrations:
            journal.append(record)
        journal.append({"op": "inputs", "key": "student/RM", "inputs": inputs})
    assert replay_spool(tmp_path / "w", mlflow_server.url) == 0

    client = MlflowClient(mlflow_server.url)
    assert client.get_experiment_by_name(experiment).tags["mlflow.experimentKind"] == "custom_model_development"
    ids = tracker.run_ids()
    student, parent = client.get_run(ids["student/RM"]), client.get_run(ids["parent"])
    assert sorted((d.dataset.name, d.dataset.digest) for d in student.inputs.dataset_inputs) == sorted(
        (d["name"], d["digest"]) for d in inputs
    )
    note = student.data.tags[NOTE_TAG]
    assert note.startswith("**RM**: a student\nxxx") and len(note) <= 8000 and "cut" in note[-80:]
    assert parent.data.tags[NOTE_TAG] == "# Table 1"
    assert student.data.tags[SOURCE_NAME] == "ctsl_hpc.launch sweep" and student.data.tags[SOURCE_TYPE] == "LOCAL"
    assert student.data.tags[COMMAND_TAG] == command[COMMAND_TAG]

    name = model_name(experiment, "RM")
    versions = client.search_model_versions(f"name = '{name}'")
    assert sorted(int(v.tags[EPOCH_TAG]) for v in versions) == [1, 3]  # once each, after two replays
    assert {v.tags["sweep_run_id"] for v in versions} == {ids["parent"]}
    best = client.get_model_version_by_alias(name, BEST_ALIAS)
    assert best.tags[EPOCH_TAG] == "3" and best.run_id == ids["student/RM"]
    assert client.get_registered_model(name).description == "RM models"

    fetched = fetch_model(f"models:/{name}@{BEST_ALIAS}", tmp_path / "fetched", mlflow_server.url)
    assert {p.name: p.read_bytes() for p in fetched.iterdir()} == {p.name: p.read_bytes() for p in dirs[3].iterdir()}


def test_a_better_epoch_of_a_later_sweep_takes_the_best_alias(
    mlflow_server: MlflowServer, tmp_path: Path, rng: np.random.Generator, experiment: str
):
    name = model_name(experiment, "RM+TL")
    for sweep, score in (("a", 0.3), ("b", 0.6), ("c", 0.45)):
        tracker = Tracker(tmp_path / sweep, mlflow_server.url, experiment, system_metrics=False)
        tracker.parent(config=load_config(None, [f"name={experiment}"]))
        with tracker.child("student/RM+TL") as run:
            folder = _model_dir(tmp_path / sweep / "model", rng)
            run.log_artifacts(folder, "models/epoch-002")
            run.register_model(name, "models/epoch-002", {EPOCH_TAG: 2, SCORE_TAG: score})
    client = MlflowClient(mlflow_server.url)
    assert len(client.search_model_versions(f"name = '{name}'")) == 3
    assert client.get_model_version_by_alias(name, BEST_ALIAS).version == "2"  # sweep b
