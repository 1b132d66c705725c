"""What a finished search found: the best (trial, epoch), a table of trials, ``best_config.yaml`` and a plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ctsl_hpc.atomic_io import atomic_write_csv, atomic_write_text
from ctsl_hpc.config import ExperimentConfig
from ctsl_hpc.tune.space import SEARCHED, TIME_ATTR, overrides_for
from ctsl_hpc.workdir import Workdir


def best_of(results, metric: str) -> dict[str, Any]:
    """The best (trial, epoch) of the search by ``metric`` (higher is better)."""
    best = results.get_best_result(metric, mode="max", scope="all")
    frame = best.metrics_dataframe
    row = frame.loc[frame[metric].idxmax()]
    return {
        "params": {k: float(best.config[k]) for k in SEARCHED},
        "trial_id": best.metrics["trial_id"],
        "metric": metric,
        "value": float(row[metric]),
        "epoch": int(row[TIME_ATTR]),
    }


def trial_table(results, metric: str) -> list[dict[str, Any]]:
    """Per trial: its parameters, epochs run and best ``metric``."""
    rows = []
    for result in results:
        frame = result.metrics_dataframe
        if frame is None or metric not in frame:
            continue
        rows.append(
            {
                "trial_id": result.metrics["trial_id"],
                **{k: float(result.config[k]) for k in SEARCHED},
                "epochs": int(frame[TIME_ATTR].max()),
                "best": float(frame[metric].max()),
            }
        )
    return sorted(rows, key=lambda r: r["trial_id"])


def write_summary(rows: list[dict[str, Any]], best: dict[str, Any], cfg: ExperimentConfig, workdir: Workdir) -> tuple[Path, Path, Path]:
    """``best_config.yaml`` (with the overrides that reproduce it), ``trials.csv`` and the summary plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best_path = workdir.best_config
    best_doc = dict(best, overrides=overrides_for(best["params"]), variant=cfg.tune.variant)
    atomic_write_text(best_path, yaml.safe_dump(best_doc, sort_keys=False))
    csv_path = atomic_write_csv(workdir.trials_csv, list(rows[0]), (list(r.values()) for r in rows))
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), sharey=True)
    for ax, key, label in zip(axes, SEARCHED, ("lambda_TL", "lambda_CL", "noise pool (minutes)"), strict=True):
        x = [r[key] for r in rows]
        sc = ax.scatter(x, [r["best"] for r in rows], c=[r["epochs"] for r in rows], cmap="viridis", vmin=1)
        ax.scatter([best["params"][key]], [best["value"]], marker="*", s=200, c="red", label="best")
        ax.set_xscale("log")
        ax.set_xlabel(label)
    axes[0].set_ylabel(f"best {best['metric']} (development, noisy)")
    axes[0].legend(loc="lower left")
    fig.colorbar(sc, ax=axes, label="epochs run (ASHA)")
    plot = workdir.tune_summary_plot
    fig.savefig(plot, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return best_path, csv_path, plot


def read_best_config(workdir: str | Path) -> dict[str, Any]:
    """The ``best_config.yaml`` a finished search wrote into ``workdir``."""
    path = Workdir(workdir).best_config
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: the search in {workdir} has not finished")
    return yaml.safe_load(path.read_text())
