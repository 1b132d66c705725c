"""The evaluation stage of a finished demo in both test-group modes: wall time and values per Table 1 cell.

Each mode gets its own work directory under ``--out``, linked to the demo's trained teacher,
students, corpus and caches (nothing is retrained), and runs the whole evaluation stage (scoring,
Table 2, report) with tracking off:

    python benchmarks/eval_modes.py --workdir runs/demo --out /tmp/eval-modes

Default modes: the demo's old setting (``copies``, 8 groups) and its new one (``splits``, 6 groups).
Prints a table; the numbers go to benchmarks/RESULTS.md by hand.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from ctsl_hpc.atomic_io import atomic_write_text  # noqa: E402
from ctsl_hpc.config import load_config  # noqa: E402
from ctsl_hpc.experiment import Experiment  # noqa: E402
from ctsl_hpc.experiment.evaluation import evaluate  # noqa: E402
from ctsl_hpc.workdir import Workdir  # noqa: E402


def linked_workdir(demo: Workdir, root: Path, overrides: list[str]) -> Experiment:
    """A fresh work directory whose trained runs, corpus and caches are the demo's (symbolic links)."""
    shutil.rmtree(root, ignore_errors=True)
    cfg = load_config(demo.config_file, [*overrides, "tracking.enabled=false"])
    exp = Experiment.open(cfg, root)
    target = exp.workdir
    runs = [(demo.teacher.path, target.teacher.path)]
    runs += [(demo.student(v).path, target.student(v).path) for v in cfg.student.variants]
    for source, link in [*runs, (demo.synthetic_data, target.synthetic_data), (demo.cache, target.cache)]:
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(source, target_is_directory=True)
    if demo.waveform_stats.is_file():
        atomic_write_text(target.waveform_stats, demo.waveform_stats.read_text())
    return exp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="a finished demo sweep")
    parser.add_argument("--out", required=True, help="a scratch folder for the two evaluations")
    parser.add_argument("--copies", type=int, default=8, help="eval.n_groups of the copies run")
    parser.add_argument("--splits", type=int, default=6, help="eval.n_groups of the splits run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    demo = Workdir(args.workdir)
    rows = []
    for mode, n_groups in (("copies", args.copies), ("splits", args.splits)):
        exp = linked_workdir(demo, Path(args.out) / f"{mode}-{n_groups}", [f"eval.groups={mode}", f"eval.n_groups={n_groups}"])
        variants = ["original", *exp.cfg.student.variants]
        started = time.monotonic()
        evaluate(exp, variants)
        seconds = time.monotonic() - started
        table = json.loads(exp.workdir.report.table1_json.read_text())
        ns = sorted({cell["n"] for by_c in table.values() for cells in by_c.values() for cell in cells.values()})
        rows.append((mode, n_groups, seconds, min(ns), max(ns)))
    print(f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")
    print("| eval.groups | eval.n_groups | evaluation stage (s) | values per cell (min-max) |")
    print("|---|---:|---:|---:|")
    for mode, n_groups, seconds, low, high in rows:
        print(f"| {mode} | {n_groups} | {seconds:.0f} | {low}-{high} |")


if __name__ == "__main__":
    main()
