"""One Ray Tune trial: the sweep's own student set-up with the trial's loss weights and noise budget.

A trial trains in its own run folder (``<workdir>/tune/trials/<trial id>``) through
:func:`ctsl_hpc.experiment.student_trainer`, the same code as the sweep's students. It reports every
epoch to Tune *after* the epoch's checkpoint is on disk, with a small Tune checkpoint that records
the epoch. A restored trial continues from its newest complete checkpoint (mid-epoch after a
preemption); the epochs Tune never saw are reported first, so Tune, ASHA and the trial agree and
the result equals an uninterrupted run. Each trial logs to its own MLflow child run
``trial/<trial id>`` (run ids persisted by the tracker: no duplicates after a restore).

:func:`run_trial` is the trial's training without Ray (Ray's trial id, report and checkpoint come in
as arguments); :func:`train_trial`, the trainable Tune runs, passes Ray's. MLflow is imported only
when tracking is on, so the trial runs where neither Ray nor MLflow is installed.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctsl_hpc.atomic_io import atomic_write_json
from ctsl_hpc.data.noise import NoisePool
from ctsl_hpc.experiment import Experiment, student_trainer
from ctsl_hpc.run_records import EpochRecord
from ctsl_hpc.stage_jobs import NOISY_SPLITS, dataset_inputs
from ctsl_hpc.train.interface import TrainingInterrupted
from ctsl_hpc.tune.relay import PreemptionRelay, tune_dir
from ctsl_hpc.tune.space import POINT_FILE, SEARCHED, TIME_ATTR, apply_params, scheduler_metric
from ctsl_hpc.workdir import RunDir

log = logging.getLogger(__name__)

TRIAL_STATE = "trial.json"


@dataclass
class SharedInputs:
    """What every trial reads, put once into Ray's object store (fetched once per node)."""

    workdir: str
    train_pool: NoisePool  # the training pool, read up to the largest noise_minutes choice
    dev_pool: NoisePool  # the development pool of the base config (the same for every trial)


def shared_inputs(exp: Experiment) -> SharedInputs:
    """The noise every trial reads: the training pool up to the largest ``tune.noise_minutes``, the dev pool."""
    cfg, d = exp.cfg, exp.cfg.data
    largest = max(cfg.tune.noise_minutes)
    train_pool = NoisePool.from_directory(exp.data.noise_dirs["train"], d.sample_rate, largest, min_seconds=d.max_seconds)
    short = [m for m in cfg.tune.noise_minutes if m * 60 > train_pool.seconds + 1e-6]
    if short:
        log.warning(
            "the training noise folder holds %.2f min: tune.noise_minutes choices %s all use the whole pool",
            train_pool.seconds / 60, short,
        )
    return SharedInputs(str(exp.workdir.root), train_pool, exp.data.pool("dev"))


def trial_key(trial_id: str) -> str:
    """The trial's MLflow child-run key."""
    return f"trial/{trial_id}"


def _report(metrics: dict[str, float]) -> None:
    """Send one epoch to Tune with a checkpoint naming it (the weights stay in the trial's run folder)."""
    from ray import tune

    with tempfile.TemporaryDirectory(prefix="ctsl-tune-") as tmp:
        (Path(tmp) / TRIAL_STATE).write_text(json.dumps({TIME_ATTR: metrics[TIME_ATTR]}))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def epoch_report(record: EpochRecord, history: list[EpochRecord], metric: str) -> dict[str, float]:
    """What a trial reports after an epoch: the epoch, its metrics, and the best ``metric`` of the epochs so far
    (:func:`~ctsl_hpc.tune.space.scheduler_metric`, what the scheduler compares)."""
    best = max(r.metrics()[metric] for r in history if r.epoch <= record.epoch)
    return {TIME_ATTR: record.epoch, **record.metrics(), scheduler_metric(metric): best}


def _reported_epoch() -> int:
    """The last epoch Tune holds a checkpoint of (0 for a fresh trial)."""
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as path:
        return int(json.loads((Path(path) / TRIAL_STATE).read_text())[TIME_ATTR])


def _catch_up(run: RunDir, reported: int, report: Callable[[dict[str, float]], None], metric: str) -> None:
    """Report the epochs the trial finished but Tune never recorded (the driver died in between)."""
    from ctsl_hpc.train import checkpoint as ckpt

    latest = ckpt.latest_complete_checkpoint(run.path)
    if latest is None:
        return
    history = ckpt.TrainerState.read(latest).history.epochs
    for record in history:
        if record.epoch > reported:
            report(epoch_report(record, history, metric))


def _trial_run(base: Experiment, trial: Experiment, trial_id: str, params: dict[str, Any]):
    """The trial's MLflow run (on the base config's tracker) with its params and the data it trains on."""
    if not base.cfg.tracking.enabled:  # before the import: ctsl_hpc.track.runs imports MLflow (not on the GPU machine)
        return None
    from ctsl_hpc.track.runs import open_tracker

    tracker = open_tracker(base.workdir.root, base.cfg)
    if tracker is None:
        return None
    run = tracker.child(trial_key(trial_id), tags={"tune.trial_id": trial_id, "tune.variant": base.cfg.tune.variant})
    run.log_params({k: params[k] for k in SEARCHED})
    run.log_inputs(dataset_inputs(trial, NOISY_SPLITS))
    return run


def train_trial(params: dict[str, Any], shared: SharedInputs) -> None:
    """One Tune trial: the student variant ``tune.variant`` with the trial's weights and noise budget."""
    from ray import tune

    run_trial(params, shared, tune.get_context().get_trial_id(), _report, _reported_epoch())


def run_trial(
    params: dict[str, Any], shared: SharedInputs, trial_id: str, report: Callable[[dict[str, float]], None],
    reported_epoch: int = 0,
) -> None:
    """The trial's training: ``tune.max_t`` epochs of ``tune.variant`` in ``<workdir>/tune/trials/<trial_id>``,
    each epoch's :func:`epoch_report` passed to ``report`` once its checkpoint is on disk (the epochs after
    ``reported_epoch`` that a resumed trial finished earlier first). The point is kept in the run folder
    (``params.json``) for ``status``."""
    import torch

    base = Experiment.reopen(shared.workdir)
    relay = PreemptionRelay(tune_dir(base.cfg, base.workdir))
    run = base.workdir.trial(trial_id)
    if relay.requested():  # a trial started while the sweep is being preempted: leave it for the rerun
        raise TrainingInterrupted(run.path)
    tc = base.cfg.tune
    torch.set_num_threads(max(1, int(tc.cpus_per_trial)))
    exp = Experiment(apply_params(base.cfg, params, epochs=tc.max_t), base.workdir)  # same data, teacher, cache
    exp.data.set_pool("train", shared.train_pool.head(float(params["noise_minutes"])))
    exp.data.set_pool("dev", shared.dev_pool)
    run.path.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run.path / POINT_FILE, {k: float(params[k]) for k in SEARCHED})
    _catch_up(run, reported_epoch, report, tc.metric)
    trainer = student_trainer(exp, tc.variant, run, sink=_trial_run(base, exp, trial_id, params))

    def reported(record: EpochRecord, _checkpoint: Path) -> None:
        report(epoch_report(record, trainer.state.history.epochs, tc.metric))

    trainer.fit(relay.requested, on_epoch_end=reported)
