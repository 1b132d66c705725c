"""The evaluation stage: every variant's selected checkpoints scored on the test set in every condition,
the development set embedded, and the report (Table 1, Table 2, plots) written.

Its own module because it is the only stage that needs SciPy's tests and Matplotlib: a training job
does not import them (about 1 s of CPU per process, on every rank).
"""

from __future__ import annotations

from pathlib import Path

from ctsl_hpc.data.corpus import label_distance_on_model_scale
from ctsl_hpc.evaluate import report
from ctsl_hpc.evaluate.embeddings import embedding_metrics
from ctsl_hpc.evaluate.protocol import select_checkpoints, test_groups
from ctsl_hpc.evaluate.score_table import DIAGNOSTICS, Scores
from ctsl_hpc.evaluate.scoring import score_models
from ctsl_hpc.evaluate.table2 import read_table2_json, write_table2
from ctsl_hpc.experiment.experiment import Experiment, SinkFactory, StopRequest, never
from ctsl_hpc.train.interface import TrainingInterrupted


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
