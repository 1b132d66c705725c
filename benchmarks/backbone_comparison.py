"""The demo on the shipped self-supervised backbone against the random-init one, over several seeds.

Runs the demo sweep (``configs/demo.yaml``, tracking off) once per seed (``seed`` and ``train.seed``)
and backbone, each in its own work directory under ``--out`` (a finished one is reused), ``--parallel``
at a time with one torch thread each, then prints per seed and backbone the teacher's and the
students' clean and 0 dB CCC per attribute, the share of the teacher's clean CCC the students keep,
and the sweep's wall and CPU time (with the load average it ran under), and the rule of the demo's
default on the mean over the seeds: the self-supervised backbone becomes the default when the
students keep at least 80 % of the teacher's clean CCC, ``RM+TL+CL``'s 0 dB CCC (mean over A/D/V)
is no more than 0.02 below random init's, and ``RM+TL+CL`` beats ``original`` at 0 dB on each
attribute.

    python benchmarks/backbone_comparison.py --out runs/backbone-cmp --seeds 0 1 2 --parallel 2 [--json F]
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

from ctsl_hpc.data.corpus import ATTRIBUTES
from ctsl_hpc.variants import TEACHER
from ctsl_hpc.workdir import Workdir

BACKBONES = {
    "random init": ["model.backbone=tiny", "model.freeze_feature_encoder=false"],
    "tiny-ssl": ["model.backbone=tiny-ssl", "model.freeze_feature_encoder=true"],
}
CONTRASTIVE = "RM+TL+CL"
KEEP, MAX_0DB_LOSS = 0.80, 0.02  # the rule's bounds


def cells(workdir: Workdir) -> dict[str, dict[str, list[float]]]:
    """{variant: {condition: CCC per attribute}} of a finished sweep's Table 1 (clean and 0 dB)."""
    table = json.loads(workdir.report.table1_json.read_text())
    return {v: {c: [table[v][c][a]["mean"] for a in ATTRIBUTES] for c in ("clean", "snr0")} for v in table}


def launch(out: Path, backbone: str, seed: int, extra: list[str]) -> tuple[Workdir, subprocess.Popen | None, float]:
    workdir = Workdir(out / f"{backbone.replace(' ', '-')}-seed{seed}")
    if workdir.report.done.is_file():
        return workdir, None, 0.0
    command = [sys.executable, "-m", "ctsl_hpc.launch", "sweep", "--workdir", str(workdir.root), f"seed={seed}",
               f"train.seed={seed}", "tracking.enabled=false", *BACKBONES[backbone], *extra]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log = open(out / f"{workdir.root.name}.log", "wb")
    return workdir, subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT), time.monotonic()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--parallel", type=int, default=1, help="sweeps at a time (one torch thread each)")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument("overrides", nargs="*", help="more config overrides for every sweep")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    queue = [(b, s) for s in args.seeds for b in BACKBONES]
    running: dict[int, tuple[str, int, Workdir, float, float]] = {}
    runs: dict[tuple[str, int], dict] = {}
    while queue or running:
        while queue and len(running) < args.parallel:
            backbone, seed = queue.pop(0)
            workdir, proc, started = launch(args.out, backbone, seed, args.overrides)
            if proc is None:
                runs[backbone, seed] = {"workdir": workdir, "wall_s": None, "cpu_s": None, "load": None}
            else:
                running[proc.pid] = (backbone, seed, workdir, started, os.getloadavg()[0])
        if running:
            pid, status, usage = os.wait4(-1, 0)
            backbone, seed, workdir, started, load = running.pop(pid)
            if os.waitstatus_to_exitcode(status) != 0:
                sys.exit(f"the {backbone} sweep of seed {seed} failed: see {args.out / (workdir.root.name + '.log')}")
            runs[backbone, seed] = {"workdir": workdir, "wall_s": time.monotonic() - started,
                                    "cpu_s": usage.ru_utime + usage.ru_stime, "load": load}
    results = {key: {**run, "cells": cells(run["workdir"])} for key, run in runs.items()}
    print("| backbone | seed | teacher clean A/D/V | teacher 0 dB | students clean (mean of 5) | students 0 dB | "
          f"{CONTRASTIVE} clean | {CONTRASTIVE} 0 dB | clean CCC kept | wall / CPU time (load) |")
    print("|---|---:|---|---|---|---|---|---|---:|---|")
    summary: dict[str, dict] = {}
    for backbone in BACKBONES:
        per_seed = []
        for seed in args.seeds:
            r = results[backbone, seed]
            c = r["cells"]
            students = [v for v in c if v != TEACHER]
            s_clean = np.mean([c[v]["clean"] for v in students], axis=0)
            s_0db = np.mean([c[v]["snr0"] for v in students], axis=0)
            kept = float(s_clean.mean() / np.mean(c[TEACHER]["clean"]))
            per_seed.append({"kept": kept, "contrastive_0db": c[CONTRASTIVE]["snr0"], "teacher_0db": c[TEACHER]["snr0"]})
            times = "reused" if r["wall_s"] is None else f"{r['wall_s'] / 60:.1f} / {r['cpu_s'] / 60:.1f} min ({r['load']:.1f})"
            fmt = lambda v: "/".join(f"{x:.3f}" for x in v)  # noqa: E731
            print(f"| {backbone} | {seed} | {fmt(c[TEACHER]['clean'])} | {fmt(c[TEACHER]['snr0'])} | {fmt(s_clean)} | "
                  f"{fmt(s_0db)} | {fmt(c[CONTRASTIVE]['clean'])} | {fmt(c[CONTRASTIVE]['snr0'])} | {100 * kept:.0f} % | "
                  f"{times} |")
        summary[backbone] = {
            "kept": float(np.mean([p["kept"] for p in per_seed])),
            "contrastive_0db": np.mean([p["contrastive_0db"] for p in per_seed], axis=0).tolist(),
            "teacher_0db": np.mean([p["teacher_0db"] for p in per_seed], axis=0).tolist(),
        }
    ssl, base = summary["tiny-ssl"], summary["random init"]
    checks = {
        f"students keep >= {KEEP:.0%} of the teacher's clean CCC ({100 * ssl['kept']:.1f} %)": ssl["kept"] >= KEEP,
        f"{CONTRASTIVE} 0 dB mean no more than {MAX_0DB_LOSS} below random init's "
        f"({np.mean(ssl['contrastive_0db']):.3f} vs {np.mean(base['contrastive_0db']):.3f})":
            np.mean(ssl["contrastive_0db"]) >= np.mean(base["contrastive_0db"]) - MAX_0DB_LOSS,
        f"{CONTRASTIVE} beats {TEACHER} at 0 dB on each attribute "
        f"({'/'.join(f'{a:.3f}>{b:.3f}' for a, b in zip(ssl['contrastive_0db'], ssl['teacher_0db'], strict=True))})":
            all(a > b for a, b in zip(ssl["contrastive_0db"], ssl["teacher_0db"], strict=True)),
    }
    print(f"\nmeans over seeds {args.seeds}:")
    for name, ok in checks.items():
        print(f"- {name}: {'yes' if ok else 'NO'}")
    adopt = all(checks.values())
    print(f"tiny-ssl becomes the demo's default: {'yes' if adopt else 'no'}")
    if args.json:
        args.json.write_text(json.dumps({f"{b}|{s}": {k: v for k, v in r.items() if k != "workdir"}
                                         for (b, s), r in results.items()} | {"summary": summary, "adopt": adopt},
                                        indent=1, default=str))


if __name__ == "__main__":
    main()
