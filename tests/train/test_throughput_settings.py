"""Throughput settings: persistent loader workers, resume position, torch.compile, activation checkpointing, fused Adam."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ctsl_hpc.config import load_config
from ctsl_hpc.data.batching import UtteranceSet
from ctsl_hpc.data.corpus import load_csv_manifest
from ctsl_hpc.data.noise import NoisePool
from ctsl_hpc.model import build_model
from ctsl_hpc.train.batches import make_loader, make_sampler
from ctsl_hpc.train.engines import Engine, OptimSettings
from ctsl_hpc.train.recipe import recipe
from ctsl_hpc.train.trainer import TrainingData, build_trainer
from ctsl_hpc.workdir import RunDir

pytestmark = pytest.mark.usefixtures("one_thread")  # float comparisons, and the 2-core CI machine


@pytest.fixture(scope="module")
def setup(small_corpus, tiny_overrides, tmp_path_factory):
    cfg = load_config(None, [*tiny_overrides(tmp_path_factory.mktemp("w")), "model.dropout=0.0"])
    splits = load_csv_manifest(small_corpus.manifest)
    pool = NoisePool.from_directory(small_corpus.noise_train, 16000, 1.0, min_seconds=4.0)
    noisy = UtteranceSet(splits["train"], 16000, 4.0, preload=True, noise=pool, snr_db=0.0, seed=2)
    return cfg, noisy


def epoch_batches(loader, dataset, sampler, epoch, start_batch=0):
    dataset.set_epoch(epoch)
    sampler.set_epoch(epoch, start_batch)
    return list(loader)


def test_one_persistent_worker_loader_gives_each_epochs_batches_and_resume_position(setup):
    cfg, noisy = setup
    train = dataclasses.replace(cfg.train, num_workers=2)
    sampler, reference_sampler = make_sampler(noisy, train, 0, 1), make_sampler(noisy, cfg.train, 0, 1)
    loader = make_loader(noisy, sampler, train, torch.device("cpu"))
    in_process = make_loader(noisy, reference_sampler, cfg.train, torch.device("cpu"))
    assert loader.persistent_workers and not in_process.persistent_workers

    seen = []
    for epoch, start in ((0, 0), (1, 0), (1, 3), (2, 0)):
        got = epoch_batches(loader, noisy, sampler, epoch, start)
        seen.append(loader._iterator)
        want = epoch_batches(in_process, noisy, reference_sampler, epoch, start)
        assert len(got) == len(want) == len(sampler) - start
        for a, b in zip(got, want, strict=True):
            assert torch.equal(a["index"], b["index"]) and torch.equal(a["noisy"], b["noisy"])
    assert all(it is seen[0] for it in seen)  # the same workers served every epoch
    first = epoch_batches(in_process, noisy, reference_sampler, 0)
    second = epoch_batches(in_process, noisy, reference_sampler, 1)
    assert [b["index"].tolist() for b in first] != [b["index"].tolist() for b in second]  # re-shuffled per epoch


@pytest.mark.slow
def test_training_with_persistent_workers_equals_training_in_process(setup, tmp_path):
    cfg, noisy = setup
    rec = dataclasses.replace(recipe("RM", cfg), epochs=2)
    results = {}
    for workers in (0, 2):
        torch.manual_seed(0)
        model = build_model(cfg.model)
        train = dataclasses.replace(cfg.train, num_workers=workers)
        history = build_trainer(model, rec, TrainingData(noisy, noisy), train, RunDir(tmp_path / str(workers))).fit()
        results[workers] = (history, model.state_dict())
    assert [r.losses for r in results[0][0].epochs] == [r.losses for r in results[2][0].epochs]
    for name, value in results[0][1].items():
        assert torch.equal(value, results[2][1][name]), name


def batch_of(noisy: UtteranceSet, n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    from ctsl_hpc.data.batching import collate

    batch = collate([noisy[i] for i in rng.choice(len(noisy), n, replace=False)])
    return batch["noisy"], batch["mask"]


def test_activation_checkpointing_recomputes_layers_and_keeps_loss_and_gradients(setup, rng):
    cfg, noisy = setup
    plain_cfg = dataclasses.replace(cfg.model, freeze_feature_encoder=False)
    torch.manual_seed(int(rng.integers(1 << 30)))
    plain = build_model(plain_cfg).train()
    checkpointed = build_model(dataclasses.replace(plain_cfg, gradient_checkpointing=True)).train()
    checkpointed.load_state_dict(plain.state_dict())
    layer_runs = []
    checkpointed.backbone.encoder.layers[0].layer_norm.register_forward_pre_hook(lambda *_: layer_runs.append(1))
    wave, mask = batch_of(noisy, 3, rng)
    losses, grads = [], []
    for model in (plain, checkpointed):
        out = model(wave, mask)
        loss = out.pred.pow(2).mean() + out.embedding.pow(2).mean()
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert len(layer_runs) == 2  # forward, then recomputed in the backward pass
    torch.testing.assert_close(losses[0], losses[1])
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_fused_adam_steps_like_plain_adam(setup, rng):
    cfg, noisy = setup
    settings = OptimSettings(1e-3, 1.0, 1, 0.0, "auto", True, 4)
    torch.manual_seed(0)
    models = [build_model(cfg.model).train() for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    engines = [Engine(models[0], settings), Engine(models[1], dataclasses.replace(settings, fused=False))]
    assert engines[0].optimizer.defaults["fused"] and not engines[1].optimizer.defaults["fused"]
    for _ in range(3):
        wave, mask = batch_of(noisy, 2, rng)
        for engine in engines:
            out = engine.forward(wave, mask)
            engine.backward(out.pred.pow(2).mean())
            assert engine.step()
    for (name, a), b in zip(models[0].state_dict().items(), models[1].state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_train_compile_compiles_the_model_fit_trains(setup, tmp_path):
    """Wiring only: Inductor needs minutes on 2 CPU cores, so the compiled model runs eagerly here."""
    cfg, noisy = setup
    few = UtteranceSet(noisy.utterances[:8], 16000, 4.0, preload=True, noise=noisy.noise, snr_db=0.0, seed=2)
    rec = dataclasses.replace(recipe("RM", cfg), epochs=1)
    losses = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        model = build_model(cfg.model)
        train = dataclasses.replace(cfg.train, compile=compiled, epochs=1)
        with torch.compiler.set_stance("force_eager"):
            history = build_trainer(model, rec, TrainingData(few, few), train, RunDir(tmp_path / str(compiled))).fit()
            losses[compiled] = history.epochs[0].losses["total"]
        assert (model._compiled_call_impl is not None) == compiled  # train.compile reached the model
        assert all(not k.startswith("_orig_mod") for k in model.state_dict())  # checkpoints keep plain names
    assert losses[True] == losses[False]
