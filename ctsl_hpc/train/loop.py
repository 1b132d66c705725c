"""One training loop for the teacher and every student variant.

Per step: the model sees clean (teacher) or noisy (student) speech; the loss is the CCC loss plus,
for students, ``lambda_tl`` x transfer loss and ``lambda_cl`` x label-margin InfoNCE against the
teacher's clean embeddings. Per epoch: development CCC, the epoch's weights, a resumable
checkpoint. A stop request (preemption) saves a checkpoint after the current optimiser step and
raises :class:`TrainingInterrupted`; calling :func:`fit` again on the same ``run_dir`` resumes from
the newest complete checkpoint and reproduces the uninterrupted run.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ctsl_hpc.config import TrainConfig
from ctsl_hpc.data.audio import WaveformStats
from ctsl_hpc.data.batching import LengthBucketSampler, RandomBatchSampler, ShardedBatchSampler, UtteranceSet, collate
from ctsl_hpc.data.corpus import ATTRIBUTES
from ctsl_hpc.losses import ccc
from ctsl_hpc.model import EmotionModel, save_model
from ctsl_hpc.atomic_io import atomic_write_json, read_json
from ctsl_hpc.train import checkpoint as ckpt
from ctsl_hpc.train.engines import OptimSettings, make_engine
from ctsl_hpc.train.inference import predict
from ctsl_hpc.train.objective import REPORTED, TeacherEmbedder, student_loss
from ctsl_hpc.train.recipe import Recipe
from ctsl_hpc.workdir import RunDir

log = logging.getLogger(__name__)


class MetricsSink(Protocol):
    """Where per-epoch metrics go (MLflow in the tracking layer; nothing by default)."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...


class NullSink:
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass


class TrainingInterrupted(RuntimeError):
    """A stage stopped on request after saving what it resumes from (a checkpoint, the scores so far)."""

    def __init__(self, checkpoint: Path):
        super().__init__(f"stopped on request; resumable state at {checkpoint}")
        self.checkpoint = checkpoint


@dataclass
class EpochRecord:
    """One finished epoch; its model directory is ``RunDir.epoch_dir(epoch)``."""

    epoch: int
    dev_ccc: list[float]  # arousal, dominance, valence
    dev_score: float  # mean of the three
    losses: dict[str, float]

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> EpochRecord:
        """Read a saved record (fields this version no longer has, e.g. an old absolute ``model_dir``, are dropped)."""
        return cls(**{f.name: values[f.name] for f in fields(cls)})


@dataclass
class FitResult:
    epochs: list[EpochRecord] = field(default_factory=list)

    @property
    def best(self) -> EpochRecord:
        return max(self.epochs, key=lambda r: r.dev_score)

    def dev_scores(self) -> dict[int, float]:
        return {r.epoch: r.dev_score for r in self.epochs}


@dataclass
class Timing:
    """Wall time of an epoch's training steps (data loading included, development scoring not), on this rank."""

    seconds: float  # the start time while the epoch runs, then its duration
    steps: int = 0  # optimiser steps
    audio_samples: int = 0  # real audio fed (no padding)

    def metrics(self, sample_rate: int) -> dict[str, float]:
        """``time/step_s`` and ``throughput/audio_s_per_s`` (this rank's audio per wall second)."""
        if not self.steps:
            return {}
        return {"time/step_s": self.seconds / self.steps,
                "throughput/audio_s_per_s": self.audio_samples / sample_rate / self.seconds}


def quiet_progress() -> bool:
    """No progress bars in CI or when stderr is not a terminal (a scheduler's log file)."""
    return bool(os.environ.get("CI")) or not sys.stderr.isatty()


def make_sampler(dataset: UtteranceSet, train: TrainConfig, rank: int, world: int):
    """Length-bucketed batches by default (``train.bucket_by_length``), else plain random batches.

    ``train.batch_size`` is the global batch: with several ranks each takes its share of every
    global batch (:class:`ctsl_hpc.data.batching.ShardedBatchSampler`).
    """
    max_samples = None
    if train.max_batch_seconds is not None:
        max_samples = int(train.max_batch_seconds * dataset.sample_rate)
    cls = LengthBucketSampler if train.bucket_by_length else RandomBatchSampler
    sampler = cls(dataset.lengths, train.batch_size, train.seed, True, 1, 0, max_samples)
    return sampler if world == 1 else ShardedBatchSampler(sampler, rank, world)


