"""Replay searches over the recorded grid (``benchmarks/data/tune_grid_curves.json``) without training.

Each search runs Ray Tune's own scheduler and searcher objects (ASHA, synchronous Hyperband, Optuna's
TPE, BOHB when ``hpbandster`` is installed) inside a small event loop that stands in for Tune's
trial runner: ``concurrency`` trials train at once, an epoch of a trial takes the seconds it took
when it was recorded, and each result carries what the trials report to Tune (``epoch``, and the
trial's best development CCC so far under the scheduler's metric). The loop calls the scheduler the
way ``TuneController`` does (``on_trial_add``, ``on_trial_result``, ``choose_trial_to_run``,
``stop_trial``'s ``on_trial_remove``/``on_trial_complete``); new trials are asked of the searcher
when a slot is free and the scheduler has nothing to run or resume.

A replay seed draws, for every grid point, which of its two recorded training seeds a trial of that
point sees (so a search meets the training's own noise), and seeds the search: the order of the
grid's points for the random searches, the sampler's seed for the model-based ones. The full grid
(FIFO) under the same draw is the reference: a search's gap is (grid's best - search's best) /
grid's best of the metric as Tune sees it, its cost the epochs it trained over the grid's.

    python benchmarks/tune_replay.py --seeds 200 --json benchmarks/data/tune_replay.json

prints the table that goes to benchmarks/RESULTS.md and names the default: the cheapest search
whose mean cost is at most 40 % of the grid's and which ends within max(2 %, the noise floor) of the
grid's best for at least 90 % of the seeds; if none does, the best trade-off (the cheapest of those
that meet the 90 % at every concurrency).
"""

from __future__ import annotations

import argparse
import heapq
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from ray.tune.experiment import Trial  # noqa: E402  (only its status names)
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandScheduler, TrialScheduler  # noqa: E402

CURVES = Path(__file__).parent / "data" / "tune_grid_curves.json"
METRIC = "best_dev_score"  # the trial's best development score so far: what the scheduler compares
MAX_SHARE, MIN_GAP, MIN_WITHIN = 0.40, 0.02, 0.90  # the targets


@dataclass(eq=False)
class ReplayTrial:
    """What Ray's schedulers read of a trial: its id, status and last result."""

    trial_id: str
    config: dict[str, float]
    curve: list[float]  # the development score of each epoch
    seconds: list[float]
    status: str = Trial.PENDING
    is_saving: bool = False
    last_result: dict[str, Any] = field(default_factory=dict)
    epochs: int = 0  # trained so far

    def result(self) -> dict[str, Any]:
        return {"epoch": self.epochs, "training_iteration": self.epochs, METRIC: max(self.curve[: self.epochs]),
                "trial_id": self.trial_id}


