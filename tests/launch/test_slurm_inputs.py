"""A submission with bad inputs queues nothing on the dev Slurm: it prints one line per problem and exits 2,
with --dry-run too (the checks run on the login node, before anything reaches the queue)."""

from __future__ import annotations

import csv
import shutil
import subprocess
from pathlib import Path

import pytest

from ctsl_hpc.launch.__main__ import main

pytestmark = pytest.mark.cluster
NAME = "bad-inputs"


def test_bad_inputs_queue_nothing_and_print_a_line_per_problem(slurm_cluster, small_corpus, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    shutil.copytree(Path(small_corpus.manifest).parent, corpus)
    (corpus / "audio").joinpath(sorted(p.name for p in (corpus / "audio").iterdir())[0]).unlink()  # a listed file gone
    noisy = tmp_path / "noisy5"
    noisy.mkdir()  # a real noisy test set without its files
    backbone = tmp_path / "backbone"
    backbone.mkdir()  # no config.json
    shared = tmp_path / "test-noise"
    shared.mkdir()
    train_noise = sorted((corpus / "noise" / "train").iterdir())[0]
    (shared / train_noise.name).symlink_to(train_noise)  # a training noise file in the test pool
    work = tmp_path / "work"
    overrides = [
        "data.corpus=csv", f"data.manifest={corpus / 'manifest.csv'}", f"noise.train={corpus / 'noise' / 'train'}",
        f"noise.dev={tmp_path / 'no-such-folder'}", f"noise.test={shared}",
        f"eval.noisy_roots={{snr5: {noisy}}}", f"model.backbone={backbone}", f"workdir={work}", "slurm.time_min=15",
        f"name={NAME}",  # its own job names: other modules' jobs share this cluster
    ]
    expected = [
        f"data.manifest: {corpus / 'manifest.csv'}: 1 of ",
        f"noise.dev: {tmp_path / 'no-such-folder'}: not a folder",
        f"noise.test: {shared} shares 1 file(s) with noise.train",
        f"model.backbone: {backbone} has no config.json",
    ]
    for command in (["sweep", "--cluster", "slurm", "--dry-run"], ["sweep", "--cluster", "slurm"]):
        assert main([*command, *overrides]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == len(expected), lines
        for line, start in zip(lines, expected, strict=True):
            assert line.startswith(f"input error: {start}"), (line, start)
    queued = subprocess.run(["squeue", "-h", "-o", "%j"], capture_output=True, text=True, check=True).stdout
    accounted = subprocess.run(["sacct", "-n", "-X", "-o", "JobName%60"], capture_output=True, text=True, check=True).stdout
    assert NAME not in queued + accounted and not work.exists()  # nothing queued, no job registry, no work directory


def test_a_noisy_test_set_missing_a_file_is_found_before_the_queue(slurm_cluster, small_corpus, tmp_path, capsys):
    noisy = tmp_path / "noisy0"
    shutil.copytree(Path(small_corpus.manifest).parent / "audio", noisy)
    tested = [row["path"] for row in csv.DictReader(open(small_corpus.manifest)) if row["split"] == "test"]
    missing = noisy / Path(tested[-1]).name  # a test utterance without its noisy copy
    missing.unlink()
    overrides = ["data.corpus=csv", f"data.manifest={small_corpus.manifest}", f"noise.train={small_corpus.noise_train}",
                 f"noise.dev={small_corpus.noise_dev}", f"noise.test={small_corpus.noise_test}",
                 f"eval.noisy_roots={{snr0: {noisy}}}", f"workdir={tmp_path / 'work'}", "model.backbone=tiny"]
    assert main(["sweep", "--cluster", "slurm", *overrides]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"input error: eval.noisy_roots.snr0: {noisy} lacks 1 of the ") and missing.name in line
    assert not (tmp_path / "work").exists()
