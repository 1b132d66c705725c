"""The sweep's jobs: each reopens the experiment and its tracked run, runs one stage, closes the run.

Every job is a plain function of the work directory (and a variant), so any backend can run it:
in this process, in a subprocess, as a Slurm job or from a Ray Tune driver. ``should_stop`` is the
job's stop request (a preemption signal, an approaching time limit); a training job answers it by
saving a resumable checkpoint and raising ``TrainingInterrupted``. Torch, the data and MLflow are
imported only when a job runs, so building and submitting a sweep stays light.

In a job of several ranks (``WORLD_SIZE`` > 1) rank 0 prepares what every rank reads (the demo
corpus, the waveform statistics, the noise folders checked) while the others wait: concurrently
they would race on the same files.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from ctsl_hpc.records import atomic_write_json
from ctsl_hpc.workdir import StageSummary

if TYPE_CHECKING:
    from ctsl_hpc.experiment import Experiment

log = logging.getLogger(__name__)

StopRequest = Callable[[], bool]
UsageMetrics = Callable[[Path], Mapping[str, float]]


def _open(workdir: str | Path, check_inputs: bool = False) -> Experiment:
    """The work directory's experiment (its umask applied); its inputs checked first where ``check_inputs``
    (the teacher's job: nothing trains before every input was read), and prepared once for all ranks."""
    from ctsl_hpc.experiment import Experiment
    from ctsl_hpc.train.engines.ddp import init_process_group
    from ctsl_hpc.train.ranks import TorchEnvironment

    exp = Experiment.reopen(workdir)
    os.umask(exp.cfg.umask)
    if TorchEnvironment.detect() and TorchEnvironment().world_size() > 1:
        import torch.distributed as dist

        env = init_process_group()
        if env.rank == 0:
            exp.data.check()
        dist.barrier()
        log.info("rank %d of %d ready on %s", env.rank, env.world_size, socket.gethostname())
    elif check_inputs:
        exp.data.check()
    return exp


def _tracker(exp: Experiment, system_metrics: bool | None = None):
    from ctsl_hpc.track.runs import open_tracker

    tracker = open_tracker(exp.workdir.root, exp.cfg, system_metrics)
    if tracker is not None:
        tracker.parent(config=exp.cfg, tags={"ctsl.corpus_fingerprint": exp.data.fingerprint})
    return tracker


def _close(run, exp: Experiment, summary: StageSummary) -> None:
    """Attach the resolved config and the best model directory, and end the run."""
    if run is None:
        return
    run.log_artifact(exp.workdir.config_file)
    run.log_artifacts(summary.best_dir, "model")
    run.finish("FINISHED")


def teacher_job(workdir: str | Path, should_stop: StopRequest | None = None) -> StageSummary:
    """Train (or resume, or reuse) the teacher."""
    from ctsl_hpc.experiment import never, run_key, train_teacher

    exp = _open(workdir, check_inputs=True)
    tracker = _tracker(exp)
    run = None if tracker is None else tracker.child(run_key("teacher"))
    summary = train_teacher(exp, sink=run, should_stop=should_stop or never)
    _close(run, exp, summary)
    return summary


def student_job(workdir: str | Path, variant: str, should_stop: StopRequest | None = None) -> StageSummary:
    """Train (or resume, or reuse) one student variant."""
    from ctsl_hpc.experiment import never, run_key, train_student

    exp = _open(workdir)
    tracker = _tracker(exp)
    run = None if tracker is None else tracker.child(run_key(variant))
    summary = train_student(exp, variant, sink=run, should_stop=should_stop or never)
    _close(run, exp, summary)
    return summary


def evaluate_job(
    workdir: str | Path, should_stop: StopRequest | None = None, usage: UsageMetrics | None = None
) -> Path:
    """Score every model, write the report, attach it (and ``usage(workdir)``, e.g. GPU-hours) to the
    parent run, end the run tree and mark the report complete. Scores are saved per variant: a
    stopped evaluation resumes where it was."""
    from ctsl_hpc.experiment import evaluate, never
    from ctsl_hpc.variants import TEACHER

    exp = _open(workdir)
    tracker = _tracker(exp)
    variants = [TEACHER, *exp.cfg.student.variants]
    reopened = []

    def sink_for(key: str):
        run = None if tracker is None else tracker.child(key, retag=False)  # its tags tell where and how it trained
        if run is not None:
            reopened.append(run)
        return run

    report_dir = evaluate(exp, variants, sink_for=sink_for, should_stop=should_stop or never)
    for run in reopened:  # reopened (RUNNING) for the test scores: end them again
        run.finish("FINISHED")
    if tracker is not None:
        parent = tracker.parent()
        parent.set_tags({"ctsl.code_snapshots": ",".join(exp.workdir.code_snapshots())})  # every code its jobs ran
        parent.log_artifacts(report_dir, "report")
        if usage is not None:
            parent.log_metrics(usage(exp.workdir.root), step=0)
        parent.finish("FINISHED")
        tracker.flush()
    atomic_write_json(exp.workdir.report.done, {"variants": variants})
    return report_dir
