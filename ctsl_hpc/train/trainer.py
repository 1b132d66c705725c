"""One trainer for the teacher and every student variant, built from its parts as in torchtitan.

The parts: the model, the engine that owns its placement and optimiser (:mod:`ctsl_hpc.train.engines`),
the data (:class:`TrainingData`: what it trains and selects on), the recipe (what the variant
learns, :mod:`ctsl_hpc.train.recipe`), the checkpointer (:class:`~ctsl_hpc.train.checkpoint.Checkpointer`)
and a metrics sink. Per step: the model sees clean (teacher) or noisy (student) speech; the loss
is the CCC loss plus the recipe's weighted terms against the teacher's clean embeddings. Per epoch:
development CCC, the epoch's weights, a resumable checkpoint. A stop request (preemption) saves a
checkpoint after the current optimiser step and raises :class:`TrainingInterrupted`; ``fit`` on a
run folder with a checkpoint resumes from the newest complete one and reproduces the uninterrupted
run bitwise.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ctsl_hpc.config import TrainConfig
from ctsl_hpc.data.audio import WaveformStats
from ctsl_hpc.data.batching import UtteranceSet
from ctsl_hpc.logs import quiet_progress
from ctsl_hpc.losses import ccc
from ctsl_hpc.model import EmotionModel, save_model
from ctsl_hpc.run_records import EpochRecord, History, write_history
from ctsl_hpc.train import checkpoint as ckpt
from ctsl_hpc.train.batches import EpochTotals, Timing, make_loader, make_sampler
from ctsl_hpc.train.engines import Engine, OptimSettings, make_engine
from ctsl_hpc.train.inference import predict
from ctsl_hpc.train.interface import MetricsSink, NullSink, TrainingInterrupted
from ctsl_hpc.train.objective import REPORTED, TeacherEmbedder, student_loss
from ctsl_hpc.train.recipe import Recipe
from ctsl_hpc.workdir import RunDir

log = logging.getLogger(__name__)

EpochHook = Callable[[EpochRecord, Path], None]


@dataclass(frozen=True)
class TrainingData:
    """What a run trains and selects on, the statistics saved with each epoch's model, and the teacher's
    clean embeddings for the loss terms that compare with them."""

    train: UtteranceSet
    dev: UtteranceSet
    stats: WaveformStats | None = None
    teacher: TeacherEmbedder | None = None


def evaluate_dev(model: EmotionModel, dev_set: UtteranceSet, noisy: bool, batch_size: int) -> np.ndarray:
    """CCC per attribute of ``model`` on the whole development set (noisy for students: mixed with its pool, or
    read as they are when it holds the corpus's own noisy recordings and mixes nothing)."""
    pred, _ = predict(model, dev_set, batch_size, use_noisy=noisy and dev_set.noise is not None)
    return ccc(torch.from_numpy(pred).double(), torch.from_numpy(dev_set.labels).double()).numpy()


def build_trainer(
    model: EmotionModel, recipe: Recipe, data: TrainingData, train: TrainConfig, run: RunDir,
    sink: MetricsSink | None = None,
) -> Trainer:
    """The trainer of ``recipe`` in ``run``: ``train.engine`` around ``model`` (only the head trainable
    where the recipe says so), a checkpointer in the run folder, ``sink`` for the epoch metrics."""
    if not recipe.train_backbone:
        model.backbone.requires_grad_(False)
    if train.compile:
        model.compile()  # in place: parameter names and checkpoints stay those of the plain model
    settings = OptimSettings(
        recipe.lr, recipe.lr_decay, train.grad_accum, train.grad_clip, train.precision, train.fused_optimizer,
        train.batch_size,
    )
    engine = make_engine(train.engine, model, settings, train.deepspeed_config)
    return Trainer(model, engine, data, recipe, ckpt.Checkpointer(run, engine, train.keep_checkpoints), train, sink)


class Trainer:
    """Trains one model by its recipe; holds the run's state (epoch, position, step, history)."""

    def __init__(
        self, model: EmotionModel, engine: Engine, data: TrainingData, recipe: Recipe,
        checkpointer: ckpt.Checkpointer, train: TrainConfig, sink: MetricsSink | None = None,
    ) -> None:
        self.model, self.engine, self.data, self.recipe = model, engine, data, recipe
        self.checkpointer, self.train, self.sink = checkpointer, train, sink or NullSink()
        self.sampler = make_sampler(data.train, train, engine.rank, engine.world_size)
        self.state = ckpt.TrainerState()

    @property
    def run(self) -> RunDir:
        return self.checkpointer.run

    # -- state (what a checkpoint holds besides the engine's files)

    def state_dict(self) -> dict[str, Any]:
        """The trainer's state with every RNG's, as :class:`~ctsl_hpc.train.checkpoint.TrainerState` saves it."""
        return self.state.to_dict(rng=ckpt.rng_state())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned, the RNG states included."""
        self.state = ckpt.TrainerState.from_dict(state)
        ckpt.restore_rng_state(state["rng"])

    # -- one step, one development evaluation

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Forward, loss and backward of one (micro-)batch; returns the loss terms (:data:`REPORTED`).

        The optimiser steps separately (``engine.step()``), at the end of an accumulation window."""
        engine = self.engine
        batch = {k: v.to(engine.device, non_blocking=True) for k, v in batch.items()}
        wave = batch["noisy"] if self.recipe.noisy_input else batch["clean"]
        with engine.autocast():
            out = engine.forward(wave, batch["mask"])
        terms = student_loss(out, batch, self.recipe, self.data.teacher, engine.gather)
        engine.backward(terms["total"])
        return terms

    def evaluate_dev(self) -> np.ndarray:
        """CCC per attribute on the development set (noisy for students)."""
        return evaluate_dev(self.engine.unwrapped(), self.data.dev, self.recipe.noisy_input, self.train.batch_size)

    # -- the loop

    def fit(self, should_stop: Callable[[], bool] = lambda: False, on_epoch_end: EpochHook | None = None) -> History:
        """Train to ``recipe.epochs``, resuming from the run's newest complete checkpoint.

        ``on_epoch_end(record, checkpoint)`` runs on the main rank after the epoch's checkpoint and history
        are on disk (unlike the sink, which sees the metrics before the save): a scheduler such as Ray Tune
        may stop the process inside it without losing the epoch.
        """
        self._start()
        loader = make_loader(self.data.train, self.sampler, self.train, self.engine.device)
        while self.state.epoch < self.recipe.epochs:
            totals, timed = self._train_epoch(loader, should_stop)
            self._end_epoch(totals, timed, on_epoch_end)
        return self.state.history

    def _start(self) -> None:
        run, engine = self.run, self.engine
        run.path.mkdir(parents=True, exist_ok=True)
        resume_from = self.checkpointer.latest()
        if resume_from is not None:
            self.checkpointer.load(resume_from, self)
            state = self.state
            log.info("%s: resumed from %s (epoch %d, batch %d)", self.recipe.name, resume_from.name, state.epoch, state.batch)
        else:
            ckpt.seed_rngs(self.train.seed + engine.rank)  # ranks draw different dropout and SpecAugment masks
        hosts = engine.hosts()
        if engine.is_main:
            run.record_start(hosts, None if resume_from is None else self.state.global_step)
            if engine.world_size > 1:
                log.info("%s: %d ranks on %s", self.recipe.name, engine.world_size, ", ".join(hosts))

    def _train_epoch(self, loader, should_stop: Callable[[], bool]) -> tuple[EpochTotals, Timing]:
        state, engine, recipe = self.state, self.engine, self.recipe
        self.data.train.set_epoch(state.epoch)
        self.sampler.set_epoch(state.epoch, state.batch)
        engine.module.train()
        if not recipe.train_backbone:
            self.model.backbone.eval()
        # resumed mid-epoch: the epoch's averages include the steps before the stop
        totals = EpochTotals.from_dict(state.running) if state.running is not None else EpochTotals.empty(REPORTED)
        state.running = None
        timed = Timing(time.perf_counter())  # the steps this process runs (a resumed epoch: those after the resume)
        bar = tqdm(loader, desc=f"{recipe.name} epoch {state.epoch + 1}/{recipe.epochs}", disable=quiet_progress(),
                   leave=False)
        for position, batch in enumerate(bar, start=state.batch + 1):
            totals.count(batch)
            timed.audio_samples += int(batch["lengths"].sum())
            terms = self.train_step(batch)
            totals.add(terms)
            if not engine.step():
                continue
            state.global_step += 1
            timed.steps += 1
            if state.global_step % self.train.log_every == 0 and quiet_progress() and engine.is_main:
                log.info("%s epoch %d step %d loss %.4f", recipe.name, state.epoch + 1, state.global_step,
                         terms["total"].item())
            bar.set_postfix(loss=f"{terms['total'].item():.3f}")
            if engine.all_reduce_flag(should_stop()):
                state.batch, state.running = position, totals.to_dict()
                raise TrainingInterrupted(self.checkpointer.save(self, state.global_step))
        engine.end_epoch()
        timed.seconds = time.perf_counter() - timed.seconds
        return totals, timed

    def _end_epoch(self, totals: EpochTotals, timed: Timing, on_epoch_end: EpochHook | None) -> None:
        state, engine = self.state, self.engine
        dev_ccc = self.evaluate_dev()
        if engine.is_main:
            save_model(engine.unwrapped(), self.run.epoch_dir(state.epoch + 1), self.data.stats)
        record = EpochRecord(state.epoch + 1, dev_ccc.tolist(), float(dev_ccc.mean()), totals.losses())
        state.history.epochs.append(record)
        metrics = record.metrics()
        metrics["lr"] = engine.lr
        metrics["data/padding_waste"] = totals.padding_waste()
        metrics.update(timed.metrics(self.data.train.sample_rate))
        if engine.is_main:
            self.sink.log_metrics(metrics, step=record.epoch)
            log.info("%s epoch %d: dev CCC %s (mean %.3f)", self.recipe.name, record.epoch,
                     np.round(dev_ccc, 3), record.dev_score)
        state.epoch, state.batch = record.epoch, 0
        saved = self.checkpointer.save(self, state.global_step)
        if engine.is_main:
            write_history(self.run.history, state.history)
            if on_epoch_end is not None:
                on_epoch_end(record, saved)

