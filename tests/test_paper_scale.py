"""Paper size on the CPU: the pruned full-size backbone through the pipeline's own stages (issue 14).

The paper's config (``configs/paper.yaml``: wav2vec2-large-robust pruned to 12 layers, head 2 x
1024, frozen feature encoder) with ``model.backbone`` pointing at the stand-in checkpoint, on a
few utterances with 1 s crops, 2 per batch, one epoch: the teacher stage, the ``RM+TL+CL`` student
with the teacher-embedding cache (interrupted mid-epoch and resumed, against an uninterrupted run)
and without it (a live teacher every step), the evaluation of one checkpoint, and ``predict`` on a
file longer than its window. Step time and peak memory of each part are printed at the end.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import dataclasses
import gc
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import soundfile as sf
import torch

from ctsl_hpc.atomic_io import atomic_write_csv
from ctsl_hpc.config import load_config
from ctsl_hpc.data.audio import read_audio
from ctsl_hpc.experiment import (
    Experiment,
    student_trainer,
    teacher_embedder,
    teacher_summary,
    train_student,
    train_teacher,
)
from ctsl_hpc.experiment.evaluation import evaluate as evaluate_stage
from ctsl_hpc.experiment.preparation import prepare
from ctsl_hpc.launch.__main__ import main
from ctsl_hpc.model import load_model, load_weights
from ctsl_hpc.predict import chunk_bounds
from ctsl_hpc.train import checkpoint as ckpt
from ctsl_hpc.train.batches import make_loader, make_sampler
from ctsl_hpc.train.embed_cache import live_teacher
from ctsl_hpc.train.interface import TrainingInterrupted
from ctsl_hpc.workdir import RunDir

pytestmark = [pytest.mark.paper_scale, pytest.mark.slow]

SPLIT_SIZES = {"train": 4, "dev": 3, "test": 4}  # 2 optimiser steps per epoch at batch 2; 2 test groups of 2 (splits)
VARIANT = "RM+TL+CL"


class Recorder:
    """A metrics sink that keeps what the training loop logs."""

    def __init__(self) -> None:
        self.logged: dict[int, dict[str, float]] = {}

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.logged[step] = dict(metrics)


class Measured:
    """Wall time, CPU time and resident memory (at the start, and its peak sampled every 20 ms) of a block.

    Memory freed by earlier parts is handed back to the system first (``malloc_trim``), so the start
    figure is what this process still holds."""

    def __init__(self) -> None:
        self.process, self._done = psutil.Process(), threading.Event()

    def _sample(self) -> None:
        while not self._done.wait(0.02):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> Measured:
        gc.collect()
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        self.start_rss = self.peak = self.process.memory_info().rss
        self.start, self.cpu = time.perf_counter(), time.process_time()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()
        self.seconds, self.cpu = time.perf_counter() - self.start, time.process_time() - self.cpu


class StopAfter:
    """A stop request (as a preemption would make) after ``n`` optimiser steps."""

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.calls >= self.n


@dataclasses.dataclass
class Paper:
    exp: Experiment
    figures: list[str]

    def log(self, part: str, measured: Measured, sink: Recorder | None = None) -> None:
        step = "" if sink is None else f", {sink.logged[1]['time/step_s']:.2f} s per step"
        self.figures.append(
            f"  {part}: {measured.seconds:.1f} s wall, {measured.cpu:.1f} s CPU, RSS {measured.start_rss / 2**30:.2f} -> "
            f"peak {measured.peak / 2**30:.2f} GiB{step}"
        )


def _manifest(small_corpus, folder: Path) -> Path:
    rows = list(csv.DictReader(small_corpus.manifest.open()))
    chosen = [r for split, n in SPLIT_SIZES.items() for r in [r for r in rows if r["split"] == split][:n]]
    for row in chosen:
        row["path"] = str(small_corpus.manifest.parent / row["path"])
    return atomic_write_csv(folder / "manifest.csv", list(rows[0]), [list(row.values()) for row in chosen])


@pytest.fixture(scope="module")
def paper(standin_backbone, small_corpus, tmp_path_factory, figures):
    """The paper's config on the stand-in, its inputs checked and its teacher trained (one epoch)."""
    root = tmp_path_factory.mktemp("paper-scale")
    cfg = load_config("paper", [
        f"workdir={root / 'work'}", "data.corpus=csv", f"data.manifest={_manifest(small_corpus, root)}",
        f"noise.train={small_corpus.noise_train}", f"noise.dev={small_corpus.noise_dev}",
        f"noise.test={small_corpus.noise_test}", "data.max_seconds=1.0", f"model.backbone={standin_backbone}",
        "train.engine=plain", "train.num_workers=0", "train.batch_size=2", "train.epochs=1", "student.epochs=1",
        "eval.n_groups=2", "eval.top_k=1", "eval.batch_size=4", "tracking.enabled=false", "train.keep_checkpoints=1",
    ])
    figures.append("paper scale on the CPU (wav2vec2-large-robust stand-in pruned to 12 layers, 164.3 M backbone "
                   f"parameters; 2 x <= 1 s per step; load average {os.getloadavg()[0]:.1f} at the start):")
    paper = Paper(Experiment.open(cfg), figures)
    prepare(paper.exp)
    sink = Recorder()
    with Measured() as measured:
        train_teacher(paper.exp, sink)
    paper.log("teacher stage (1 epoch)", measured, sink)
    yield paper
    shutil.rmtree(root, ignore_errors=True)  # several GB of checkpoints


