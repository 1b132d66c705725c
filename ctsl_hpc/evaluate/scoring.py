"""Score trained models on the test conditions: the per-group metrics behind Table 1.

For each model and condition, the test set is contaminated with held-out test noise at the
condition's SNR (one noisy copy per group seed), or read from a real noisy recording folder
(``eval.noisy_roots``); CCC, Pearson r and mean bias per attribute are computed over each group's
utterances, from the predictions that are saved with them (:mod:`ctsl_hpc.evaluate.predictions`).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ctsl_hpc.data.batching import UtteranceSet
from ctsl_hpc.data.conditions import CLEAN, CONDITIONS, SNR_OF
from ctsl_hpc.data.noise import NoisePool
from ctsl_hpc.evaluate.metrics import to_label_scale
from ctsl_hpc.evaluate.predictions import ModelPredictions, group_metrics, load_predictions, save_predictions
from ctsl_hpc.evaluate.protocol import GroupSpec, groups_for_condition
from ctsl_hpc.evaluate.score_table import Scores
from ctsl_hpc.model import load_model
from ctsl_hpc.train.inference import predict
from ctsl_hpc.workdir import ReportFiles

log = logging.getLogger(__name__)


def condition_set(
    test_set: UtteranceSet,
    condition: str,
    noise_seed: int,
    pool: NoisePool,
    snr_mode: str,
    real_noisy: UtteranceSet | None = None,
) -> UtteranceSet:
    """The test set as heard under ``condition`` (a real noisy recording set when one is given)."""
    if condition == CLEAN:
        return test_set
    if real_noisy is not None:
        return real_noisy
    view = copy.copy(test_set)
    view.noise, view.snr_db, view.snr_mode = pool, SNR_OF[condition], snr_mode
    view.seed, view.copy_index = noise_seed, 0
    return view


def score_models(
    models: Mapping[str, Mapping[int, Path]],
    test_set: UtteranceSet,
    pool: NoisePool,
    groups: list[GroupSpec],
    mode: str,
    snr_mode: str,
    batch_size: int,
    real_noisy: Mapping[str, UtteranceSet] | None = None,
    scores: Scores | None = None,
    save_to: ReportFiles | None = None,
) -> Scores:
    """CCC, r and bias of every ``models[variant][epoch]`` (a model directory) on every condition and group.

    Cells already present in ``scores`` are kept (a resumed evaluation does not recompute them).
    With ``save_to``, each model's predictions go to its ``prediction_file`` (added to what is there).
    """
    scores = scores if scores is not None else Scores()
    done = {(r.variant, r.model_epoch, r.condition) for r in scores.rows}
    real_noisy = real_noisy or {}
    labels = to_label_scale(test_set.labels).astype(np.float32)
    for variant, epochs in models.items():
        for epoch, model_dir in epochs.items():
            if all((variant, epoch, c) in done for c in CONDITIONS):
                continue
            model, _, _ = load_model(model_dir)
            file = None if save_to is None else save_to.prediction_file(variant, epoch)
            saved = load_predictions(file) if file is not None and file.is_file() else ModelPredictions(labels)
            for condition in CONDITIONS:
                if (variant, epoch, condition) in done:
                    continue
                fixed = condition == CLEAN or condition in real_noisy
                wanted = groups[:1] if fixed and mode == "copies" else groups_for_condition(condition, groups, mode)
                by_seed: dict[int, list[GroupSpec]] = {}
                for spec in wanted:
                    by_seed.setdefault(spec.noise_seed, []).append(spec)
                for seed, specs in by_seed.items():
                    view = condition_set(test_set, condition, seed, pool, snr_mode, real_noisy.get(condition))
                    pred, _ = predict(model, view, batch_size, use_noisy=view.noise is not None)
                    pred = to_label_scale(pred).astype(np.float32)
                    for spec in specs:
                        saved.add(condition, spec.group, spec.indices, pred[spec.indices])
                        metrics = group_metrics(pred[spec.indices], labels[spec.indices])
                        scores.add(variant, epoch, condition, spec.group, **metrics)
            if file is not None:
                save_predictions(file, saved)
            log.info("scored %s epoch %d", variant, epoch)
    return scores
