"""Record the tune demo's full grid: every point's learning curve for two training seeds, as a data file.

The search replays (``benchmarks/tune_replay.py``) read these curves instead of training. The setting
is the earlier ASHA benchmark's: ``configs/sweep.yaml`` (variant ``tune.variant``) on 200 demo
utterances cropped to 2 s, the grid ``lambda_TL`` x ``lambda_CL`` x noise minutes of 3 x 3 x 3 points,
``tune.max_t`` = 9 epochs each. A point's second seed changes ``train.seed`` alone (data order,
dropout, SpecAugment masks): the teacher, the cache, the noise pools and the development set are the
same, so the two seeds of a point differ by the training's own noise. Each point trains in its own run
folder through :func:`ctsl_hpc.experiment.student_trainer` (the trials' code, without Ray), in
``--processes`` processes of one thread; a rerun trains only what is missing (a killed run resumes).

    python benchmarks/tune_curves.py --workdir /tmp/tune-curves --out benchmarks/data/tune_grid_curves.json

486 trial-epochs, 28 minutes with 2 processes on the 2-core machine (about 5 s per trial-epoch per core).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

GRID = {"lambda_tl": [1.0, 30.0, 1000.0], "lambda_cl": [0.3, 3.0, 30.0], "noise_minutes": [0.5, 2.0, 6.0]}
SETTING = ["synthetic.utterances=200", "data.max_seconds=2.0", "tracking.enabled=false"]


def point_name(params: dict[str, float], seed: int) -> str:
    return f"tl{params['lambda_tl']:g}-cl{params['lambda_cl']:g}-min{params['noise_minutes']:g}-s{seed}"


def train_point(workdir: str, params: dict[str, float], seed: int) -> dict[str, Any]:
    """Train one point of the grid with ``train.seed=seed``; its per-epoch development metrics and seconds."""
    import torch

    from ctsl_hpc.experiment import Experiment, never, student_trainer
    from ctsl_hpc.run_records import read_history
    from ctsl_hpc.tune.space import apply_params
    from ctsl_hpc.tune.trial import shared_inputs
    from ctsl_hpc.workdir import RunDir

    torch.set_num_threads(1)
    base = Experiment.reopen(workdir)
    cfg = apply_params(base.cfg, params, epochs=base.cfg.tune.max_t)
    cfg.train.seed = seed
    exp = Experiment(cfg, base.workdir)  # the same teacher, cache and data
    shared = shared_inputs(base)
    exp.data.set_pool("train", shared.train_pool.head(float(params["noise_minutes"])))
    exp.data.set_pool("dev", shared.dev_pool)
    run = RunDir(base.workdir.root / "curves" / point_name(params, seed))
    seconds: list[float] = []
    started = time.monotonic()

    def timed(_record, _checkpoint) -> None:
        nonlocal started
        seconds.append(round(time.monotonic() - started, 2))
        started = time.monotonic()

    trainer = student_trainer(exp, cfg.tune.variant, run)
    trainer.fit(never, on_epoch_end=timed)
    history = read_history(run.history)
    return {**params, "seed": seed, "dev_score": [r.dev_score for r in history.epochs],
            "dev_ccc": [r.dev_ccc for r in history.epochs], "seconds": seconds}


def _train(job: tuple[str, dict[str, float], int]) -> dict[str, Any]:
    return train_point(*job)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data" / "tune_grid_curves.json")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="more config overrides on configs/sweep.yaml")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from ctsl_hpc import stage_jobs
    from ctsl_hpc.config import SWEEP_CONFIG, load_config
    from ctsl_hpc.experiment import Experiment, teacher_embedder, teacher_summary
    from ctsl_hpc.experiment.preparation import prepare

    cfg = load_config(SWEEP_CONFIG, [f"workdir={args.workdir}", *SETTING, *args.overrides])
    exp = Experiment.open(cfg)
    prepare(exp)
    teacher = stage_jobs.teacher_job(exp.workdir.root)
    teacher_embedder(exp, teacher_summary(exp).best_dir)  # the cache, filled once before the points read it
    points = [dict(zip(GRID, values, strict=True)) for values in itertools.product(*GRID.values())]
    done = {}
    if args.out.is_file():
        earlier = json.loads(args.out.read_text())
        done = {point_name(c, c["seed"]): c for c in earlier["curves"] if len(c["dev_score"]) == cfg.tune.max_t}
    jobs = [(str(exp.workdir.root), p, s) for s in args.seeds for p in points if point_name(p, s) not in done]
    curves = list(done.values())

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "setting": {"config": "configs/sweep.yaml", "overrides": [*SETTING, *args.overrides],
                        "variant": cfg.tune.variant, "max_t": cfg.tune.max_t, "metric": cfg.tune.metric,
                        "teacher_dev_score": teacher.dev_scores[teacher.best_epoch], "grid": GRID, "seeds": args.seeds,
                        "seed_key": "train.seed"},
            "curves": sorted(curves, key=lambda c: (c["seed"], c["lambda_tl"], c["lambda_cl"], c["noise_minutes"])),
        }, indent=1) + "\n")

    with multiprocessing.get_context("spawn").Pool(args.processes) as pool:
        for curve in pool.imap_unordered(_train, jobs):
            curves.append(curve)
            save()
            print(f"{len(curves)}/{len(points) * len(args.seeds)} {point_name(curve, curve['seed'])}: "
                  f"best {max(curve['dev_score']):.4f}", flush=True)
    save()


if __name__ == "__main__":
    main()
