"""Ray Tune search over lambda_TL, lambda_CL and the training-noise budget, with ASHA early stopping.

The search space, scheduler and resources come from ``cfg.tune`` (:class:`ctsl_hpc.config.TuneConfig`):
:mod:`.space` (the parameters), :mod:`.trial` (one trial, the sweep's student set-up),
:mod:`.relay` (preemption for trials), :mod:`.driver` (the Tuner and the sweep from teacher to
report), :mod:`.summary` (best config, trial table, plot), :mod:`.final` (the final students).
"""
