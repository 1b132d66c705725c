"""The search's task on the job graph: cache -> shared noise -> Tune -> best point -> the final students' config.

:func:`search_job` runs after the graph's prepare and teacher tasks and before its final student and
evaluation tasks (which train and evaluate in ``<workdir>/final``, made here). It is resumable: the
teacher's clean embeddings are cached in the work directory, the noise pools are read once and
shared through Ray's object store, and the search is restored from its experiment folder when it
exists (``Tuner.restore``).

Ray does not forward signals to trials: the job's stop request (its signal flag) becomes a flag file
(:class:`~ctsl_hpc.tune.relay.PreemptionRelay`) that every trial reads; trials save and stop, then
:class:`SweepCallback` ends the Tune run the way Tune's own SIGUSR1 does, leaving it restorable, and
the job ends with ``TrainingInterrupted`` (requeued on Slurm).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ray.tune import Callback

from ctsl_hpc.config import TuneConfig
from ctsl_hpc.experiment import Experiment, never, teacher_embedder, teacher_summary
from ctsl_hpc.track.runs import open_tracker
from ctsl_hpc.train.interface import TrainingInterrupted
from ctsl_hpc.train.recipe import recipe
from ctsl_hpc.tune.relay import PreemptionRelay, tune_dir
from ctsl_hpc.tune.schedulers import make_scheduler
from ctsl_hpc.tune.space import apply_params, scheduler_metric, search_space
from ctsl_hpc.tune.summary import best_of, trial_table, write_summary
from ctsl_hpc.tune.trial import SharedInputs, shared_inputs, train_trial, trial_key
from ctsl_hpc.workdir import Workdir

log = logging.getLogger(__name__)

EXPERIMENT = "search"
# Ray runs its workers at nice 15; the trials are the search's own work, at the priority of the job that runs it
TRIAL_NICENESS = "RAY_worker_niceness"


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
    trial to ``tune.max_t`` (FIFO) instead of ``tune.scheduler``. The scheduler and the searcher compare
    trials by their best ``tune.metric`` so far (:func:`~ctsl_hpc.tune.space.scheduler_metric`): the
    epoch a trial's model is selected at, not its last.
    """
    from ray import tune

    tc = exp.cfg.tune
    folder = tune_dir(exp.cfg, exp.workdir)
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, shared=shared), {"cpu": tc.cpus_per_trial, "gpu": tc.gpus_per_trial}
    )
    path = folder / name
    if tune.Tuner.can_restore(str(path)):
        log.info("continuing the search in %s", path)
        return tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=True)
    return tune.Tuner(
        trainable,
        param_space=param_space or search_space(tc),
        tune_config=tune.TuneConfig(
            metric=scheduler_metric(tc.metric), mode="max",
            scheduler=make_scheduler(tc, folder / f"{name}.scheduler.jsonl", early_stopping),
            search_alg=_search_alg(tc),
            num_samples=1 if param_space else tc.num_samples,
            reuse_actors=tc.reuse_actors,
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


def prepare_shared(exp: Experiment) -> SharedInputs:
    """Fill the embedding cache with the finished teacher's clean embeddings and read the noise pools: before
    any trial (the teacher is the graph's task before this one)."""
    cfg = exp.cfg
    if cfg.student.cache_teacher_embeddings and recipe(cfg.tune.variant, cfg).needs_teacher:
        teacher_embedder(exp, teacher_summary(exp).best_dir)  # computed here once, read by every trial
    return shared_inputs(exp)


def init_ray(address: str | None = None) -> None:
    """Connect to the cluster at ``address``, or start a private local Ray with this machine's CPUs."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault(TRIAL_NICENESS, "0")
    if not address:  # a private single-node Ray: its services on the loopback interface only
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, include_dashboard=False, log_to_driver=True)
    else:
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False)


@contextlib.contextmanager
def relayed(should_stop: Callable[[], bool], relay: PreemptionRelay, poll_s: float = 0.5) -> Iterator[None]:
    """Meanwhile, a stop request of the job (its signal flag) becomes the trials' ``STOP`` file."""
    done = threading.Event()

    def watch() -> None:
        while not done.wait(poll_s):
            if should_stop():
                log.warning("stop requested: asking the trials to checkpoint and stop")
                relay.request("the search's job was asked to stop")
                return

    watcher = threading.Thread(target=watch, name="stop-relay", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()


def run_search(exp: Experiment, should_stop: Callable[[], bool] = never, grace_s: float = 60.0):
    """Run (or continue) the search; Tune's ResultGrid. A stop request ends it restorable, with
    ``TrainingInterrupted`` (run the job again to continue)."""
    relay = PreemptionRelay(tune_dir(exp.cfg, exp.workdir))
    relay.clear()
    shared = prepare_shared(exp)
    tuner = make_tuner(exp, shared, callbacks=[SweepCallback(exp.workdir.root, grace_s)])
    with relayed(should_stop, relay):
        results = tuner.fit()
    if relay.requested():
        raise TrainingInterrupted(tune_dir(exp.cfg, exp.workdir) / EXPERIMENT)
    return results


def search_job(workdir: str | Path, address: str | None = None, should_stop: Callable[[], bool] | None = None) -> Path:
    """The search's task: Tune over the trials, then the best point, the trial table and its plot, and the final
    students' work directory (``<workdir>/final``, the base config with the best point): the graph's student and
    evaluation tasks after this one train and evaluate there. Resumable: a restored Tune experiment goes on."""
    exp = Experiment.reopen(workdir)
    os.umask(exp.cfg.file_mask)
    cfg = exp.cfg
    tracker = open_tracker(exp.workdir.root, cfg, system_metrics=False)
    if tracker is not None:  # the trials' runs are its children (a teacher reused from elsewhere opened none)
        tracker.parent(config=cfg, tags={"ctsl.corpus_fingerprint": exp.data.fingerprint})
    init_ray(address)
    results = run_search(exp, should_stop or never)
    best = best_of(results, cfg.tune.metric)
    rows = trial_table(results, cfg.tune.metric)
    best_path, csv_path, plot = write_summary(rows, best, cfg, exp.workdir)
    log.info("best %s = %.4f at epoch %d with %s", best["metric"], best["value"], best["epoch"], best["params"])
    if tracker is not None:
        parent = tracker.parent()
        parent.set_tags({f"tune.best.{k}": v for k, v in best["params"].items()} | {"tune.best.trial_id": best["trial_id"]})
        parent.log_metrics({"tune/best_dev": best["value"], "tune/trials": len(rows)}, step=0)
        for path in (best_path, csv_path, plot):
            parent.log_artifact(path, "tune")
        tracker.flush()
    return final_experiment(exp, best).workdir.root


def final_experiment(exp: Experiment, best: dict[str, Any]) -> Experiment:
    """``<workdir>/final``: the base config with the best point and ``tune.final_variants`` as its students,
    linked to the search's teacher, data and cache (the searched keys do not touch the clean teacher)."""
    final = exp.workdir.share_with_final()
    variants = exp.cfg.tune.final_variants or exp.cfg.student.variants
    cfg = apply_params(exp.cfg, best["params"], variants=list(variants), workdir=str(final.root))
    return Experiment.open(cfg, final.root)
