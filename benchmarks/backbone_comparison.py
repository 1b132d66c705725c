"""The demo with the shipped self-supervised backbone against the random-init one, on several seeds.

Runs the demo sweep (``configs/demo.yaml``, tracking off) once per seed (``seed`` and ``train.seed``)
and backbone, each in its own work directory under ``--out`` (a finished one is reused), then prints
per seed and backbone: the teacher's mean clean test CCC (over A/D/V), the students' mean clean CCC
(over the five students and A/D/V; and as a share of the teacher's), their mean 0 dB gain over
``original``, and the sweep's wall time; and the rule of the issue: the pre-trained backbone becomes
the demo default only if, on every seed, the teacher's clean CCC drops by at most 0.02, the
students' clean CCC rises by at least 0.05 and their 0 dB gain does not fall.

    python benchmarks/backbone_comparison.py --out runs/backbone-cmp --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ctsl_hpc.workdir import ReportFiles, Workdir

BACKBONES = {
    "random": ["model.backbone=tiny", "model.freeze_feature_encoder=false"],
    "ssl": ["model.backbone=tiny-ssl", "model.freeze_feature_encoder=true"],
}
ATTRIBUTES = ("arousal", "dominance", "valence")


def figures(report: ReportFiles) -> dict[str, float]:
    """Teacher clean CCC, students' clean CCC and 0 dB gain over original (means over A/D/V and students)."""
    table = json.loads(report.table1_json.read_text())
    students = [v for v in table if v != "original"]

    def mean(variant: str, condition: str) -> float:
        return float(np.mean([table[variant][condition][a]["mean"] for a in ATTRIBUTES]))

    teacher = mean("original", "clean")
    clean = float(np.mean([mean(s, "clean") for s in students]))
    gain = float(np.mean([mean(s, "snr0") - mean("original", "snr0") for s in students]))
    return {"teacher_clean": teacher, "students_clean": clean, "kept": clean / teacher, "gain_0db": gain}


def run(out: Path, backbone: str, seed: int) -> tuple[ReportFiles, float | None]:
    """The sweep of one (backbone, seed) (reused when finished): its report and wall time (None if reused)."""
    workdir = Workdir(out / f"{backbone}-seed{seed}")
    if workdir.report.done.is_file():
        return workdir.report, None
    command = [sys.executable, "-m", "ctsl_hpc.launch", "sweep", "--workdir", str(workdir.root), f"seed={seed}",
               f"train.seed={seed}", "tracking.enabled=false", *BACKBONES[backbone]]  # fmt: skip
    started = time.monotonic()
    subprocess.run(command, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return workdir.report, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    results: dict[tuple[str, int], dict[str, float]] = {}
    for seed in args.seeds:
        for backbone in BACKBONES:
            report, seconds = run(Path(args.out), backbone, seed)
            results[backbone, seed] = {**figures(report), "seconds": seconds}
    print("| seed | backbone | teacher clean CCC | students clean CCC (kept) | students 0 dB gain | sweep wall time |")
    print("|---:|---|---:|---:|---:|---:|")
    for (backbone, seed), f in sorted(results.items(), key=lambda item: (item[0][1], item[0][0])):
        wall = "reused" if f["seconds"] is None else f"{f['seconds'] / 60:.1f} min"
        print(f"| {seed} | {backbone} | {f['teacher_clean']:.3f} | {f['students_clean']:.3f} ({100 * f['kept']:.0f} %) "
              f"| {f['gain_0db']:+.3f} | {wall} |")
    checks = []
    for seed in args.seeds:
        base, ssl = results["random", seed], results["ssl", seed]
        checks.append({
            "teacher drop <= 0.02": base["teacher_clean"] - ssl["teacher_clean"] <= 0.02,
            "students clean +0.05": ssl["students_clean"] - base["students_clean"] >= 0.05,
            "0 dB gain not lower": ssl["gain_0db"] >= base["gain_0db"],
        })  # fmt: skip
        print(f"seed {seed}: " + ", ".join(f"{name}: {'yes' if ok else 'no'}" for name, ok in checks[-1].items()))
    adopt = all(all(c.values()) for c in checks)
    print(f"the pre-trained backbone becomes the demo default: {'yes' if adopt else 'no'}")


if __name__ == "__main__":
    main()