def test_the_teacher_stage_trains_the_full_size_model(paper):
    summary = teacher_summary(paper.exp)
    model, _, cfg = load_model(summary.best_dir)
    assert len(model.backbone.encoder.layers) == 12 and model.embedding_dim == 1024 and cfg.head_hidden == 1024
    assert np.isfinite(summary.dev_scores[1])
    state = ckpt.TrainerState.read(ckpt.latest_complete_checkpoint(paper.exp.workdir.teacher.path))
    assert state.global_step == SPLIT_SIZES["train"] // 2


def test_the_student_resumes_mid_epoch_bitwise_with_the_embedding_cache(paper):
    exp = paper.exp
    assert exp.cfg.student.cache_teacher_embeddings
    reference_run = RunDir(exp.workdir.root / "reference")
    sink = Recorder()
    with Measured() as measured:
        straight = student_trainer(exp, VARIANT, reference_run, sink).fit()
    paper.log(f"{VARIANT} student, cache on (1 epoch, cache built)", measured, sink)
    with Measured() as measured, pytest.raises(TrainingInterrupted) as stopped:
        train_student(exp, VARIANT, should_stop=StopAfter(1))
    paper.log(f"{VARIANT} student, stopped after 1 step (checkpoint written)", measured)
    saved = ckpt.TrainerState.read(stopped.value.checkpoint)
    assert (saved.epoch, saved.batch) == (0, 1)  # inside the first epoch
    with Measured() as measured:
        summary = train_student(exp, VARIANT)
    paper.log(f"{VARIANT} student, resumed to the end of the epoch", measured)
    resumed, reference = load_weights(summary.best_dir), load_weights(reference_run.epoch_dir(1))
    assert resumed.keys() == reference.keys()
    for name, value in reference.items():
        assert torch.equal(value, resumed[name]), name
    assert summary.dev_scores == straight.dev_scores()
    shutil.rmtree(reference_run.path)  # 2.7 GB of weights and optimiser state


def test_the_student_without_the_cache_runs_a_live_teacher_that_agrees_with_it(paper):
    exp = paper.exp
    teacher_dir = teacher_summary(exp).best_dir
    cached = teacher_embedder(exp, teacher_dir)  # the table the cached run used
    live = live_teacher(load_model(teacher_dir)[0])
    train_set = exp.data.clean("train")
    batch = next(iter(make_loader(train_set, make_sampler(train_set, exp.cfg.train, 0, 1), exp.cfg.train, torch.device("cpu"))))
    assert torch.allclose(cached(batch), live(batch), rtol=1e-4, atol=1e-5)

    uncached = dataclasses.replace(exp.cfg.student, cache_teacher_embeddings=False)
    without = Experiment(dataclasses.replace(exp.cfg, student=uncached), exp.workdir)
    sink = Recorder()
    with Measured() as measured:
        result = student_trainer(without, VARIANT, RunDir(exp.workdir.root / "live-teacher"), sink).fit()
    shutil.rmtree(exp.workdir.root / "live-teacher")
    paper.log(f"{VARIANT} student, cache off (teacher forward every step)", measured, sink)
    losses = result.epochs[0].losses
    assert all(np.isfinite(v) for v in losses.values()) and losses["tl"] > 0 and losses["total"] > losses["ccc"]


def test_evaluating_one_checkpoint_writes_table1(paper):
    with Measured() as measured:
        report = evaluate_stage(paper.exp, ["original"])
    paper.log("evaluation of the teacher's checkpoint (test: clean + 3 SNRs, 2 split groups; Table 2 on dev)", measured)
    rows = list(csv.DictReader((report / "scores.csv").open()))
    assert paper.exp.cfg.eval.groups == "splits"  # the paper's protocol (configs/paper.yaml)
    assert len(rows) == 3 * 4 * paper.exp.cfg.eval.n_groups  # 3 attributes x 4 conditions x split groups
    assert (report / "table1.md").is_file() and (report / "table2.md").is_file()


def test_predict_scores_a_file_longer_than_its_window(paper, small_corpus, tmp_path):
    waves = [read_audio(p, 16000) for p in sorted((small_corpus.manifest.parent / "audio").glob("*.wav"))[:12]]
    long = np.concatenate(waves)[: 16000 * 12]
    assert len(long) == 16000 * 12
    sf.write(tmp_path / "long.wav", long, 16000)
    with Measured() as measured:
        code = main(["predict", "--model", str(teacher_summary(paper.exp).best_dir), str(tmp_path / "long.wav"),
                     "--out", str(tmp_path / "out.csv"), "--window-s", "10", "--hop-s", "5"])
    paper.log("predict on a 12 s file (10 s windows, 5 s hop)", measured)
    assert code == 0
    rows = list(csv.DictReader((tmp_path / "out.csv").open()))
    spans = [(float(r["start_s"]), float(r["end_s"])) for r in rows if r["chunk"] != "mean"]
    assert len(spans) > 1 and spans == [(a / 16000, b / 16000) for a, b in chunk_bounds(len(long), 16000, 10, 5)]
    assert all(1 <= float(r[a]) <= 7 for r in rows for a in ("arousal", "dominance", "valence"))
