"""The search's driver: teacher -> cache -> shared noise -> Tune (ASHA) -> best config -> final students -> report.

:func:`run_sweep` goes from nothing to the report and is resumable: the teacher is trained once,
the teacher's clean embeddings are cached in the work directory, the noise pools are read once and
shared through Ray's object store, the search is restored from its experiment folder when it
exists (``Tuner.restore``), and the final students reuse everything of the search.

Ray does not forward signals to trials: the driver turns SIGUSR2 into a flag file
(:class:`~ctsl_hpc.tune.relay.PreemptionRelay`) that every trial reads; trials save and stop, then
:class:`SweepCallback` ends the Tune run the way Tune's own SIGUSR1 does, leaving it restorable.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune import Callback

from ctsl_hpc import stage_jobs
from ctsl_hpc.config import ExperimentConfig, TuneConfig
from ctsl_hpc.experiment import Experiment, never, teacher_embedder, teacher_summary
from ctsl_hpc.track.runs import open_tracker
from ctsl_hpc.train.recipe import recipe
from ctsl_hpc.tune.final import train_and_evaluate_final
from ctsl_hpc.tune.relay import PreemptionRelay, tune_dir
from ctsl_hpc.tune.space import TIME_ATTR, search_space
from ctsl_hpc.tune.summary import best_of, trial_table, write_summary
from ctsl_hpc.tune.trial import SharedInputs, shared_inputs, train_trial, trial_key
from ctsl_hpc.workdir import Workdir

log = logging.getLogger(__name__)

EXPERIMENT = "search"
INTERRUPTED = 3  # exit status of a sweep stopped by a preemption request (run it again to continue)


class SweepCallback(Callback):
    """Closes each trial's MLflow run when Tune ends it; ends the Tune run once a stop request is served.

    Tune pickles callbacks into its experiment state (and restores them from there), so this holds
    only paths; the tracker is opened lazily.
    """

    def __init__(self, workdir: Path, grace_s: float) -> None:
        self.workdir = str(workdir)
        self.grace_s = grace_s
        self.stop_seen: float | None = None
        self._tracker: Any = None
        self._stop: PreemptionRelay | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"workdir": self.workdir, "grace_s": self.grace_s, "stop_seen": None, "_tracker": None, "_stop": None}

    def _close(self, trial, status: str) -> None:
        if self._tracker is None:
            workdir = Workdir(self.workdir)
            self._tracker = open_tracker(workdir.root, workdir.read_config(), system_metrics=False) or False
        if self._tracker and trial_key(trial.trial_id) in self._tracker.run_ids():
            self._tracker.child(trial_key(trial.trial_id)).finish(status)

    def _relay(self) -> PreemptionRelay:
        if self._stop is None:
            workdir = Workdir(self.workdir)
            self._stop = PreemptionRelay(tune_dir(workdir.read_config(), workdir))
        return self._stop

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._close(trial, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._close(trial, "KILLED" if self._relay().requested() else "FAILED")

    def on_step_begin(self, iteration, trials, **info) -> None:
        if self.stop_seen == float("inf") or not self._relay().requested():
            return
        self.stop_seen = self.stop_seen or time.monotonic()
        running = [t for t in trials if t.status == "RUNNING"]
        if not running or time.monotonic() - self.stop_seen > self.grace_s:
            log.warning("stop request served (%d trial(s) still running): ending the Tune run", len(running))
            os.kill(os.getpid(), signal.SIGUSR1)  # Tune's own graceful stop: the experiment stays restorable
            self.stop_seen = float("inf")


def _search_alg(tc: TuneConfig):
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    if tc.search_alg == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        alg = OptunaSearch(seed=tc.seed)
        return ConcurrencyLimiter(alg, tc.max_concurrent) if tc.max_concurrent else alg
    return BasicVariantGenerator(random_state=tc.seed, max_concurrent=tc.max_concurrent)


def make_tuner(
    exp: Experiment,
    shared: SharedInputs,
    callbacks: list[Any] = (),
    param_space: dict[str, Any] | None = None,
    early_stopping: bool = True,
    name: str = EXPERIMENT,
):
    """A new Tuner for the workspace's search, or the restored one when the experiment exists.

    ``param_space`` replaces the configured space (e.g. a grid); ``early_stopping=False`` runs every
    trial to ``tune.max_t`` (FIFO) instead of ASHA.
    """
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    tc = exp.cfg.tune
    folder = tune_dir(exp.cfg, exp.workdir)
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, shared=shared), {"cpu": tc.cpus_per_trial, "gpu": tc.gpus_per_trial}
    )
    path = folder / name
    if tune.Tuner.can_restore(str(path)):
        log.info("continuing the search in %s", path)
        return tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=True)
    scheduler = ASHAScheduler(
        time_attr=TIME_ATTR, max_t=tc.max_t, grace_period=tc.grace_period, reduction_factor=tc.reduction_factor
    ) if early_stopping else FIFOScheduler()
    return tune.Tuner(
        trainable,
        param_space=param_space or search_space(tc),
        tune_config=tune.TuneConfig(
            metric=tc.metric, mode="max", scheduler=scheduler, search_alg=_search_alg(tc),
            num_samples=1 if param_space else tc.num_samples,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(folder),
            callbacks=list(callbacks),
            # a trial whose worker or node died is retried from its newest checkpoint (on any node left)
            failure_config=tune.FailureConfig(max_failures=tc.max_failures),
            # all kept: a trial checkpoint is a 50-byte pointer (num_to_keep would force a state snapshot per save)
            checkpoint_config=tune.CheckpointConfig(),
            verbose=1,
        ),
    )


def prepare_shared(exp: Experiment, should_stop: Callable[[], bool] = never) -> SharedInputs:
    """Train the teacher (once), fill the embedding cache, read the noise pools: before any trial."""
    cfg = exp.cfg
    stage_jobs.teacher_job(exp.workdir.root, should_stop=should_stop)
    if cfg.student.cache_teacher_embeddings and recipe(cfg.tune.variant, cfg).needs_teacher:
        teacher_embedder(exp, teacher_summary(exp).best_dir)  # computed here once, read by every trial
    return shared_inputs(exp)


@dataclass
class SweepResult:
    """What a finished search produced."""

    best: dict[str, Any]  # params, trial id, metric, epoch
    best_config: Path
    trials: Path
    plot: Path
    report_dir: Path | None


def init_ray(address: str | None = None) -> None:
    """Connect to the cluster at ``address``, or start a private local Ray with this machine's CPUs."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not address:  # a private single-node Ray: its services on the loopback interface only
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, include_dashboard=False, log_to_driver=True)
    else:
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False)


