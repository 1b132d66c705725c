"""Ray Tune search over lambda_TL, lambda_CL and the training-noise budget, with ASHA early stopping.

The search space, scheduler and resources come from ``cfg.tune`` (:class:`ctsl_hpc.config.TuneConfig`).
:func:`run_sweep` goes from nothing to the report: teacher (trained once) -> the teacher's clean
embeddings (computed once, cached in the work directory) -> the noise pools (read once, shared through
Ray's object store) -> the search -> ``best_config.yaml`` -> the final students trained with the best
setting and evaluated with the full protocol (Table 1/2) in ``<workdir>/final``.

A trial (:func:`train_trial`) is the core's student training (:func:`ctsl_hpc.train.loop.fit`) in
``<workdir>/tune/trials/<trial id>``: it reports every epoch to Tune *after* the epoch's checkpoint is on
disk, with a small Tune checkpoint that records the epoch. Resume (:func:`make_tuner` on an existing
experiment -> ``Tuner.restore``) restarts each unfinished or errored trial in the same run directory;
``fit`` continues from its newest complete checkpoint (mid-epoch after a preemption), the epochs Tune
never saw are reported first, so Tune, ASHA and the trial agree and the result equals an uninterrupted
run. Each trial logs to its own MLflow child run ``trial/<trial id>`` (run ids persisted by the Tracker:
no duplicates after a restore).

Ray does not forward signals to trials: the driver turns SIGUSR2 into a flag file
(:class:`PreemptionRelay`) that every trial's ``should_stop`` reads; trials save and stop, then the
driver ends the Tune run the way Tune's own SIGUSR1 does, leaving the experiment restorable.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from ray.tune import Callback

from ctsl_hpc import pipeline
from ctsl_hpc.config import ExperimentConfig, TuneConfig, config_from_dict
from ctsl_hpc.data.corpus import ATTRIBUTES
from ctsl_hpc.data.noise import NoisePool

log = logging.getLogger(__name__)

EXPERIMENT = "search"
BEST_CONFIG = "best_config.yaml"
TRIALS_CSV = "trials.csv"
SUMMARY_PLOT = "tune_summary.png"
TRIAL_STATE = "trial.json"
FINAL_DIR = "final"
INTERRUPTED = 3  # exit status of a sweep stopped by a preemption request (run it again to continue)
SEARCHED = ("lambda_tl", "lambda_cl", "noise_minutes")


# ------------------------------------------------------------------------------ search space


def search_space(tc: TuneConfig) -> dict[str, Any]:
    """Ray Tune's parameter space: log-uniform loss weights, a choice of noise-pool minutes."""
    from ray import tune

    return {
        "lambda_tl": tune.loguniform(*tc.lambda_tl),
        "lambda_cl": tune.loguniform(*tc.lambda_cl),
        "noise_minutes": tune.choice(list(tc.noise_minutes)),
    }


def overrides_for(params: dict[str, Any], epochs: int | None = None) -> list[str]:
    """Dotted config overrides that apply a trial's parameters (and optionally its epoch budget)."""
    out = [
        f"student.lambda_tl={float(params['lambda_tl'])!r}",
        f"student.lambda_cl={float(params['lambda_cl'])!r}",
        f"noise.minutes={float(params['noise_minutes'])!r}",
    ]
    if epochs is not None:
        out.append(f"student.epochs={epochs}")
    return out


def apply_params(
    cfg: ExperimentConfig,
    params: dict[str, Any],
    epochs: int | None = None,
    variants: list[str] | None = None,
    workdir: str | None = None,
) -> ExperimentConfig:
    """``cfg`` with a trial's loss weights and noise minutes (and student epochs/variants, workdir)."""
    values = cfg.to_dict()
    values["student"].update(lambda_tl=float(params["lambda_tl"]), lambda_cl=float(params["lambda_cl"]))
    values["noise"]["minutes"] = float(params["noise_minutes"])
    if epochs is not None:
        values["student"]["epochs"] = epochs
    if variants is not None:
        values["student"]["variants"] = list(variants)
    if workdir is not None:
        values["workdir"] = workdir
    return config_from_dict(values)


