"""The trainer: one loop for all variants, atomic checkpoints, exact resume after interruption."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ctsl_hpc.config import load_config
from ctsl_hpc.data.batching import UtteranceSet
from ctsl_hpc.data.corpus import load_csv_manifest
from ctsl_hpc.data.noise import NoisePool
from ctsl_hpc.model import WEIGHTS_FILE, build_model
from ctsl_hpc.run_records import read_history
from ctsl_hpc.train import checkpoint as ckpt
from ctsl_hpc.train.embed_cache import cached_teacher
from ctsl_hpc.train.recipe import recipe
from ctsl_hpc.train.interface import TrainingInterrupted
from ctsl_hpc.train.trainer import TrainingData, build_trainer
from ctsl_hpc.variants import TEACHER
from ctsl_hpc.workdir import RunDir


@pytest.fixture(scope="module")
def setup(small_corpus, tiny_overrides, tmp_path_factory):
    cfg = load_config(None, [*tiny_overrides(tmp_path_factory.mktemp("w")), "train.grad_accum=2"])
    splits = load_csv_manifest(small_corpus.manifest)
    pool = NoisePool.from_directory(small_corpus.noise_train, 16000, 1.0, min_seconds=2.0)
    dev_pool = NoisePool.from_directory(small_corpus.noise_dev, 16000, 1.0, min_seconds=2.0)
    sets = {
        "train": UtteranceSet(splits["train"], 16000, 2.0, preload=True, noise=pool, snr_db=0.0, seed=5),
        "dev": UtteranceSet(splits["dev"], 16000, 2.0, preload=True, noise=dev_pool, snr_db=0.0, seed=5),
    }
    return cfg, sets


class StopAfter:
    """A stop request (as a preemption signal would raise it) after ``n`` optimiser steps."""

    def __init__(self, n: int):
        self.n, self.calls = n, 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.calls >= self.n


def run(cfg, sets, variant, run_dir, init_seed=0, should_stop=lambda: False, teacher_table=None):
    torch.manual_seed(init_seed)
    model = build_model(cfg.model)
    embed = None if teacher_table is None else cached_teacher(teacher_table)
    data = TrainingData(sets["train"], sets["dev"], teacher=embed)
    return model, build_trainer(model, recipe(variant, cfg), data, cfg.train, RunDir(run_dir)).fit(should_stop)


@pytest.mark.parametrize("variant", [TEACHER, "RM+TL+CL"])
def test_resume_after_interruption_mid_epoch_matches_uninterrupted_run_bitwise(setup, tmp_path, variant):
    cfg, sets = setup
    table = torch.randn(len(sets["train"]), cfg.model.tiny.hidden_size) if variant != TEACHER else None
    reference, ref_result = run(cfg, sets, variant, tmp_path / "straight", teacher_table=table)

    steps_per_epoch = len(sets["train"]) // cfg.train.batch_size // cfg.train.grad_accum
    with pytest.raises(TrainingInterrupted) as stopped:
        run(cfg, sets, variant, tmp_path / "cut", should_stop=StopAfter(steps_per_epoch + 1), teacher_table=table)
    saved = ckpt.TrainerState.read(stopped.value.checkpoint)
    assert saved.epoch == 1 and saved.batch > 0  # interrupted inside the second epoch
    # a different initialisation proves the weights come from the checkpoint, not from the seed
    resumed, result = run(cfg, sets, variant, tmp_path / "cut", init_seed=123, teacher_table=table)

    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert [dataclasses.asdict(r)["dev_ccc"] for r in result.epochs] == [r.dev_ccc for r in ref_result.epochs]
    assert [r.losses for r in result.epochs] != [] and len(result.epochs) == cfg.train.epochs


def test_rh_trains_only_the_head(setup, tmp_path):
    cfg, sets = setup
    torch.manual_seed(0)
    model = build_model(cfg.model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    one_epoch = dataclasses.replace(cfg.train, epochs=1)
    build_trainer(model, recipe("RH", cfg), TrainingData(sets["train"], sets["dev"]), one_epoch, RunDir(tmp_path)).fit()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("head.") for k in changed)


def test_every_epoch_writes_weights_history_and_a_marked_checkpoint(setup, tmp_path):
    cfg, sets = setup
    _, result = run(cfg, sets, "RM", tmp_path)
    assert [r.epoch for r in read_history(RunDir(tmp_path).history).epochs] == [1, 2] == [r.epoch for r in result.epochs]
    for record in result.epochs:
        assert (RunDir(tmp_path).epoch_dir(record.epoch) / WEIGHTS_FILE).is_file()
    assert all((p / ckpt.MARKER).is_file() for p in ckpt.complete_checkpoints(tmp_path))


def test_a_checkpoint_without_its_marker_is_never_loaded(setup, tmp_path):
    cfg, sets = setup
    run(cfg, sets, "RM", tmp_path)
    newest = ckpt.latest_complete_checkpoint(tmp_path)
    (newest / ckpt.MARKER).unlink()  # as if the job died while writing it
    torn = RunDir(tmp_path).checkpoints / "step-99999999.tmp"
    torn.mkdir()
    assert ckpt.latest_complete_checkpoint(tmp_path) not in (newest, torn)


def test_contrastive_variant_without_teacher_embeddings_fails_clearly(setup, tmp_path):
    cfg, sets = setup
    with pytest.raises(ValueError, match="needs the teacher's embeddings"):
        run(cfg, sets, "RM+CL", tmp_path)