class Replay:
    """The part of Tune's trial runner the schedulers call, and the event loop that drives them.

    As Tune does, trials are created ahead of the free slots (up to ``MAX_PENDING`` waiting, Tune's
    default for a CPU cluster), so that a synchronous scheduler's brackets fill before they are judged;
    ``limit`` (Tune's ``ConcurrencyLimiter``) caps the live trials a model-based searcher may have."""

    MAX_PENDING = 16

    def __init__(self, scheduler: TrialScheduler, suggest: Callable[[str], dict | None], curves: dict[tuple, dict],
                 concurrency: int, samples: int, searcher: Any = None, limit: int | None = None) -> None:
        self.scheduler, self.suggest, self.curves, self.concurrency = scheduler, suggest, curves, concurrency
        self.samples, self.searcher, self.limit = samples, searcher, limit
        self.search_alg = SimpleNamespace(searcher=searcher)  # HyperBandForBOHB pauses and resumes TuneBOHB through it
        self.trials: list[ReplayTrial] = []
        self.running: list[tuple[float, int, ReplayTrial]] = []  # (when its epoch ends, tie-break, trial)
        self.now = 0.0

    def get_trials(self) -> list[ReplayTrial]:
        return self.trials

    def get_live_trials(self) -> set[ReplayTrial]:
        return {t for t in self.trials if t.status not in (Trial.TERMINATED, Trial.ERROR)}

    def stop_trial(self, trial: ReplayTrial) -> None:
        """TuneController.stop_trial: a waiting trial is removed, a running one completed."""
        if trial.status in (Trial.ERROR, Trial.TERMINATED):
            return
        if trial.status in (Trial.PENDING, Trial.PAUSED):
            self.scheduler.on_trial_remove(self, trial)
            if self.searcher is not None:
                self.searcher.on_trial_complete(trial.trial_id, result=trial.last_result or None)
        else:
            self.scheduler.on_trial_complete(self, trial, trial.last_result)
            if self.searcher is not None:
                self.searcher.on_trial_complete(trial.trial_id, result=trial.last_result)
            self.running = [r for r in self.running if r[2] is not trial]
            heapq.heapify(self.running)
        trial.status = Trial.TERMINATED

    def _fill(self) -> None:
        """Create trials while fewer than MAX_PENDING wait, the budget lasts and the limiter lets."""
        while len(self.trials) < self.samples and sum(t.status == Trial.PENDING for t in self.trials) < self.MAX_PENDING:
            if self.limit is not None and len(self.get_live_trials()) >= self.limit:
                return
            trial_id = f"{len(self.trials):05d}"
            config = self.suggest(trial_id)
            if config is None:
                self.samples = len(self.trials)  # the searcher has nothing more
                return
            curve = self.curves[_point(config)]
            trial = ReplayTrial(trial_id, config, curve["dev_score"], curve["seconds"])
            self.trials.append(trial)
            self.scheduler.on_trial_add(self, trial)

    def _start(self, trial: ReplayTrial) -> None:
        trial.status = Trial.RUNNING
        heapq.heappush(self.running, (self.now + trial.seconds[trial.epochs], int(trial.trial_id), trial))

    def run(self) -> list[ReplayTrial]:
        while True:
            self._fill()
            while len(self.running) < self.concurrency:
                trial = self.scheduler.choose_trial_to_run(self)
                if trial is None:
                    break
                self._start(trial)
                self._fill()
            if not self.running:
                return self.trials
            self.now, _, trial = heapq.heappop(self.running)
            trial.epochs += 1
            result = trial.result()
            decision = self.scheduler.on_trial_result(self, trial, result)
            trial.last_result = result
            if decision != TrialScheduler.STOP and self.searcher is not None:
                self.searcher.on_trial_result(trial.trial_id, result)
            if decision == TrialScheduler.STOP or trial.epochs == len(trial.curve):
                self.stop_trial(trial)
            elif decision == TrialScheduler.PAUSE:
                trial.status = Trial.PAUSED
            else:
                self._start(trial)


def _point(config: dict[str, float]) -> tuple[float, float, float]:
    return float(config["lambda_tl"]), float(config["lambda_cl"]), float(config["noise_minutes"])


def load_curves(path: Path) -> tuple[dict, dict[int, dict[tuple, dict]]]:
    """The setting and, per recorded seed, each point's curve."""
    data = json.loads(path.read_text())
    by_seed: dict[int, dict[tuple, dict]] = {}
    for curve in data["curves"]:
        by_seed.setdefault(curve["seed"], {})[_point(curve)] = curve
    return data["setting"], by_seed


def noise_floor(by_seed: dict[int, dict[tuple, dict]]) -> dict[str, float]:
    """How far apart two training seeds of the same point end: the relative difference of their best
    development scores at the best point (by their mean), and its median and maximum over all points."""
    first, second = sorted(by_seed)[:2]
    diffs = {}
    for point, curve in by_seed[first].items():
        a, b = max(curve["dev_score"]), max(by_seed[second][point]["dev_score"])
        diffs[point] = (abs(a - b) / max(abs(a), abs(b)), (a + b) / 2)
    best = max(diffs, key=lambda p: diffs[p][1])
    values = np.array([d for d, _ in diffs.values()])
    return {"at_best_point": float(diffs[best][0]), "median": float(np.median(values)), "max": float(values.max()),
            "best_point": list(best)}