def tune_dir(ws: pipeline.Workspace) -> Path:
    """Where the Tune experiment lives: ``tune.storage_path`` (shared storage) or ``<workdir>/tune``."""
    return Path(ws.cfg.tune.storage_path or ws.root / "tune").resolve()


def trial_run_dir(ws: pipeline.Workspace, trial_id: str) -> Path:
    """The trial's training directory (checkpoints, epochs, history), keyed by Tune's trial id."""
    return ws.stage("tune", "trials", trial_id)


# ------------------------------------------------------------------------------ preemption relay


class PreemptionRelay:
    """A stop request in the work directory: the driver writes it, every trial's ``should_stop`` reads it."""

    def __init__(self, directory: Path):
        self.path = Path(directory) / "STOP"

    def request(self, reason: str = "stop requested") -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(f"{reason} at {time.strftime('%Y-%m-%d %H:%M:%S')}\n")

    def requested(self) -> bool:
        return self.path.exists()

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)

    def install(self, signum: int = signal.SIGUSR2) -> None:
        """Turn ``signum`` (Slurm's preemption warning) into a stop request for the trials."""

        def handler(sig: int, _frame: Any) -> None:
            log.warning("signal %d: asking the trials to checkpoint and stop", sig)
            self.request(f"signal {sig}")

        signal.signal(signum, handler)


# ------------------------------------------------------------------------------ the trial


@dataclass
class SharedInputs:
    """What every trial reads, put once into Ray's object store (fetched once per node)."""

    workdir: str
    train_noise: np.ndarray  # the training pool, read up to the largest noise_minutes choice
    dev_noise: np.ndarray  # the development pool of the base config (the same for every trial)
    sample_rate: int


def _epoch_metrics(record: dict[str, Any]) -> dict[str, float]:
    metrics = {"epoch": int(record["epoch"]), "dev/ccc_mean": float(record["dev_score"])}
    metrics.update({f"dev/ccc/{a}": float(c) for a, c in zip(ATTRIBUTES, record["dev_ccc"], strict=True)})
    metrics.update({f"loss/{k}": float(v) for k, v in record["losses"].items()})
    return metrics


def _report(record: dict[str, Any], run_dir: Path) -> None:
    """Send one epoch to Tune with a checkpoint naming it (the weights stay in ``run_dir``)."""
    from ray import tune

    with tempfile.TemporaryDirectory(prefix="ctsl-tune-") as tmp:
        state = {"epoch": int(record["epoch"]), "run_dir": str(run_dir)}
        (Path(tmp) / TRIAL_STATE).write_text(json.dumps(state))
        tune.report(_epoch_metrics(record), checkpoint=tune.Checkpoint.from_directory(tmp))


def _reported_epoch() -> int:
    """The last epoch Tune holds a checkpoint of (0 for a fresh trial)."""
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as path:
        return int(json.loads((Path(path) / TRIAL_STATE).read_text())["epoch"])


def _catch_up(run_dir: Path, reported: int) -> None:
    """Report the epochs the trial finished but Tune never recorded (the driver died in between)."""
    from ctsl_hpc.train import checkpoint as ckpt

    latest = ckpt.latest_complete_checkpoint(run_dir)
    if latest is None:
        return
    for record in ckpt.load_trainer_state(latest)["history"]:
        if record["epoch"] > reported:
            _report(record, run_dir)


