"""ASHA against a full grid of the same points, on the demo: trial-epochs spent and best development CCC.

Both searches evaluate the same grid of (lambda_TL, lambda_CL, noise minutes) points with the same
teacher, embedding cache and noise pools (one work directory); the grid runs every point to
``tune.max_t`` epochs (FIFO), ASHA stops the weak ones early. ``--asha GRACE:FACTOR`` runs ASHA once
per setting (default: the config's ``tune.grace_period`` and ``tune.reduction_factor``), each against
the one grid run. Run (tens of minutes on 2 cores at the default 3 x 3 x 3 points and max_t 9):

    python benchmarks/asha_vs_grid.py --workdir /tmp/asha-bench synthetic.utterances=400 data.max_seconds=3.0

Prints a table (and ``--json``); the numbers go to benchmarks/RESULTS.md by hand.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")

from ray import tune  # noqa: E402

from ctsl_hpc.config import SWEEP_CONFIG, config_from_dict, load_config  # noqa: E402
from ctsl_hpc.experiment import Experiment  # noqa: E402
from ctsl_hpc.tune.driver import init_ray, make_tuner, prepare_shared  # noqa: E402
from ctsl_hpc.tune.summary import trial_table  # noqa: E402
from ctsl_hpc.tune.trial import SharedInputs  # noqa: E402

# the targets: ASHA's best within 2 % of the grid's, at most 40 % of its trial-epochs
MAX_GAP, MAX_SHARE = 0.02, 0.40


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
        "epochs_per_trial": sorted(r["epochs"] for r in rows),
        "seconds": time.monotonic() - started,
    }


def with_tune(exp: Experiment, grace: int, factor: int) -> Experiment:
    """The same experiment (work directory, teacher, cache) with other ASHA settings."""
    values = exp.cfg.to_dict()
    values["tune"].update(grace_period=grace, reduction_factor=factor)
    return Experiment(config_from_dict(values), exp.workdir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--lambda-tl", type=float, nargs="+", default=[1.0, 30.0, 1000.0])
    parser.add_argument("--lambda-cl", type=float, nargs="+", default=[0.3, 3.0, 30.0])
    parser.add_argument("--noise-minutes", type=float, nargs="+", default=[0.5, 2.0, 6.0])
    parser.add_argument("--asha", nargs="+", default=None, metavar="GRACE:FACTOR",
                        help="ASHA settings to run against the grid (default: the config's)")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument("--grid-json", type=Path,
                        help="take the full grid's figures from an earlier --json of the same points, config and "
                             "work directory instead of running it again (trials are deterministic)")
    parser.add_argument("overrides", nargs="*", help="config overrides on configs/sweep.yaml, e.g. tune.max_t=9")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cfg = load_config(SWEEP_CONFIG, [f"workdir={args.workdir}", *args.overrides])
    exp = Experiment.open(cfg)
    init_ray()
    shared = prepare_shared(exp)
    grid = {"lambda_tl": args.lambda_tl, "lambda_cl": args.lambda_cl, "noise_minutes": args.noise_minutes}
    tc = cfg.tune
    settings = [tuple(int(v) for v in s.split(":")) for s in args.asha] if args.asha else [(tc.grace_period, tc.reduction_factor)]
    if args.grid_json:
        earlier = json.loads(args.grid_json.read_text())
        if earlier["max_t"] != tc.max_t:
            parser.error(f"--grid-json: {args.grid_json} was run with max_t={earlier['max_t']}, not {tc.max_t}")
        full = earlier["searches"]["full grid (FIFO)"]
    else:
        full = run(exp, shared, grid, early_stopping=False, name="bench-grid")
    searches = {"full grid (FIFO)": full}
    for grace, factor in settings:
        searches[f"ASHA grace {grace}, factor {factor}"] = run(
            with_tune(exp, grace, factor), shared, grid, early_stopping=True, name=f"bench-asha-g{grace}-rf{factor}"
        )
    print(f"\n{full['trials']} grid points, max_t={tc.max_t}, {tc.metric} on the noisy development set "
          f"({cfg.student.snr_db:g} dB), {os.cpu_count()} CPUs, {tc.cpus_per_trial:g} per trial\n")
    print("| search | trial-epochs | share of the grid's | wall time (s) | best dev CCC | gap to the grid | "
          "best point (lambda_TL, lambda_CL, min) | targets met |")
    print("|---|---:|---:|---:|---:|---:|---|---|")
    for label, res in searches.items():
        p = res["best_point"]
        share = res["trial_epochs"] / full["trial_epochs"]
        gap = (full["best"] - res["best"]) / abs(full["best"])
        res.update(share=share, relative_gap=gap, met=bool(gap <= MAX_GAP and share <= MAX_SHARE))
        print(f"| {label} | {res['trial_epochs']} | {share:.2f} | {res['seconds']:.0f} | {res['best']:.4f} | "
              f"{gap:+.2%} | {p['lambda_tl']:g}, {p['lambda_cl']:g}, {p['noise_minutes']:g} | "
              f"{'-' if res is full else ('yes' if res['met'] else 'no')} |")
    for label, res in searches.items():
        if res is not full:
            print(f"{label}: epochs per trial {res['epochs_per_trial']}")
    if args.json:
        args.json.write_text(json.dumps({"max_t": tc.max_t, "searches": searches}, indent=1, default=str))


if __name__ == "__main__":
    main()