def draw(by_seed: dict[int, dict[tuple, dict]], rng: np.random.Generator) -> dict[tuple, dict]:
    """For every point, the curve of one of its recorded seeds."""
    seeds = sorted(by_seed)
    return {point: by_seed[seeds[rng.integers(len(seeds))]][point] for point in by_seed[seeds[0]]}


# ------------------------------------------------------------------------------ the searches


def _grid_order(points: list[tuple], rng: np.random.Generator) -> Callable[[str], dict | None]:
    """Random search over the grid's points: every point once, in a random order."""
    order = [points[i] for i in rng.permutation(len(points))]
    keys = ("lambda_tl", "lambda_cl", "noise_minutes")

    def suggest(_trial_id: str) -> dict | None:
        return dict(zip(keys, order.pop(0), strict=True)) if order else None

    return suggest


def _model_based(kind: str, grid: dict[str, list[float]], seed: int):
    """A searcher over the grid's values (``optuna``: TPE; ``bohb``: BOHB) and its suggest function."""
    if kind == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        space = {key: optuna.distributions.CategoricalDistribution(values) for key, values in grid.items()}
        searcher = OptunaSearch(space=space, metric=METRIC, mode="max", seed=seed)
    else:
        import ConfigSpace
        from ray.tune.search.bohb import TuneBOHB

        space = ConfigSpace.ConfigurationSpace(seed=seed)
        space.add([ConfigSpace.CategoricalHyperparameter(key, values) for key, values in grid.items()])
        searcher = TuneBOHB(space=space, metric=METRIC, mode="max", seed=seed)
    return searcher, searcher.suggest


@dataclass(frozen=True)
class Search:
    label: str
    scheduler: Callable[[int], TrialScheduler]  # max_t -> a fresh scheduler
    searcher: str = "random"  # random (the grid's points in a random order), optuna, bohb
    samples: int = 27


def searches(max_t: int) -> list[Search]:
    asha = lambda grace, factor, brackets=1: lambda t: ASHAScheduler(  # noqa: E731
        time_attr="epoch", metric=METRIC, mode="max", max_t=t, grace_period=grace, reduction_factor=factor,
        brackets=brackets)
    hyperband = lambda factor: lambda t: HyperBandScheduler(  # noqa: E731
        time_attr="epoch", metric=METRIC, mode="max", max_t=t, reduction_factor=factor)
    out = [Search("full grid (FIFO)", lambda t: FIFOScheduler())]
    for grace, factor in ((1, 3), (1, 2), (2, 2), (2, 3), (3, 3), (3, 9), (1, 4)):
        out.append(Search(f"ASHA grace {grace}, factor {factor}", asha(grace, factor)))
    for grace, factor, brackets in ((1, 3, 2), (1, 3, 3), (2, 3, 2)):
        out.append(Search(f"ASHA grace {grace}, factor {factor}, {brackets} brackets", asha(grace, factor, brackets)))
    for factor in (3, 2, 4):
        out.append(Search(f"Hyperband factor {factor}", hyperband(factor)))
    for samples in (27, 18):
        out.append(Search(f"TPE (Optuna), Hyperband factor 3, {samples} trials", hyperband(3), "optuna", samples))
    for samples in (9, 12):
        out.append(Search(f"TPE (Optuna), no early stopping, {samples} trials", lambda t: FIFOScheduler(), "optuna",
                          samples))
    try:
        import hpbandster  # noqa: F401
        from ray.tune.schedulers.hb_bohb import HyperBandForBOHB

        out.append(Search("BOHB (HyperBandForBOHB + TuneBOHB), 27 trials", lambda t: HyperBandForBOHB(
            time_attr="epoch", metric=METRIC, mode="max", max_t=t, reduction_factor=3), "bohb"))
    except ImportError:
        pass
    return out