def train_trial(params: dict[str, Any], shared: SharedInputs) -> None:
    """One Tune trial: the student variant ``tune.variant`` with the trial's weights and noise budget."""
    import torch
    from ray import tune

    from ctsl_hpc.launch.jobs import open_workspace
    from ctsl_hpc.model import load_model
    from ctsl_hpc.train.embed_cache import cached_teacher, live_teacher, teacher_embeddings
    from ctsl_hpc.train.loop import TrainingInterrupted, fit
    from ctsl_hpc.train.variants import recipe

    base = open_workspace(shared.workdir)
    relay = PreemptionRelay(tune_dir(base))
    trial_id = tune.get_context().get_trial_id()
    run_dir = trial_run_dir(base, trial_id)
    if relay.requested():  # a trial started while the sweep is being preempted: leave it for the rerun
        raise TrainingInterrupted(run_dir)
    torch.set_num_threads(max(1, int(base.cfg.tune.cpus_per_trial)))
    tc = base.cfg.tune
    cfg = apply_params(base.cfg, params, epochs=tc.max_t)
    ws = pipeline.Workspace(base.root, cfg)  # same data, stats, teacher and cache; another student config
    cap = int(round(float(params["noise_minutes"]) * 60 * shared.sample_rate))
    ws.data.set_pool("train", NoisePool(shared.train_noise[:cap], shared.sample_rate))
    ws.data.set_pool("dev", NoisePool(shared.dev_noise, shared.sample_rate))

    reported = _reported_epoch()
    _catch_up(run_dir, reported)
    teacher_dir = Path(pipeline.stage_summary(ws.teacher_dir)["best_dir"])
    rec = recipe(tc.variant, cfg)
    student, _, _ = load_model(teacher_dir)
    embed = None
    if rec.needs_teacher:
        teacher, _, _ = load_model(teacher_dir)
        if cfg.student.cache_teacher_embeddings:  # the driver filled the cache before any trial started
            table = teacher_embeddings(teacher, teacher_dir, ws.data.clean("train"), ws.stage("cache"), cfg.eval.batch_size)
            embed = cached_teacher(table)
        else:
            embed = live_teacher(teacher)
    run = _trial_run(base, trial_id, params)
    fit(
        student, rec, ws.data.noisy("train", cfg.student.snr_db), ws.data.noisy("dev", cfg.student.snr_db),
        cfg.train, run_dir, stats=ws.data.stats, teacher_embed=embed, sink=run, should_stop=relay.requested,
        on_epoch_end=lambda record, _ckpt: _report(dataclasses.asdict(record), run_dir),
    )


def trial_key(trial_id: str) -> str:
    """The trial's MLflow child-run key."""
    return f"trial/{trial_id}"


def _tracker(ws: pipeline.Workspace, system_metrics: bool | None = None):
    if not ws.cfg.tracking.enabled:
        return None
    from ctsl_hpc.track import Tracker

    cfg = ws.cfg
    return Tracker(ws.root, cfg.tracking.uri, cfg.tracking.experiment or cfg.name, system_metrics=system_metrics)


def _trial_run(ws: pipeline.Workspace, trial_id: str, params: dict[str, Any]):
    tracker = _tracker(ws)
    if tracker is None:
        return None
    run = tracker.child(trial_key(trial_id), tags={"tune.trial_id": trial_id, "tune.variant": ws.cfg.tune.variant})
    run.log_params({k: params[k] for k in SEARCHED})
    return run


# ------------------------------------------------------------------------------ the driver


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
            from ctsl_hpc.launch.jobs import open_workspace

            self._tracker = _tracker(open_workspace(self.workdir), system_metrics=False) or False
        if self._tracker and trial_key(trial.trial_id) in self._tracker.run_ids():
            self._tracker.child(trial_key(trial.trial_id)).finish(status)

    def _relay(self) -> PreemptionRelay:
        if self._stop is None:
            from ctsl_hpc.launch.jobs import open_workspace

            self._stop = PreemptionRelay(tune_dir(open_workspace(self.workdir)))
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
    ws: pipeline.Workspace,
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

    tc = ws.cfg.tune
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, shared=shared), {"cpu": tc.cpus_per_trial, "gpu": tc.gpus_per_trial}
    )
    path = tune_dir(ws) / name
    if tune.Tuner.can_restore(str(path)):
        log.info("continuing the search in %s", path)
        return tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=True)
    scheduler = ASHAScheduler(
        time_attr="epoch", max_t=tc.max_t, grace_period=tc.grace_period, reduction_factor=tc.reduction_factor
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
            storage_path=str(tune_dir(ws)),
            callbacks=list(callbacks),
            failure_config=tune.FailureConfig(max_failures=0),  # errored trials resume at the next run
            # all kept: a trial checkpoint is a 50-byte pointer (num_to_keep would force a state snapshot per save)
            checkpoint_config=tune.CheckpointConfig(),
            verbose=1,
        ),
    )


