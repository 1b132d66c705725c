"""ASHA against a full grid of the same points, on the demo: trial-epochs spent and best development CCC.

Both searches evaluate the same grid of (lambda_TL, lambda_CL, noise minutes) points with the same
teacher, embedding cache and noise pools (one work directory); the grid runs every point to
``tune.max_t`` epochs (FIFO), ASHA stops the weak ones early. ``--asha GRACE:FACTOR`` runs ASHA once
per setting (``GRACE:FACTOR[:BRACKETS]``; default: the config's ``tune.grace_period``,
``tune.reduction_factor`` and ``tune.brackets``), each against the one grid run, or against the grid's
recorded curves (``--curves``, from ``benchmarks/tune_curves.py`` on the same work directory: each
live trial's curve is then also compared with its recorded one). Run (tens of minutes on 2 cores at
the default 3 x 3 x 3 points and max_t 9):

    python benchmarks/asha_vs_grid.py --workdir /tmp/asha-bench synthetic.utterances=400 data.max_seconds=3.0
    python benchmarks/asha_vs_grid.py --workdir /tmp/tune-curves --curves benchmarks/data/tune_grid_curves.json \
        synthetic.utterances=200 data.max_seconds=2.0 tracking.enabled=false   # the live confirmation

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
from ctsl_hpc.tune.space import TIME_ATTR  # noqa: E402
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
        "curves": {_point(r.config): list(r.metrics_dataframe.sort_values(TIME_ATTR)[exp.cfg.tune.metric])
                   for r in results},
    }


def _point(config: dict) -> tuple[float, float, float]:
    return float(config["lambda_tl"]), float(config["lambda_cl"]), float(config["noise_minutes"])


def with_tune(exp: Experiment, grace: int, factor: int, brackets: int) -> Experiment:
    """The same experiment (work directory, teacher, cache) with other ASHA settings."""
    values = exp.cfg.to_dict()
    values["tune"].update(grace_period=grace, reduction_factor=factor, brackets=brackets)
    return Experiment(config_from_dict(values), exp.workdir)


def recorded_grid(path: Path, seed: int, max_t: int) -> tuple[dict, dict[tuple, list[float]]]:
    """The full grid's figures from recorded curves of training seed ``seed``, and each point's curve."""
    data = json.loads(path.read_text())
    if data["setting"]["max_t"] != max_t:
        raise SystemExit(f"--curves: {path} was recorded with max_t={data['setting']['max_t']}, not {max_t}")
    curves = [c for c in data["curves"] if c["seed"] == seed]
    best = max(curves, key=lambda c: max(c["dev_score"]))
    point = {k: best[k] for k in ("lambda_tl", "lambda_cl", "noise_minutes")}
    full = {"trials": len(curves), "trial_epochs": sum(len(c["dev_score"]) for c in curves),
            "best": max(best["dev_score"]), "best_point": point, "epochs_per_trial": [max_t] * len(curves),
            "seconds": sum(sum(c["seconds"]) for c in curves)}
    return full, {_point(c): c["dev_score"] for c in curves}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--lambda-tl", type=float, nargs="+", default=[1.0, 30.0, 1000.0])
    parser.add_argument("--lambda-cl", type=float, nargs="+", default=[0.3, 3.0, 30.0])
    parser.add_argument("--noise-minutes", type=float, nargs="+", default=[0.5, 2.0, 6.0])
    parser.add_argument("--asha", nargs="+", default=None, metavar="GRACE:FACTOR[:BRACKETS]",
                        help="ASHA settings to run against the grid (default: the config's)")
    parser.add_argument("--curves", type=Path, help="take the full grid from these recorded curves (the training "
                        "seed of --curve-seed) and compare every live trial's curve with its recorded one")
    parser.add_argument("--curve-seed", type=int, default=0)
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
    settings = [(*(int(v) for v in s.split(":")), 1)[:3] for s in args.asha] if args.asha else [
        (tc.grace_period, tc.reduction_factor, tc.brackets)]
    recorded: dict[tuple, list[float]] = {}
    if args.curves:
        full, recorded = recorded_grid(args.curves, args.curve_seed, tc.max_t)
    elif args.grid_json:
        earlier = json.loads(args.grid_json.read_text())
        if earlier["max_t"] != tc.max_t:
            parser.error(f"--grid-json: {args.grid_json} was run with max_t={earlier['max_t']}, not {tc.max_t}")
        full = earlier["searches"]["full grid (FIFO)"]
    else:
        full = run(exp, shared, grid, early_stopping=False, name="bench-grid")
    searches = {"full grid (FIFO)": full}
    for grace, factor, brackets in settings:
        label = f"ASHA grace {grace}, factor {factor}" + (f", {brackets} brackets" if brackets > 1 else "")
        searches[label] = run(with_tune(exp, grace, factor, brackets), shared, grid, early_stopping=True,
                              name=f"bench-asha-g{grace}-rf{factor}-b{brackets}")
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
            if recorded:  # each live trial's epochs against the same point's recorded curve
                diffs = [abs(score - recorded[point][i]) for point, scores in res["curves"].items()
                         for i, score in enumerate(scores)]
                print(f"{label}: live against recorded curves, {len(diffs)} epochs: largest difference {max(diffs):.2e}")
    if args.json:
        for res in searches.values():
            res.pop("curves", None)  # keyed by tuples: not JSON
        args.json.write_text(json.dumps({"max_t": tc.max_t, "searches": searches}, indent=1, default=str))


if __name__ == "__main__":
    main()
