"""What the paper's sweep costs: ``sweep --config paper --dry-run`` on an MSP-Podcast-sized stand-in corpus.

MSP-Podcast itself is licensed and not here, so this writes its layout (``Audios/*.wav``,
``Labels/labels_consensus.csv``) with the partition sizes the MSP lab publishes for release 1.11
(Train 84,030, Development 19,815, Test1 30,647 segments; 151,654 segments, 237 h 56 min in all:
5.65 s on average) and durations drawn log-normally, clipped to 2.75-11 s, scaled to that mean. Each WAV file
is a real 16 kHz header followed by a hole (a sparse file): its header says its length, its data takes
no disk. Then it runs the dry run twice in a work directory that exists (the first reads every
header and caches the durations, the second reads the cache), and once where none exists (nothing is
written), and prints the output and the timings:

    python benchmarks/paper_cost.py --root /tmp/msp-standin [sweep overrides, e.g. eval.groups=copies]
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SPLITS = {"Train": 84_030, "Development": 19_815, "Test1": 30_647}  # MSP-Podcast 1.11, the MSP lab's page
MEAN_SECONDS = (237 * 60 + 56) * 60 / 151_654
RATE = 16_000


def wav_header(n_samples: int) -> bytes:
    """A 44-byte PCM WAV header (mono, 16 bit, 16 kHz) for ``n_samples`` samples."""
    data = 2 * n_samples
    return b"RIFF" + struct.pack("<I", 36 + data) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, RATE, 2 * RATE, 2, 16) \
        + b"data" + struct.pack("<I", data)


def write_standin(root: Path, seed: int = 0) -> float:
    """The corpus layout with sparse WAV files; returns its hours of audio."""
    rng = np.random.default_rng(seed)
    audios, labels = root / "Audios", root / "Labels"
    audios.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    shape = rng.lognormal(0.0, 0.45, sum(SPLITS.values()))  # most segments short, a long tail
    low, high = 1.0, 20.0  # the scale whose clipped draw has the published mean (bisection)
    for _ in range(60):
        scale = (low + high) / 2
        low, high = (scale, high) if np.clip(scale * shape, 2.75, 11.0).mean() < MEAN_SECONDS else (low, scale)
    seconds = np.clip(scale * shape, 2.75, 11.0)
    rows, i = [], 0
    for split, count in SPLITS.items():
        for _ in range(count):
            name = f"MSP-PODCAST_{i:06d}.wav"
            n = int(seconds[i] * RATE)
            with open(audios / name, "wb") as handle:
                handle.write(wav_header(n))
                handle.truncate(44 + 2 * n)
            act, val, dom = rng.uniform(1, 7, 3).round(1)
            rows.append([name, "N", act, val, dom, str(i % 1409), "Female", split])
            i += 1
    with open(labels / "labels_consensus.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set"])
        writer.writerows(rows)
    return float(seconds.sum() / 3600)


def dry_run(root: Path, workdir: Path, overrides: list[str]) -> tuple[str, float]:
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "ctsl_hpc.launch", "sweep", "--config", "paper", "--dry-run", "--workdir", str(workdir),
         f"data.root={root}", *overrides], capture_output=True, text=True, check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    return out.stdout, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="where to write the stand-in corpus (removed after)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    started = time.monotonic()
    hours = write_standin(args.root / "MSP-Podcast")
    print(f"stand-in corpus: {sum(SPLITS.values())} sparse WAV files, {hours:.1f} h, written in "
          f"{time.monotonic() - started:.0f} s")
    work = args.root / "work"
    work.mkdir(parents=True, exist_ok=True)
    try:
        first, first_s = dry_run(args.root / "MSP-Podcast", work, args.overrides)
        _, second_s = dry_run(args.root / "MSP-Podcast", work, args.overrides)
        _, absent_s = dry_run(args.root / "MSP-Podcast", args.root / "absent", args.overrides)
        print(first)
        print(f"dry run: {first_s:.1f} s reading every header, {second_s:.1f} s from the cache; "
              f"{absent_s:.1f} s where no work directory exists ({'none created' if not (args.root / 'absent').exists() else 'CREATED'})")
    finally:
        shutil.rmtree(args.root, ignore_errors=True)


if __name__ == "__main__":
    main()
