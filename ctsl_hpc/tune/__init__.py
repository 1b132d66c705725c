"""Ray Tune search over lambda_TL, lambda_CL and the training-noise budget, with early stopping.

The search space, scheduler and resources come from ``cfg.tune`` (:class:`ctsl_hpc.config.TuneConfig`):
:mod:`.space` (the parameters), :mod:`.trial` (one trial, the sweep's student set-up),
:mod:`.relay` (preemption for trials), :mod:`.driver` (the Tuner and the search task of the job
graph), :mod:`.summary` (best config, trial table, plot). The final students and their evaluation
are the graph's ordinary student and evaluation tasks, in the search's ``final/`` work directory.
"""