def make_loader(dataset: UtteranceSet, sampler, train: TrainConfig, device: torch.device) -> DataLoader:
    """One DataLoader for the whole run (``train.num_workers`` persistent workers, pinned memory on GPUs).

    The loader re-reads its batch sampler at every ``iter()``: call ``sampler.set_epoch(epoch, start_batch)``
    and ``dataset.set_epoch(epoch)`` (shared memory, seen by running workers) before iterating. Noise is
    mixed in the workers (``UtteranceSet.__getitem__``). The loader's own generator only seeds the
    workers, so it never draws from the global RNG that the dropout masks use.
    """
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=train.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=train.num_workers > 0,
        generator=torch.Generator().manual_seed(train.seed),
    )


def _load_history(run: RunDir) -> FitResult:
    if not run.history.is_file():
        return FitResult()
    records = read_json(run.history, "delete it: the run rewrites it from its newest checkpoint")
    return FitResult([EpochRecord.from_dict(r) for r in records])


def evaluate_dev(model: EmotionModel, dev_set: UtteranceSet, noisy: bool, batch_size: int) -> np.ndarray:
    """CCC per attribute of ``model`` on the whole development set (noisy for students)."""
    pred, _ = predict(model, dev_set, batch_size, use_noisy=noisy)
    return ccc(torch.from_numpy(pred).double(), torch.from_numpy(dev_set.labels).double()).numpy()


