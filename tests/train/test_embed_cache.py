"""The teacher-embedding cache: same losses as the live teacher, keyed by the teacher, built once; padding waste."""

from __future__ import annotations

import dataclasses

import pytest
import safetensors.torch
import torch

from ctsl_hpc.config import load_config
from ctsl_hpc.data.audio import WaveformStats
from ctsl_hpc.data.batching import RandomBatchSampler, UtteranceSet, collate, padding_waste
from ctsl_hpc.data.corpus import load_csv_manifest
from ctsl_hpc.data.noise import NoisePool
from ctsl_hpc.experiment import Experiment, train_student, train_teacher
from ctsl_hpc.model import build_model, save_model
from ctsl_hpc.train.batches import make_sampler
from ctsl_hpc.train.embed_cache import CACHE_TENSOR, cache_key, cached_teacher, live_teacher, teacher_embeddings
from ctsl_hpc.train.objective import student_loss
from ctsl_hpc.train.recipe import recipe
from ctsl_hpc.train.trainer import TrainingData, build_trainer
from ctsl_hpc.workdir import RunDir
from tests.seeds import fresh_seed

FP32_TOL = {"rtol": 1e-4, "atol": 1e-5}


pytestmark = pytest.mark.usefixtures("one_thread")  # float comparisons, and the 2-core CI machine


@pytest.fixture(scope="module")
def setup(small_corpus, tiny_overrides, tmp_path_factory):
    """Tiny config, a noisy train set and its clean twin (same files, crop and stats), a teacher on disk."""
    root = tmp_path_factory.mktemp("cache")
    cfg = load_config(None, [*tiny_overrides(root / "w"), "model.dropout=0.0"])
    splits = load_csv_manifest(small_corpus.manifest)
    pool = NoisePool.from_directory(small_corpus.noise_train, 16000, 1.0, min_seconds=4.0)
    stats = WaveformStats(0.0, 0.1)
    common = {"sample_rate": 16000, "max_seconds": 4.0, "stats": stats, "preload": True, "seed": 1}
    noisy = UtteranceSet(splits["train"], noise=pool, snr_db=5.0, **common)
    clean = UtteranceSet(splits["train"], **common)
    assert len(set(noisy.lengths.tolist())) > 3  # utterances of different lengths: batches are padded
    torch.manual_seed(fresh_seed("tiny teacher weights").entropy)
    teacher = build_model(cfg.model).eval()
    teacher_dir = save_model(teacher, root / "teacher", stats)
    return cfg, noisy, clean, teacher, teacher_dir, root


def test_cached_embeddings_equal_per_utterance_teacher_forward(setup, tmp_path):
    """The cache is computed on padded, length-sorted batches; masking makes it equal to unpadded forwards."""
    _, _, clean, teacher, teacher_dir, _ = setup
    table = teacher_embeddings(teacher, teacher_dir, clean, tmp_path, batch_size=7)
    with torch.no_grad():
        alone = torch.cat([teacher.embed(torch.from_numpy(clean[i]["clean"])[None], torch.ones(1, clean.lengths[i], dtype=torch.bool))
                           for i in range(len(clean))])
    torch.testing.assert_close(table, alone, **FP32_TOL)


@pytest.mark.parametrize("sampler_cls", ["buckets", "random"])
def test_cached_teacher_gives_the_live_teacher_losses(setup, tmp_path, sampler_cls):
    cfg, noisy, clean, teacher, teacher_dir, _ = setup
    rec = recipe("RM+TL+CL", cfg)
    train = dataclasses.replace(cfg.train, bucket_by_length=sampler_cls == "buckets")
    cached = cached_teacher(teacher_embeddings(teacher, teacher_dir, clean, tmp_path, batch_size=5))
    live = live_teacher(teacher)
    student = build_model(cfg.model).train()
    sampler = make_sampler(noisy, train, 0, 1)
    sampler.set_epoch(1)
    noisy.set_epoch(1)
    for indices in sampler:
        batch = collate([noisy[i] for i in indices])
        out = student(batch["noisy"], batch["mask"])
        with_cache, with_teacher = student_loss(out, batch, rec, cached), student_loss(out, batch, rec, live)
        for term in ("tl", "cl", "total"):
            torch.testing.assert_close(with_cache[term], with_teacher[term], **FP32_TOL)
        assert with_cache["tl"] > 0  # the teacher term is really in the loss