def run_search(exp: Experiment, grace_s: float = 60.0):
    """Run (or continue) the search; returns Tune's ResultGrid, or None if a stop request ended it.

    From here on SIGUSR2 (Slurm's preemption warning) asks the teacher or the trials to save and stop.
    """
    from ctsl_hpc.train.trainer import TrainingInterrupted

    relay = PreemptionRelay(tune_dir(exp.cfg, exp.workdir))
    relay.clear()
    relay.install()
    try:
        shared = prepare_shared(exp, should_stop=relay.requested)
    except TrainingInterrupted:
        log.warning("the teacher was stopped on request; run the same command again to continue")
        return None
    tuner = make_tuner(exp, shared, callbacks=[SweepCallback(exp.workdir.root, grace_s)])
    results = tuner.fit()
    if relay.requested():
        log.warning("the search was stopped on request; run the same command again to continue")
        return None
    return results


def run_sweep(cfg: ExperimentConfig, address: str | None = None) -> SweepResult | None:
    """``sweep --tune``: teacher, search, best config, final students and report; resumable.

    Returns None when a stop request (SIGUSR2) ended the search early: running it again continues.
    """
    exp = Experiment.open(cfg)
    tracker = open_tracker(exp.workdir.root, cfg, system_metrics=False)
    parent = None if tracker is None else tracker.parent(config=cfg)
    init_ray(address)
    results = run_search(exp)
    if results is None:
        return None
    best = best_of(results, cfg.tune.metric)
    rows = trial_table(results, cfg.tune.metric)
    best_path, csv_path, plot = write_summary(rows, best, cfg, exp.workdir)
    log.info("best %s = %.4f at epoch %d with %s", best["metric"], best["value"], best["epoch"], best["params"])
    if parent is not None:
        parent.set_tags({f"tune.best.{k}": v for k, v in best["params"].items()} | {"tune.best.trial_id": best["trial_id"]})
        parent.log_metrics({"tune/best_dev": best["value"], "tune/trials": len(rows)}, step=0)
        for path in (best_path, csv_path, plot):
            parent.log_artifact(path, "tune")
    report_dir = train_and_evaluate_final(exp, best, tracker)
    if parent is not None:
        parent.log_artifacts(report_dir, "final_report")
        tracker.flush()
    return SweepResult(best, best_path, csv_path, plot, report_dir)