def fit(
    model: EmotionModel,
    recipe: Recipe,
    train_set: UtteranceSet,
    dev_set: UtteranceSet,
    train: TrainConfig,
    run_dir: Path,
    stats: WaveformStats | None = None,
    teacher_embed: TeacherEmbedder | None = None,
    sink: MetricsSink | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    on_epoch_end: Callable[[EpochRecord, Path], None] | None = None,
) -> FitResult:
    """Train ``model`` by ``recipe`` in ``run_dir``, resuming from its newest complete checkpoint.

    ``on_epoch_end(record, checkpoint)`` runs on the main rank after the epoch's checkpoint and history
    are on disk (unlike ``sink``, which sees the metrics before the save): a scheduler such as Ray Tune
    may stop the process inside it without losing the epoch.
    """
    run = RunDir(Path(run_dir))
    run.path.mkdir(parents=True, exist_ok=True)
    sink = sink or NullSink()
    if not recipe.train_backbone:
        model.backbone.requires_grad_(False)
    if train.compile:
        model.compile()  # in place: parameter names and checkpoints stay those of the plain model
    settings = OptimSettings(
        recipe.lr, recipe.lr_decay, train.grad_accum, train.grad_clip, train.precision, train.fused_optimizer,
        train.batch_size,
    )
    engine = make_engine(train.engine, model, settings, train.deepspeed_config)
    sampler = make_sampler(train_set, train, engine.rank, engine.world_size)

    result = _load_history(run)
    start_epoch, start_batch, global_step = 0, 0, 0
    running: dict | None = None  # the interrupted epoch's loss sums, so its averages match an uninterrupted run
    resume_from = ckpt.latest_complete_checkpoint(run.path)
    if resume_from is not None:
        state = ckpt.load_trainer_state(resume_from)
        start_epoch, start_batch, global_step = state["epoch"], state["batch"], state["global_step"]
        result = FitResult([EpochRecord.from_dict(r) for r in state["history"]])
        running = state.get("running")
        ckpt.restore_rng_state(state["rng"])
        engine.load(resume_from)  # after the shared RNG state: distributed engines restore each rank's own
        log.info("%s: resumed from %s (epoch %d, batch %d)", recipe.name, resume_from.name, start_epoch, start_batch)
    else:
        ckpt.seed_rngs(train.seed + engine.rank)  # ranks draw different dropout and SpecAugment masks
    hosts = engine.hosts()
    if engine.is_main:
        run.record_start(hosts, None if resume_from is None else global_step)
        if engine.world_size > 1:
            log.info("%s: %d ranks on %s", recipe.name, engine.world_size, ", ".join(hosts))

    def save(epoch: int, batch: int, running: dict | None = None) -> Path:
        state = {
            "epoch": epoch,
            "batch": batch,
            "running": running,
            "global_step": global_step,
            "history": [asdict(r) for r in result.epochs],
            "rng": ckpt.rng_state(),
        }
        path = ckpt.save_checkpoint(run.path, global_step, state, engine.save, engine.is_main, engine.barrier)
        if engine.is_main:
            ckpt.prune_checkpoints(run.path, train.keep_checkpoints, {path})
        return path

    loader = make_loader(train_set, sampler, train, engine.device)
    for epoch in range(start_epoch, recipe.epochs):
        train_set.set_epoch(epoch)
        sampler.set_epoch(epoch, start_batch)
        engine.module.train()
        if not recipe.train_backbone:
            model.backbone.eval()
        sums = dict.fromkeys(REPORTED, 0.0)
        steps = 0
        padded, real = 0, 0  # samples fed to the model, and how many of them are audio (not padding)
        if running is not None:  # resumed mid-epoch: the epoch's averages include the steps before
            sums, steps, padded, real = dict(running["sums"]), running["steps"], running["padded"], running["real"]
            running = None
        timed = Timing(time.perf_counter())  # the steps this process runs (a resumed epoch: those after the resume)
        bar = tqdm(loader, desc=f"{recipe.name} epoch {epoch + 1}/{recipe.epochs}", disable=quiet_progress(), leave=False)
        for position, batch in enumerate(bar, start=start_batch + 1):
            padded += batch["mask"].numel()
            real += int(batch["lengths"].sum())
            timed.audio_samples += int(batch["lengths"].sum())
            batch = {k: v.to(engine.device, non_blocking=True) for k, v in batch.items()}
            wave = batch["noisy"] if recipe.noisy_input else batch["clean"]
            with engine.autocast():
                out = engine.forward(wave, batch["mask"])
            terms = student_loss(out, batch, recipe, teacher_embed, engine.gather)
            engine.backward(terms["total"])
            for key, value in terms.items():
                sums[key] += float(value.detach())
            steps += 1
            if not engine.step():
                continue
            global_step += 1
            timed.steps += 1
            if global_step % train.log_every == 0 and quiet_progress() and engine.is_main:
                log.info("%s epoch %d step %d loss %.4f", recipe.name, epoch + 1, global_step, terms["total"].item())
            bar.set_postfix(loss=f"{terms['total'].item():.3f}")
            if engine.all_reduce_flag(should_stop()):
                raise TrainingInterrupted(save(epoch, position, {"sums": sums, "steps": steps, "padded": padded, "real": real}))
        start_batch = 0
        engine.end_epoch()
        timed.seconds = time.perf_counter() - timed.seconds

        dev_ccc = evaluate_dev(engine.unwrapped(), dev_set, recipe.noisy_input, train.batch_size)
        losses = {k: v / max(steps, 1) for k, v in sums.items()}
        if engine.is_main:
            save_model(engine.unwrapped(), run.epoch_dir(epoch + 1), stats)
        record = EpochRecord(epoch + 1, dev_ccc.tolist(), float(dev_ccc.mean()), losses)
        result.epochs.append(record)
        metrics = {f"loss/{k}": v for k, v in losses.items()}
        metrics.update({f"dev/ccc/{a}": float(c) for a, c in zip(ATTRIBUTES, dev_ccc)})
        metrics["dev/ccc_mean"] = record.dev_score
        metrics["lr"] = engine.lr
        metrics["data/padding_waste"] = 1.0 - real / padded if padded else 0.0  # padded / fed samples
        metrics.update(timed.metrics(train_set.sample_rate))
        if engine.is_main:
            sink.log_metrics(metrics, step=epoch + 1)
            log.info("%s epoch %d: dev CCC %s (mean %.3f)", recipe.name, epoch + 1, np.round(dev_ccc, 3), record.dev_score)
        saved = save(epoch + 1, 0)
        if engine.is_main:
            atomic_write_json(run.history, [asdict(r) for r in result.epochs])
            if on_epoch_end is not None:
                on_epoch_end(record, saved)
    return result