def prepare_shared(ws: pipeline.Workspace, should_stop: Callable[[], bool] = lambda: False) -> SharedInputs:
    """Train the teacher (once), fill the embedding cache, read the noise pools: before any trial."""
    from ctsl_hpc.launch import jobs
    from ctsl_hpc.model import load_model
    from ctsl_hpc.train.embed_cache import teacher_embeddings
    from ctsl_hpc.train.variants import recipe

    cfg = ws.cfg
    jobs.teacher_job(ws.root, should_stop=should_stop)
    teacher_dir = Path(pipeline.stage_summary(ws.teacher_dir)["best_dir"])
    if cfg.student.cache_teacher_embeddings and recipe(cfg.tune.variant, cfg).needs_teacher:
        teacher, _, _ = load_model(teacher_dir)
        teacher_embeddings(teacher, teacher_dir, ws.data.clean("train"), ws.stage("cache"), cfg.eval.batch_size)
    d = cfg.data
    largest = max(cfg.tune.noise_minutes)
    train_pool = NoisePool.from_directory(ws.data.noise_dirs["train"], d.sample_rate, largest, min_seconds=d.max_seconds)
    short = [m for m in cfg.tune.noise_minutes if m * 60 > train_pool.seconds + 1e-6]
    if short:
        log.warning(
            "the training noise folder holds %.2f min: tune.noise_minutes choices %s all use the whole pool",
            train_pool.seconds / 60, short,
        )
    return SharedInputs(str(ws.root), train_pool.signal, ws.data.pool("dev").signal, d.sample_rate)


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


def run_search(ws: pipeline.Workspace, grace_s: float = 60.0):
    """Run (or continue) the search; returns Tune's ResultGrid, or None if a stop request ended it.

    From here on SIGUSR2 (Slurm's preemption warning) asks the teacher or the trials to save and stop.
    """
    from ctsl_hpc.train.loop import TrainingInterrupted

    relay = PreemptionRelay(tune_dir(ws))
    relay.clear()
    relay.install()
    try:
        shared = prepare_shared(ws, should_stop=relay.requested)
    except TrainingInterrupted:
        log.warning("the teacher was stopped on request; run the same command again to continue")
        return None
    tuner = make_tuner(ws, shared, callbacks=[SweepCallback(ws.root, grace_s)])
    results = tuner.fit()
    if relay.requested():
        log.warning("the search was stopped on request; run the same command again to continue")
        return None
    return results


def best_of(results, metric: str) -> dict[str, Any]:
    """The best (trial, epoch) of the search by ``metric`` (higher is better)."""
    best = results.get_best_result(metric, mode="max", scope="all")
    frame = best.metrics_dataframe
    row = frame.loc[frame[metric].idxmax()]
    return {
        "params": {k: float(best.config[k]) for k in SEARCHED},
        "trial_id": best.metrics["trial_id"],
        "metric": metric,
        "value": float(row[metric]),
        "epoch": int(row["epoch"]),
    }


def trial_table(results, metric: str) -> list[dict[str, Any]]:
    """Per trial: its parameters, epochs run and best ``metric``."""
    rows = []
    for result in results:
        frame = result.metrics_dataframe
        if frame is None or metric not in frame:
            continue
        rows.append(
            {
                "trial_id": result.metrics["trial_id"],
                **{k: float(result.config[k]) for k in SEARCHED},
                "epochs": int(frame["epoch"].max()),
                "best": float(frame[metric].max()),
            }
        )
    return sorted(rows, key=lambda r: r["trial_id"])


