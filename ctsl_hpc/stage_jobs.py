"""The sweep's jobs: each reopens the experiment and its tracked run, runs one stage, closes the run.

Every job is a plain function of the work directory (and a variant), so any backend can run it:
in this process, in a subprocess, as a Slurm job or from a Ray Tune driver. ``should_stop`` is the
job's stop request (a preemption signal, an approaching time limit); a training job answers it by
saving a resumable checkpoint and raising ``TrainingInterrupted``. Torch, the data and MLflow are
imported only when a job runs, so building and submitting a sweep stays light.

Every job starts from what the prepare stage recorded (:mod:`ctsl_hpc.experiment.preparation`):
where it has not run (a stage started on its own), rank 0 of the job prepares while the other
ranks wait, as concurrently they would race on the same files. With ``data.stage_dir`` the job
reads the corpus from a copy on its node's local storage, removed at its end.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctsl_hpc.atomic_io import atomic_write_json
from ctsl_hpc.config import TEACHER_STAGE
from ctsl_hpc.workdir import StageSummary

if TYPE_CHECKING:
    from ctsl_hpc.experiment import Experiment

log = logging.getLogger(__name__)

StopRequest = Callable[[], bool]
PREPARE_KEY, EVAL_KEY = "prepare", "eval"  # the prepare stage's and the evaluation's job keys (training: run_key)
SEARCH_KEY = "tune"  # the Ray Tune search's job key
FINAL_PREFIX = "final/"  # a search's final students and evaluation: their job and run keys (final/student/RM)
NOISY_SPLITS = ("train", "dev")  # the noise pools a student (or trial) trains and selects on
UsageMetrics = Callable[[Path], Mapping[str, float]]


def run_key(variant: str) -> str:
    """The job and tracked-run key of a variant's training: the teacher stage's name, or ``student/<variant>``.

    Example:
        >>> run_key("original"), run_key("RM+TL")
        ('teacher', 'student/RM+TL')
    """
    from ctsl_hpc.variants import TEACHER

    return TEACHER_STAGE if variant == TEACHER else f"student/{variant}"


@contextlib.contextmanager
def _opened(workdir: str | Path) -> Iterator[Experiment]:
    """The work directory's experiment (its umask applied), prepared (once for all ranks), with the packed
    corpus staged on this node for the job where ``data.stage_dir`` says so."""
    from ctsl_hpc.experiment import Experiment
    from ctsl_hpc.experiment.preparation import ensure_prepared, staged_corpus
    from ctsl_hpc.train.engines.ddp import init_process_group
    from ctsl_hpc.train.ranks import TorchEnvironment

    exp = Experiment.reopen(workdir)
    os.umask(exp.cfg.file_mask)
    if TorchEnvironment.detect() and TorchEnvironment().world_size() > 1:
        import torch.distributed as dist

        env = init_process_group()
        if env.rank == 0:
            ensure_prepared(exp)
        dist.barrier()
        log.info("rank %d of %d ready on %s", env.rank, env.world_size, socket.gethostname())
    else:
        ensure_prepared(exp)
    with staged_corpus(exp):
        yield exp


def _tracker(exp: Experiment) -> tuple[Any, str]:
    """The run tree the job logs into and its keys' prefix. A search's final students and evaluation (its
    ``final/`` work directory) and a replicate's stages (``seed-<s>/``) log into their sweep's tree, as
    ``final/student/<variant>`` or ``seed-<s>/teacher``; the sweep's parent run holds the sweep's config.
    Only rank 0 of a multi-rank job tracks (None on the others): the trainer logs its metrics from rank 0, and
    the other ranks would open the store again, upload the same artifacts and import MLflow for nothing."""
    from ctsl_hpc.train.ranks import TorchEnvironment

    home, prefix = exp.workdir.home() or (exp.workdir, "")
    if TorchEnvironment.detect() and TorchEnvironment().global_rank() != 0:
        return None, prefix
    from ctsl_hpc.track.runs import open_tracker

    tracker = open_tracker(home.root, exp.cfg)
    if tracker is not None and prefix != FINAL_PREFIX:  # a search's parent run is the search's own
        config = exp.cfg if home is exp.workdir else home.read_config()
        tracker.parent(config=config, tags={"ctsl.corpus_fingerprint": exp.data.fingerprint})
    return tracker, prefix


def _model_run(tracker: Any, prefix: str, variant: str) -> Any:
    """The tracked run of ``variant``'s training (None without tracking), in the variant's chart colour."""
    if tracker is None:
        return None
    from ctsl_hpc.track.colours import RUN_COLOR_TAG, variant_colour

    return tracker.child(prefix + run_key(variant), tags={RUN_COLOR_TAG: variant_colour(variant)})


def dataset_inputs(exp: Experiment, noise: Sequence[str] = ()) -> list[dict]:
    """What a training run sees, as dataset inputs: the corpus and the noise pools of ``noise`` splits."""
    from ctsl_hpc.track.datasets import corpus_input, pool_input

    inputs = [corpus_input(exp.cfg, exp.data.splits, "train")]
    return inputs + [pool_input(s, exp.data.pool(s), exp.data.noise_dirs[s], s) for s in noise]


def _close(run, exp: Experiment, summary: StageSummary) -> None:
    """Attach the resolved config (its secrets masked) and the best model directory, and end the run."""
    if run is None:
        return
    run.log_artifact(exp.workdir.masked_config(exp.cfg))
    run.log_artifacts(summary.best_dir, "model")
    run.finish("FINISHED")


def prepare_job(workdir: str | Path, should_stop: StopRequest | None = None) -> dict:
    """Check every input once, with every CPU of the job (the head of the job graph, a CPU job on a cluster)."""
    from ctsl_hpc.experiment import Experiment
    from ctsl_hpc.experiment.preparation import prepare

    exp = Experiment.reopen(workdir)
    os.umask(exp.cfg.file_mask)
    return prepare(exp, should_stop=should_stop)


def teacher_job(workdir: str | Path, should_stop: StopRequest | None = None) -> StageSummary:
    """Train (or resume, or reuse) the teacher."""
    from ctsl_hpc.experiment import never, train_teacher
    from ctsl_hpc.variants import TEACHER

    with _opened(workdir) as exp:
        tracker, prefix = _tracker(exp)
        run = _model_run(tracker, prefix, TEACHER)
        if run is not None:
            run.log_inputs(dataset_inputs(exp))
        summary = train_teacher(exp, sink=run, should_stop=should_stop or never)
        _close(run, exp, summary)
    return summary


def student_job(workdir: str | Path, variant: str, should_stop: StopRequest | None = None) -> StageSummary:
    """Train (or resume, or reuse) one student variant."""
    from ctsl_hpc.experiment import never, train_student

    with _opened(workdir) as exp:
        tracker, prefix = _tracker(exp)
        run = _model_run(tracker, prefix, variant)
        if run is not None:
            run.log_inputs(dataset_inputs(exp, NOISY_SPLITS))
        summary = train_student(exp, variant, sink=run, should_stop=should_stop or never)
        _close(run, exp, summary)
    return summary


def evaluate_job(
    workdir: str | Path, should_stop: StopRequest | None = None, usage: UsageMetrics | None = None
) -> Path:
    """Score every model, write the report, register the selected models, describe the runs, attach
    the report (and ``usage(workdir)``, e.g. GPU-hours) to the parent run, end the run tree and mark
    the report complete. Scores are saved per variant: a stopped evaluation resumes where it was."""
    from ctsl_hpc.experiment import never
    from ctsl_hpc.experiment.evaluation import evaluate
    from ctsl_hpc.variants import TEACHER

    with _opened(workdir) as exp:
        tracker, prefix = _tracker(exp)
        home = (exp.workdir.home() or (exp.workdir, ""))[0]
        replicate = home is not exp.workdir and prefix != FINAL_PREFIX
        variants = [TEACHER, *exp.cfg.student.variants]
        reopened = {}

        def sink_for(variant: str):
            key = prefix + run_key(variant)
            run = None if tracker is None else tracker.child(key, retag=False)  # its tags tell where and how it trained
            if run is not None:
                reopened[key] = run
            return run

        report_dir = evaluate(exp, variants, sink_for=sink_for, should_stop=should_stop or never)
    if tracker is not None:
        publish_models(tracker, exp, variants, reopened, key_prefix=prefix)
        tracker.parent().log_artifacts(report_dir, prefix + "report")
        if not replicate:
            _end_sweep(tracker, home, exp.workdir.report, {prefix + run_key(v): exp.workdir.run(v) for v in variants},
                       usage, exp.cfg.name)
    atomic_write_json(exp.workdir.report.done, {"variants": variants})
    if replicate:
        combine_replicates(home, usage, tracker)
    return report_dir


def _end_sweep(tracker, home, report, runs: Mapping, usage: UsageMetrics | None, name: str) -> None:
    """The sweep's parent run: its code snapshots, usage (GPU-hours), a description with ``report``'s Table 1 and a
    line per stage of ``runs``; then the run tree ends."""
    metrics = dict(usage(home.root)) if usage is not None else {}
    parent = tracker.parent()
    parent.set_tags({"ctsl.code_snapshots": ",".join(home.code_snapshots())})  # every code its jobs ran
    if metrics:
        parent.log_metrics(metrics, step=0)
    parent.set_description(_note(name, home, report, runs, metrics))
    parent.finish("FINISHED")
    tracker.flush()


def _note(name: str, home, report, runs: Mapping, usage: Mapping[str, float]) -> str:
    from ctsl_hpc.track.notes import GPU_HOURS_PREFIX, stages, sweep_note

    return sweep_note(f"{name}: sweep {home.root.name}", report.table1_md.read_text(), stages(runs, report, usage),
                      usage.get(f"{GPU_HOURS_PREFIX}total"))


def combine_replicates(home, usage: UsageMetrics | None = None, tracker=None) -> Path | None:
    """Once every replicate of ``home`` has its report: the combined Table 1 and the averaged Table 2 in
    ``home``'s report (:mod:`ctsl_hpc.evaluate.replicates`), attached to the sweep's parent run, which then
    ends; None while a replicate is not done. Whichever replicate's evaluation ends last builds it (the same
    files whoever does)."""
    from ctsl_hpc.evaluate.replicates import write_combined
    from ctsl_hpc.variants import TEACHER

    cfg = home.read_config()
    replicates = {seed: home.replicate(seed) for seed in cfg.seeds}
    if not all(r.report.done.is_file() for r in replicates.values()):
        return None
    write_combined({seed: r.report.path for seed, r in replicates.items()}, home.report.path, cfg.eval.alpha)
    if tracker is not None:
        tracker.parent().log_artifacts(home.report.path, "report")
        runs = {f"{r.root.name}/{run_key(v)}": r.run(v) for r in replicates.values()
                for v in (TEACHER, *cfg.student.variants)}
        _end_sweep(tracker, home, home.report, runs, usage, cfg.name)
    atomic_write_json(home.report.done, {"seeds": list(cfg.seeds)})
    return home.report.path


def publish_models(tracker, exp: Experiment, variants: Sequence[str], runs: Mapping, key_prefix: str = "") -> None:
    """Per variant's run: the test noise it was scored on, its selected model directories registered
    (``<experiment>-<variant>``, a version per selected epoch), its description; then end the run.
    ``runs`` holds the runs already open (by key); the others are reopened."""
    from ctsl_hpc.evaluate.report import read_table1
    from ctsl_hpc.experiment.evaluation import selected_models
    from ctsl_hpc.track.datasets import pool_input
    from ctsl_hpc.track.notes import model_note
    from ctsl_hpc.track.registry import EPOCH_TAG, SCORE_TAG, SWEEP_TAG, model_name

    models = selected_models(exp, list(variants))
    table1 = read_table1(exp.workdir.report.table1_json)
    test_noise = pool_input("test", exp.data.pool("test"), exp.data.noise_dirs["test"], "test")
    for variant in variants:
        key = key_prefix + run_key(variant)
        run = runs.get(key) or tracker.child(key)
        scores = exp.workdir.run(variant).summary().dev_scores
        run.log_inputs([test_noise])
        for epoch, model_dir in models[variant].items():
            artifact = f"models/{model_dir.name}"
            run.log_artifacts(model_dir, artifact)
            tags = {EPOCH_TAG: epoch, SCORE_TAG: f"{scores[epoch]:.6f}", SWEEP_TAG: exp.workdir.root,
                    "variant": variant}  # fmt: skip
            run.register_model(model_name(tracker.experiment, variant), artifact, tags, _model_description(variant))
        run.set_description(model_note(variant, exp.cfg, {e: scores[e] for e in models[variant]}, table1))
        run.finish("FINISHED")


def _model_description(variant: str) -> str:
    return (
        f"The {variant} models of this experiment's sweeps: each version is a ctsl_hpc model directory "
        "(ctsl_hpc.model.load_model). Alias `best`: the highest development CCC. "
        "Predict: `python -m ctsl_hpc.launch predict --model models:/<this name>@best <audio files>`."
    )


def sweep_description(
    exp: Experiment, variants: Sequence[str], usage: Mapping[str, float], key_prefix: str = ""
) -> str:
    """The sweep run's description: Table 1 of the report and a line per stage (status, GPU-hours)."""
    runs = {key_prefix + run_key(v): exp.workdir.run(v) for v in variants}
    return _note(exp.cfg.name, exp.workdir, exp.workdir.report, runs, usage)