def test_student_training_with_the_cache_matches_training_with_the_teacher(setup, tmp_path):
    cfg, noisy, clean, teacher, teacher_dir, _ = setup
    train = dataclasses.replace(cfg.train, epochs=1)
    rec = dataclasses.replace(recipe("RM+TL+CL", cfg), epochs=2)
    embeds = {
        "cache": cached_teacher(teacher_embeddings(teacher, teacher_dir, clean, tmp_path / "c", batch_size=8)),
        "live": live_teacher(teacher),
    }
    results = {}
    for name, embed in embeds.items():
        student = build_model(cfg.model)
        student.load_state_dict(teacher.state_dict())
        results[name] = build_trainer(student, rec, TrainingData(noisy, noisy, teacher=embed), train, RunDir(tmp_path / name)).fit()
    for a, b in zip(results["cache"].epochs, results["live"].epochs, strict=True):
        for term in ("ccc", "tl", "cl", "total"):
            assert a.losses[term] == pytest.approx(b.losses[term], rel=1e-4, abs=1e-6), term


def test_cache_is_rebuilt_when_the_teacher_changes(setup, tmp_path):
    cfg, _, clean, teacher, teacher_dir, root = setup
    other = build_model(cfg.model).eval()  # different random weights
    other_dir = save_model(other, root / "other-teacher", None)
    assert cache_key(teacher_dir, clean) != cache_key(other_dir, clean)
    first = teacher_embeddings(teacher, teacher_dir, clean, tmp_path, batch_size=8)
    second = teacher_embeddings(other, other_dir, clean, tmp_path, batch_size=8)
    assert len(list(tmp_path.glob("teacher-*.safetensors"))) == 2
    assert not torch.allclose(first, second)
    # a changed crop is other data: another key as well
    cropped = UtteranceSet(clean.utterances, 16000, 1.5, stats=clean.stats, preload=True)
    assert cache_key(teacher_dir, cropped) != cache_key(teacher_dir, clean)


def test_second_call_loads_the_cache_instead_of_recomputing(setup, tmp_path):
    _, _, clean, teacher, teacher_dir, _ = setup
    teacher_embeddings(teacher, teacher_dir, clean, tmp_path, batch_size=8)
    (path,) = tmp_path.glob("teacher-*.safetensors")
    marker = torch.randn(len(clean), teacher.embedding_dim)
    path.write_bytes(safetensors.torch.save({CACHE_TENSOR: marker}))  # what the second call returns proves it read the file
    assert torch.equal(teacher_embeddings(teacher, teacher_dir, clean, tmp_path, batch_size=8), marker)


@pytest.mark.slow
def test_student_variants_share_one_cache_built_once(tiny_overrides, tmp_path):
    cfg = load_config(None, [*tiny_overrides(tmp_path / "w"), "train.epochs=1", "student.epochs=1"])
    exp = Experiment.open(cfg)
    train_teacher(exp)
    train_student(exp, "RM+TL")
    (cache,) = exp.workdir.cache.glob("teacher-*.safetensors")
    built = cache.stat().st_mtime_ns, cache.stat().st_ino
    train_student(exp, "RM+CL")
    assert list(exp.workdir.cache.glob("teacher-*")) == [cache]
    assert (cache.stat().st_mtime_ns, cache.stat().st_ino) == built  # loaded, not written again


class RecordingSink:
    def __init__(self):
        self.logged: dict[int, dict[str, float]] = {}

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.logged[step] = metrics


@pytest.mark.parametrize("bucket_by_length", [True, False])
def test_padding_waste_of_each_epoch_is_logged(setup, tmp_path, bucket_by_length):
    cfg, noisy, _, _, _, _ = setup
    train = dataclasses.replace(cfg.train, epochs=2, bucket_by_length=bucket_by_length)
    sink = RecordingSink()
    build_trainer(build_model(cfg.model), recipe("RM", cfg), TrainingData(noisy, noisy), train, RunDir(tmp_path), sink).fit()
    sampler = make_sampler(noisy, train, 0, 1)
    assert isinstance(sampler, RandomBatchSampler) != bucket_by_length
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        expected = padding_waste(sampler.batches(), noisy.lengths)
        assert sink.logged[epoch + 1]["data/padding_waste"] == pytest.approx(expected, abs=1e-12)
        assert 0 <= expected < 1
