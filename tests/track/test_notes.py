"""What the MLflow review shows, without a server: content digests, run descriptions, command tags."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np

from ctsl_hpc.config import load_config
from ctsl_hpc.data.corpus import load_csv_manifest
from ctsl_hpc.data.noise import NoisePool
from ctsl_hpc.track.datasets import corpus_digest, pool_digest
from ctsl_hpc.track.notes import Stage, model_note, stages, sweep_note, zero_db_gain
from ctsl_hpc.track.tags import COMMAND_TAG, SOURCE_NAME, command_tags
from ctsl_hpc.workdir import ReportFiles, RunDir


def test_corpus_digest_follows_the_manifest_not_where_the_corpus_lies(small_corpus, tmp_path):
    splits = load_csv_manifest(small_corpus.manifest)
    moved = tmp_path / "elsewhere"
    shutil.copytree(Path(small_corpus.manifest).parent, moved)
    assert corpus_digest(load_csv_manifest(moved / Path(small_corpus.manifest).name)) == corpus_digest(splits)
    first = splits["train"][0]
    relabelled = dict(splits, train=[dataclasses.replace(first, labels=(7.0, *first.labels[1:])), *splits["train"][1:]])
    resplit = dict(splits, train=splits["train"][1:], dev=[*splits["dev"], first])
    assert len({corpus_digest(splits), corpus_digest(relabelled), corpus_digest(resplit)}) == 3


def test_pool_digest_changes_with_the_minutes_and_the_samples(rng):
    arrays = [rng.normal(size=16000).astype(np.float32) for _ in range(3)]
    pool = NoisePool.from_arrays(arrays, 16000)
    assert pool_digest(pool) == pool_digest(NoisePool.from_arrays(arrays, 16000))
    assert pool_digest(pool.head(2 / 60)) != pool_digest(pool)
    arrays[2][-1] += 1e-3
    assert pool_digest(NoisePool.from_arrays(arrays, 16000)) != pool_digest(pool)


TABLE1 = {  # two attributes are enough: the gain is the mean over those present
    "original": {"snr0": {"arousal": {"mean": 0.10}, "valence": {"mean": 0.20}}},
    "RM+TL+CL": {"snr0": {"arousal": {"mean": 0.25}, "valence": {"mean": 0.21}}},
}


def test_a_student_description_names_its_lambdas_epochs_and_0db_gain():
    cfg = load_config(None, ["student.lambda_tl=37", "student.lambda_cl=4.5", "eval.top_k=2"])
    assert zero_db_gain(TABLE1, "RM+TL+CL") == (0.25 + 0.21) / 2 - (0.10 + 0.20) / 2
    note = model_note("RM+TL+CL", cfg, {5: 0.612, 3: 0.598}, TABLE1)
    assert "lambda_tl = 37, lambda_cl = 4.5" in note
    assert "5 (dev CCC 0.612), 3 (dev CCC 0.598)" in note
    assert "0 dB gain over original (mean test CCC of A, D, V): +0.080" in note
    assert "lambdas: none (CCC loss only)" in model_note("RM", cfg, {2: 0.5}, {})
    assert "gain" not in model_note("original", cfg, {2: 0.5}, TABLE1)


def test_the_sweep_description_has_table1_and_a_line_per_stage(tmp_path):
    teacher, student = RunDir(tmp_path / "teacher"), RunDir(tmp_path / "students" / "RM")
    teacher.path.mkdir(parents=True)
    teacher.write_summary(3, {1: 0.2, 2: 0.4, 3: 0.45})
    usage = {"gpu_hours/teacher": 1.25, "gpu_hours/eval": 0.5, "gpu_hours/total": 1.75}
    lines = stages({"teacher": teacher, "student/RM": student}, ReportFiles(tmp_path / "report"), usage)
    assert lines == [
        Stage("teacher", "done (best epoch 3, dev CCC 0.450)", 1.25),
        Stage("student/RM", "not started", None),
        Stage("eval", "not built", 0.5),
    ]
    note = sweep_note("demo: sweep w", "| model | 0 dB A |\n|---|---:|\n| RM | 0.100 |\n", lines, 1.75)
    assert "| RM | 0.100 |" in note and "| teacher | done (best epoch 3, dev CCC 0.450) | 1.250 |" in note
    assert "| student/RM | not started | — |" in note and note.endswith("GPU-hours of the sweep: 1.750\n")


def test_command_tags_name_the_command_and_quote_the_line():
    tags = command_tags("python -m ctsl_hpc.launch", ["sweep", "--config", "my config.yaml", "x=1"])
    assert tags == {
        SOURCE_NAME: "ctsl_hpc.launch sweep",
        COMMAND_TAG: "python -m ctsl_hpc.launch sweep --config 'my config.yaml' x=1",
    }
