"""The training stages of one experiment, each a plain function of an :class:`Experiment`.

prepare data -> train the teacher -> train each student -> evaluate every model -> report. Every
training stage writes its outputs under the work directory and a ``DONE`` summary when finished,
so running it again reuses what is done and resumes what is not. The evaluation stage is in
:mod:`ctsl_hpc.experiment.evaluation`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ctsl_hpc.experiment.experiment import Experiment, RunSink, StopRequest, never
from ctsl_hpc.model import build_model, load_model
from ctsl_hpc.run_records import History
from ctsl_hpc.train.embed_cache import cached_teacher, live_teacher, teacher_embeddings
from ctsl_hpc.train.objective import TeacherEmbedder
from ctsl_hpc.train.recipe import recipe
from ctsl_hpc.train.trainer import Trainer, TrainingData, build_trainer
from ctsl_hpc.variants import TEACHER
from ctsl_hpc.workdir import RunDir, StageSummary

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ training


def teacher_trainer(exp: Experiment, sink: RunSink | None = None) -> Trainer:
    """The teacher (:data:`~ctsl_hpc.variants.TEACHER`) fine-tuned on clean speech from the pre-trained backbone."""
    cfg = exp.cfg
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model)
    data = TrainingData(exp.data.clean("train"), exp.data.clean("dev"), exp.data.stats)
    return build_trainer(model, recipe(TEACHER, cfg), data, cfg.train, exp.workdir.teacher, sink)


def train_teacher(exp: Experiment, sink: RunSink | None = None, should_stop: StopRequest = never) -> StageSummary:
    """Train the teacher (or resume it, or reuse the finished one)."""
    run = exp.workdir.teacher
    done = run.summary()
    if done is not None:
        return done
    return _finish(run, teacher_trainer(exp, sink).fit(should_stop))


def _finish(run: RunDir, history: History) -> StageSummary:
    return run.write_summary(history.best.epoch, history.dev_scores())


def teacher_summary(exp: Experiment) -> StageSummary:
    """The finished teacher's summary (students need it)."""
    summary = exp.workdir.teacher.summary()
    if summary is None:
        raise RuntimeError(f"train the teacher first: {exp.workdir.teacher.done} does not exist")
    return summary


def teacher_embedder(exp: Experiment, teacher_dir: Path) -> TeacherEmbedder:
    """The teacher's clean embeddings of a batch: from the cache (built on first use) or a live teacher."""
    teacher, _, _ = load_model(teacher_dir)
    if exp.cfg.student.cache_teacher_embeddings:
        table = teacher_embeddings(teacher, teacher_dir, exp.data.clean("train"), exp.workdir.cache, exp.cfg.eval.batch_size)
        return cached_teacher(table)
    return live_teacher(teacher)


def student_trainer(exp: Experiment, variant: str, run: RunDir, sink: RunSink | None = None) -> Trainer:
    """A copy of the finished teacher, to be adapted to noisy speech as ``variant`` prescribes, in ``run``.

    The one student set-up: the sweep's students and the Ray Tune trials both train through here.
    """
    cfg = exp.cfg
    teacher_dir = teacher_summary(exp).best_dir
    rec = recipe(variant, cfg)
    student, _, _ = load_model(teacher_dir)
    embed = teacher_embedder(exp, teacher_dir) if rec.needs_teacher else None
    data = TrainingData(exp.data.noisy("train", cfg.student.snr_db), exp.data.noisy("dev", cfg.student.snr_db),
                        exp.data.stats, embed)
    return build_trainer(student, rec, data, cfg.train, run, sink)


def train_student(
    exp: Experiment, variant: str, sink: RunSink | None = None, should_stop: StopRequest = never
) -> StageSummary:
    """The sweep's student ``variant`` in its own run folder; reuses a finished one."""
    run = exp.workdir.student(variant)
    done = run.summary()
    if done is not None:
        return done
    return _finish(run, student_trainer(exp, variant, run, sink).fit(should_stop))
