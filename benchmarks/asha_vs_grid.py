"""ASHA against a full grid of the same points, on the demo: trial-epochs spent and best development CCC.

Both searches evaluate the same grid of (lambda_TL, lambda_CL, noise minutes) points with the same
teacher, embedding cache and noise pools (one work directory); the grid runs every point to
``tune.max_t`` epochs (FIFO), ASHA stops the weak ones early. Run (minutes on 2 cores):

    python benchmarks/asha_vs_grid.py --workdir /tmp/asha-bench [overrides...]

Prints a table; the numbers go to benchmarks/RESULTS.md by hand.
"""

from __future__ import annotations

import argparse
import logging
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")

from ray import tune  # noqa: E402

from ctsl_hpc.config import SWEEP_CONFIG, load_config  # noqa: E402
from ctsl_hpc.experiment import Experiment  # noqa: E402
from ctsl_hpc.tune.driver import init_ray, make_tuner, prepare_shared  # noqa: E402
from ctsl_hpc.tune.summary import trial_table  # noqa: E402
from ctsl_hpc.tune.trial import SharedInputs  # noqa: E402


def run(exp: Experiment, shared: SharedInputs, grid: dict, early_stopping: bool, name: str) -> dict:
    space = {key: tune.grid_search(values) for key, values in grid.items()}
    started = time.monotonic()
    results = make_tuner(exp, shared, param_space=space, early_stopping=early_stopping, name=name).fit()
    rows = trial_table(results, exp.cfg.tune.metric)
    return {
        "trials": len(rows),
        "trial_epochs": sum(r["epochs"] for r in rows),
        "best": max(r["best"] for r in rows),
        "best_point": max(rows, key=lambda r: r["best"]),
        "seconds": time.monotonic() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--lambda-tl", type=float, nargs="+", default=[1.0, 30.0, 1000.0])
    parser.add_argument("--lambda-cl", type=float, nargs="+", default=[0.3, 30.0])
    parser.add_argument("--noise-minutes", type=float, nargs="+", default=[0.5, 6.0])
    parser.add_argument("overrides", nargs="*", help="config overrides on configs/sweep.yaml, e.g. tune.max_t=4")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cfg = load_config(SWEEP_CONFIG, [f"workdir={args.workdir}", *args.overrides])
    exp = Experiment.open(cfg)
    init_ray()
    shared = prepare_shared(exp)
    grid = {"lambda_tl": args.lambda_tl, "lambda_cl": args.lambda_cl, "noise_minutes": args.noise_minutes}
    full = run(exp, shared, grid, early_stopping=False, name="bench-grid")
    asha = run(exp, shared, grid, early_stopping=True, name="bench-asha")
    tc = cfg.tune
    print(f"\n{full['trials']} grid points, max_t={tc.max_t}, ASHA grace_period={tc.grace_period} "
          f"reduction_factor={tc.reduction_factor}, {tc.metric} on the noisy development set "
          f"({cfg.student.snr_db:g} dB), {os.cpu_count()} CPUs, {tc.cpus_per_trial:g} per trial\n")
    print("| search | trial-epochs | wall time (s) | best dev CCC | best point (lambda_TL, lambda_CL, min) |")
    print("|---|---|---|---|---|")
    for label, res in (("full grid (FIFO)", full), ("ASHA", asha)):
        p = res["best_point"]
        print(f"| {label} | {res['trial_epochs']} | {res['seconds']:.0f} | {res['best']:.4f} | "
              f"{p['lambda_tl']:g}, {p['lambda_cl']:g}, {p['noise_minutes']:g} |")
    print(f"\nASHA used {asha['trial_epochs'] / full['trial_epochs']:.2f} x the grid's trial-epochs; "
          f"best dev CCC gap (grid - ASHA) = {full['best'] - asha['best']:+.4f}")


if __name__ == "__main__":
    main()