def replay(search: Search, curves: dict[tuple, dict], grid: dict[str, list[float]], max_t: int, concurrency: int,
           seed: int) -> dict[str, float]:
    """One search under one draw: its trial-epochs and its best metric."""
    rng = np.random.default_rng(seed)
    searcher, limit = None, None
    if search.searcher == "random":
        suggest = _grid_order(sorted(curves), rng)
    else:  # as the sweep runs them: through a ConcurrencyLimiter of tune.max_concurrent = the concurrency
        (searcher, suggest), limit = _model_based(search.searcher, grid, seed), concurrency
    trials = Replay(search.scheduler(max_t), suggest, curves, concurrency, search.samples, searcher, limit).run()
    epochs = sum(t.epochs for t in trials)
    best = max(trials, key=lambda t: t.last_result.get(METRIC, -np.inf))
    return {"trial_epochs": epochs, "best": best.last_result[METRIC], "point": list(_point(best.config))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--curves", type=Path, default=CURVES)
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--only", help="replay only the searches whose label contains this (e.g. BOHB)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    setting, by_seed = load_curves(args.curves)
    floor = noise_floor(by_seed)
    target = max(MIN_GAP, floor["at_best_point"])
    max_t = setting["max_t"]
    print(f"{len(by_seed[sorted(by_seed)[0]])} points x {len(by_seed)} seeds, max_t {max_t}; noise floor (two seeds "
          f"of a point, relative difference of their best dev CCC): {floor['at_best_point']:.2%} at the best point, "
          f"median {floor['median']:.2%}, max {floor['max']:.2%} over the points; target: within {target:.2%}\n")
    rows = []
    for concurrency in args.concurrency:
        for search in (s for s in searches(max_t) if args.only is None or args.only in s.label):
            shares, gaps = [], []
            for seed in range(args.seeds):
                curves = draw(by_seed, np.random.default_rng([seed, 1]))
                grid_epochs = len(curves) * max_t
                grid_best = max(max(c["dev_score"]) for c in curves.values())
                outcome = replay(search, curves, setting["grid"], max_t, concurrency, seed)
                shares.append(outcome["trial_epochs"] / grid_epochs)
                gaps.append((grid_best - outcome["best"]) / abs(grid_best))
            gaps_a = np.array(gaps)
            rows.append({"search": search.label, "concurrency": concurrency, "mean_share": float(np.mean(shares)),
                         "within": float(np.mean(gaps_a <= target + 1e-12)), "worst_gap": float(gaps_a.max()),
                         "mean_gap": float(gaps_a.mean())})
            r = rows[-1]
            print(f"| {r['search']} | {concurrency} | {r['mean_share']:.2f} | {r['within']:.0%} | {r['mean_gap']:.2%} | "
                  f"{r['worst_gap']:.2%} |", flush=True)
    met = [r for r in rows if r["mean_share"] <= MAX_SHARE and r["within"] >= MIN_WITHIN]
    ok_everywhere = {label for label in {r["search"] for r in met}
                     if all(r["search"] != label or r in met for r in rows)}
    choice = min((r for r in met if r["search"] in ok_everywhere), key=lambda r: r["mean_share"], default=None)
    trade_off = None if choice else best_trade_off(rows)
    print(f"\ndefault: {choice['search'] if choice else 'none meets the targets at every concurrency'}")
    if trade_off:
        print(f"best trade-off (the cheapest at its costliest concurrency among those within the target for "
              f"{MIN_WITHIN:.0%} of the seeds at every concurrency): {trade_off}")
    if args.json:
        args.json.write_text(json.dumps({"setting": setting, "noise_floor": floor, "target_gap": target, "rows": rows,
                                         "default": choice and choice["search"], "best_trade_off": trade_off},
                                        indent=1) + "\n")


def best_trade_off(rows: list[dict]) -> str | None:
    """When no search meets both targets: the cheapest (by its largest mean share over the concurrencies)
    of those that end within the target for MIN_WITHIN of the seeds at every concurrency."""
    by_search: dict[str, list[dict]] = {}
    for r in rows:
        by_search.setdefault(r["search"], []).append(r)
    reliable = {label: max(r["mean_share"] for r in rs) for label, rs in by_search.items()
                if all(r["within"] >= MIN_WITHIN for r in rs) and not label.startswith("full grid")}
    return min(reliable, key=reliable.get) if reliable else None


if __name__ == "__main__":
    main()
