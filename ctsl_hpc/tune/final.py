"""The search's outcome as a comparison: the final students trained with the best setting, then Table 1.

``<workdir>/final`` is a work directory of its own (the base config with the best loss weights and
noise minutes) that shares the search's teacher, data and embedding cache: the tuned keys do not
touch the clean teacher, so nothing is trained or built twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ctsl_hpc import stage_jobs
from ctsl_hpc.experiment import Experiment, evaluate, train_student
from ctsl_hpc.tune.space import apply_params
from ctsl_hpc.variants import TEACHER

FINAL_PREFIX = "final/"  # the final runs' keys in the search's run tree


def final_experiment(exp: Experiment, best: dict[str, Any]) -> Experiment:
    """``<workdir>/final``: the base config with the best setting, sharing the teacher and the data."""
    final = exp.workdir.share_with_final()
    variants = exp.cfg.tune.final_variants or exp.cfg.student.variants
    cfg = apply_params(exp.cfg, best["params"], variants=list(variants), workdir=str(final.root))
    return Experiment.open(cfg, final.root)


def train_and_evaluate_final(exp: Experiment, best: dict[str, Any], tracker) -> Path:
    """Train the final students with the best setting, run the full evaluation protocol, register the
    selected models and describe the runs (the sweep's run: the final Table 1)."""
    final = final_experiment(exp, best)

    def sink(variant: str):
        return None if tracker is None else tracker.child(FINAL_PREFIX + stage_jobs.run_key(variant))

    variants = final.cfg.student.variants
    for variant in variants:
        run = sink(variant)
        if run is not None:
            run.log_inputs(stage_jobs.dataset_inputs(final, stage_jobs.NOISY_SPLITS))
        train_student(final, variant, sink=run)
        if run is not None:
            run.finish("FINISHED")
    everything = [TEACHER, *variants]
    report_dir = evaluate(final, everything, sink_for=sink)
    if tracker is not None:
        stage_jobs.publish_models(tracker, final, everything, {}, key_prefix=FINAL_PREFIX)
        tracker.parent().set_description(stage_jobs.sweep_description(final, everything, {}, key_prefix=FINAL_PREFIX))
    return report_dir
