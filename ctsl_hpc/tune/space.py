"""The search space: log-uniform loss weights and a choice of training-noise minutes, and applying a point of it."""

from __future__ import annotations

from typing import Any

from ctsl_hpc.config import ExperimentConfig, TuneConfig, config_from_dict

SEARCHED = ("lambda_tl", "lambda_cl", "noise_minutes")
POINT_FILE = "params.json"  # a trial's point, in its run folder (<workdir>/tune/trials/<id>/)
TIME_ATTR = "epoch"  # the trials' clock: what they report their progress in, and what the scheduler counts


def scheduler_metric(metric: str) -> str:
    """The name under which trials report their best ``metric`` so far, which the scheduler and searcher compare.

    Example:
        >>> scheduler_metric("dev/ccc_mean")
        'best/dev/ccc_mean'
    """
    return f"best/{metric}"


def search_space(tc: TuneConfig) -> dict[str, Any]:
    """Ray Tune's parameter space: log-uniform loss weights, a choice of noise-pool minutes."""
    from ray import tune

    return {
        "lambda_tl": tune.loguniform(*tc.lambda_tl),
        "lambda_cl": tune.loguniform(*tc.lambda_cl),
        "noise_minutes": tune.choice(list(tc.noise_minutes)),
    }


def overrides_for(params: dict[str, Any], epochs: int | None = None) -> list[str]:
    """Dotted config overrides that apply a trial's parameters (and optionally its epoch budget)."""
    out = [
        f"student.lambda_tl={float(params['lambda_tl'])!r}",
        f"student.lambda_cl={float(params['lambda_cl'])!r}",
        f"noise.minutes={float(params['noise_minutes'])!r}",
    ]
    if epochs is not None:
        out.append(f"student.epochs={epochs}")
    return out


def apply_params(
    cfg: ExperimentConfig,
    params: dict[str, Any],
    epochs: int | None = None,
    variants: list[str] | None = None,
    workdir: str | None = None,
) -> ExperimentConfig:
    """``cfg`` with a trial's loss weights and noise minutes (and student epochs/variants, workdir)."""
    values = cfg.to_dict()
    values["student"].update(lambda_tl=float(params["lambda_tl"]), lambda_cl=float(params["lambda_cl"]))
    values["noise"]["minutes"] = float(params["noise_minutes"])
    if epochs is not None:
        values["student"]["epochs"] = epochs
    if variants is not None:
        values["student"]["variants"] = list(variants)
    if workdir is not None:
        values["workdir"] = workdir
    return config_from_dict(values)
