"""The stages of one experiment, each a plain function of an :class:`Experiment`.

prepare data -> train the teacher -> train each student -> evaluate every model -> report. Every
training stage writes its outputs under the work directory and a ``DONE`` summary when finished,
so running it again reuses what is done and resumes what is not.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ctsl_hpc.data.corpus import label_distance_on_model_scale
from ctsl_hpc.evaluate import report
from ctsl_hpc.evaluate.embeddings import embedding_metrics
from ctsl_hpc.evaluate.protocol import select_checkpoints, test_groups
from ctsl_hpc.evaluate.score_table import DIAGNOSTICS, Scores
from ctsl_hpc.evaluate.scoring import score_models
from ctsl_hpc.evaluate.table2 import read_table2_json, write_table2
from ctsl_hpc.experiment.experiment import Experiment, RunSink, SinkFactory, StopRequest, never
from ctsl_hpc.model import build_model, load_model
from ctsl_hpc.run_records import History
from ctsl_hpc.train.embed_cache import cached_teacher, live_teacher, teacher_embeddings
from ctsl_hpc.train.objective import TeacherEmbedder
from ctsl_hpc.train.recipe import recipe
from ctsl_hpc.train.trainer import Trainer, TrainingData, TrainingInterrupted, build_trainer
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


# ------------------------------------------------------------------------------ evaluation


def selected_models(exp: Experiment, variants: list[str]) -> dict[str, dict[int, Path]]:
    """Per variant, the ``eval.top_k`` best non-consecutive development epochs and their weights."""
    chosen: dict[str, dict[int, Path]] = {}
    for variant in variants:
        run = exp.workdir.run(variant)
        summary = run.summary()
        if summary is None:
            raise RuntimeError(f"{variant} has not finished training ({run.done} does not exist)")
        epochs = select_checkpoints(summary.dev_scores, exp.cfg.eval.top_k)
        chosen[variant] = {e: run.epoch_dir(e) for e in epochs}
    return chosen


def evaluate(
    exp: Experiment, variants: list[str], sink_for: SinkFactory = lambda _: None, should_stop: StopRequest = never
) -> Path:
    """Score every variant's selected models, embed the development set, write the report.

    Scores are saved after each variant; a stop request there raises ``TrainingInterrupted`` and a
    rerun resumes with the next variant.
    """
    cfg = exp.cfg
    files = exp.workdir.report
    files.path.mkdir(parents=True, exist_ok=True)
    models = selected_models(exp, variants)
    scores = Scores.read_csv(files.scores_csv) if files.scores_csv.is_file() else Scores()
    test_set = exp.data.clean("test")
    groups = test_groups(len(test_set), cfg.eval.n_groups, cfg.eval.groups, cfg.seed)
    real_noisy = exp.data.recorded("test")
    for variant in variants:  # one variant at a time, saved after each: a resumed evaluation skips it
        score_models(
            {variant: models[variant]}, test_set, exp.data.pool("test"), groups, cfg.eval.groups,
            cfg.noise.snr_mode, cfg.eval.batch_size, real_noisy, scores, save_to=files,
        )
        scores.write_csv(files.scores_csv)
        if should_stop():
            raise TrainingInterrupted(files.scores_csv)
    best = {v: next(iter(m.values())) for v, m in models.items()}
    emb, projection = embedding_metrics(
        best, exp.data.clean("dev"), exp.data.pool("dev"), cfg.noise.snr_mode, label_distance_on_model_scale(cfg.student.margin),
        cfg.student.temperature, cfg.eval.batch_size, cfg.seed, exp.data.recorded("dev"),
    )
    write_table2(emb, files.path)
    report.save_projection(*projection, files.projection_npz)
    report.build_report(files.path, alpha=cfg.eval.alpha)
    _log_evaluation(exp, variants, sink_for)
    return files.path


def _log_evaluation(exp: Experiment, variants: list[str], sink_for: SinkFactory) -> None:
    """Send each variant's mean test CCC, Pearson r and bias and its embedding metrics to its tracked run
    (undefined values are left out)."""
    files = exp.workdir.report
    table1 = report.read_table1(files.table1_json)
    table2 = read_table2_json(files.table2_json)
    for variant in variants:
        sink = sink_for(variant)
        if sink is None:
            continue
        epoch = max(exp.workdir.run(variant).summary().dev_scores)
        metrics = {}
        for condition, attributes in table1[variant].items():
            for attribute, cell in attributes.items():
                metrics[f"ccc/{condition}/{attribute}"] = cell["mean"]
                metrics.update({f"{d}/{condition}/{attribute}": cell[d]["mean"] for d in DIAGNOSTICS})
        metrics.update({f"emb/{c}/{k}": v for c, values in table2.get(variant, {}).items() for k, v in values.items()})
        sink.log_metrics({k: v for k, v in metrics.items() if v is not None}, step=epoch)
