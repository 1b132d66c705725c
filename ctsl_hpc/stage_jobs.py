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
from typing import TYPE_CHECKING

from ctsl_hpc.atomic_io import atomic_write_json
from ctsl_hpc.config import TEACHER_STAGE
from ctsl_hpc.workdir import StageSummary

if TYPE_CHECKING:
    from ctsl_hpc.experiment import Experiment

log = logging.getLogger(__name__)

StopRequest = Callable[[], bool]
PREPARE_KEY, EVAL_KEY = "prepare", "eval"  # the prepare stage's and the evaluation's job keys (training: run_key)
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


def _tracker(exp: Experiment, system_metrics: bool | None = None):
    from ctsl_hpc.track.runs import open_tracker

    tracker = open_tracker(exp.workdir.root, exp.cfg, system_metrics)
    if tracker is not None:
        tracker.parent(config=exp.cfg, tags={"ctsl.corpus_fingerprint": exp.data.fingerprint})
    return tracker


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
        tracker = _tracker(exp)
        run = None if tracker is None else tracker.child(run_key(TEACHER))
        if run is not None:
            run.log_inputs(dataset_inputs(exp))
        summary = train_teacher(exp, sink=run, should_stop=should_stop or never)
        _close(run, exp, summary)
    return summary


def student_job(workdir: str | Path, variant: str, should_stop: StopRequest | None = None) -> StageSummary:
    """Train (or resume, or reuse) one student variant."""
    from ctsl_hpc.experiment import never, train_student

    with _opened(workdir) as exp:
        tracker = _tracker(exp)
        run = None if tracker is None else tracker.child(run_key(variant))
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
    from ctsl_hpc.experiment import evaluate, never
    from ctsl_hpc.variants import TEACHER

    with _opened(workdir) as exp:
        tracker = _tracker(exp)
        variants = [TEACHER, *exp.cfg.student.variants]
        reopened = {}

        def sink_for(variant: str):
            key = run_key(variant)
            run = None if tracker is None else tracker.child(key, retag=False)  # its tags tell where and how it trained
            if run is not None:
                reopened[key] = run
            return run

        report_dir = evaluate(exp, variants, sink_for=sink_for, should_stop=should_stop or never)
    if tracker is not None:
        publish_models(tracker, exp, variants, reopened)
        metrics = dict(usage(exp.workdir.root)) if usage is not None else {}
        parent = tracker.parent()
        parent.set_tags({"ctsl.code_snapshots": ",".join(exp.workdir.code_snapshots())})  # every code its jobs ran
        parent.log_artifacts(report_dir, "report")
        if metrics:
            parent.log_metrics(metrics, step=0)
        parent.set_description(sweep_description(exp, variants, metrics))
        parent.finish("FINISHED")
        tracker.flush()
    atomic_write_json(exp.workdir.report.done, {"variants": variants})
    return report_dir


def publish_models(tracker, exp: Experiment, variants: Sequence[str], runs: Mapping, key_prefix: str = "") -> None:
    """Per variant's run: the test noise it was scored on, its selected model directories registered
    (``<experiment>-<variant>``, a version per selected epoch), its description; then end the run.
    ``runs`` holds the runs already open (by key); the others are reopened."""
    from ctsl_hpc.evaluate.report import read_table1
    from ctsl_hpc.experiment import selected_models
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
    from ctsl_hpc.track.notes import GPU_HOURS_PREFIX, stages, sweep_note

    files = exp.workdir.report
    runs = {key_prefix + run_key(v): exp.workdir.run(v) for v in variants}
    title = f"{exp.cfg.name}: sweep {exp.workdir.root.name}"
    total = usage.get(f"{GPU_HOURS_PREFIX}total")
    return sweep_note(title, files.table1_md.read_text(), stages(runs, files, usage), total)