def write_summary(rows: list[dict[str, Any]], best: dict[str, Any], ws: pipeline.Workspace) -> tuple[Path, Path, Path]:
    """``best_config.yaml`` (with the overrides that reproduce it), ``trials.csv`` and the summary plot."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best_path = ws.root / BEST_CONFIG
    best_doc = dict(best, overrides=overrides_for(best["params"]), variant=ws.cfg.tune.variant)
    best_path.write_text(yaml.safe_dump(best_doc, sort_keys=False))
    csv_path = ws.root / TRIALS_CSV
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), sharey=True)
    for ax, key, label in zip(axes, SEARCHED, ("lambda_TL", "lambda_CL", "noise pool (minutes)"), strict=True):
        x = [r[key] for r in rows]
        sc = ax.scatter(x, [r["best"] for r in rows], c=[r["epochs"] for r in rows], cmap="viridis", vmin=1)
        ax.scatter([best["params"][key]], [best["value"]], marker="*", s=200, c="red", label="best")
        ax.set_xscale("log")
        ax.set_xlabel(label)
    axes[0].set_ylabel(f"best {best['metric']} (development, noisy)")
    axes[0].legend(loc="lower left")
    fig.colorbar(sc, ax=axes, label="epochs run (ASHA)")
    plot = ws.root / SUMMARY_PLOT
    fig.savefig(plot, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return best_path, csv_path, plot


def final_workspace(ws: pipeline.Workspace, best: dict[str, Any]) -> pipeline.Workspace:
    """``<workdir>/final``: the base config with the best setting, sharing the teacher and the data.

    The tuned keys (student loss weights, noise minutes) do not touch the clean teacher, so its
    directory, the corpus and the embedding cache are linked rather than trained or built again.
    """
    root = ws.root / FINAL_DIR
    variants = ws.cfg.tune.final_variants or ws.cfg.student.variants
    cfg = apply_params(ws.cfg, best["params"], variants=list(variants), workdir=str(root))
    root.mkdir(parents=True, exist_ok=True)
    for name in ("teacher", "data", "cache"):
        link = root / name
        if not link.exists() and (ws.root / name).exists():
            link.symlink_to(ws.root / name, target_is_directory=True)
    stats = ws.root / "waveform_stats.json"
    if stats.is_file() and not (root / stats.name).exists():
        (root / stats.name).write_bytes(stats.read_bytes())
    return pipeline.Workspace.open(cfg, root)


def train_and_evaluate_final(ws: pipeline.Workspace, best: dict[str, Any], tracker) -> Path:
    """Train the final students with the best setting and run the full evaluation protocol."""
    final = final_workspace(ws, best)

    def sink(key: str):
        return None if tracker is None else tracker.child(f"final/{key}")

    variants = final.cfg.student.variants
    for variant in variants:
        run = sink(f"student/{variant}")
        pipeline.train_student(final, variant, sink=run)
        if run is not None:
            run.finish("FINISHED")
    return pipeline.evaluate(final, ["original", *variants], sink_for=sink)


def run_sweep(cfg: ExperimentConfig, address: str | None = None) -> SweepResult | None:
    """``sweep --tune``: teacher, search, best config, final students and report; resumable.

    Returns None when a stop request (SIGUSR2) ended the search early: running it again continues.
    """
    ws = pipeline.Workspace.open(cfg)
    tracker = _tracker(ws, system_metrics=False)
    parent = None if tracker is None else tracker.parent(config=cfg.to_dict())
    init_ray(address)
    results = run_search(ws)
    if results is None:
        return None
    best = best_of(results, cfg.tune.metric)
    rows = trial_table(results, cfg.tune.metric)
    best_path, csv_path, plot = write_summary(rows, best, ws)
    log.info("best %s = %.4f at epoch %d with %s", best["metric"], best["value"], best["epoch"], best["params"])
    if parent is not None:
        parent.set_tags({f"tune.best.{k}": v for k, v in best["params"].items()} | {"tune.best.trial_id": best["trial_id"]})
        parent.log_metrics({"tune/best_dev": best["value"], "tune/trials": len(rows)}, step=0)
        for path in (best_path, csv_path, plot):
            parent.log_artifact(path, "tune")
    report_dir = train_and_evaluate_final(ws, best, tracker)
    if parent is not None:
        parent.log_artifacts(report_dir, "final_report")
        tracker.flush()
    return SweepResult(best, best_path, csv_path, plot, report_dir)


def read_best_config(workdir: str | Path) -> dict[str, Any]:
    """The ``best_config.yaml`` a finished search wrote into ``workdir``."""
    path = Path(workdir) / BEST_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: the search in {workdir} has not finished")
    return yaml.safe_load(path.read_text())

