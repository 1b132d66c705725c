"""The checks before the queue and the prepare stage at MSP-Podcast's size, and reading a packed, staged corpus.

Builds, in a temporary folder deleted at the end, a stand-in of ``--files`` (default 134,000, MSP-Podcast
1.11's Train/Development/Test1) short non-silent WAV files, their durations drawn like MSP-Podcast's
(``student_step.msp_like_seconds``) and scaled down by ``--scale`` so that the whole stays a few GB,
and measures in one run, on this machine's local disk (the files sit in its page cache):

1. the submission checks (``ctsl_hpc.preflight.input_problems``) on its 134,000-entry manifest;
2. the prepare stage's audio check: files per second with 1 and with 2 processes
   (``ctsl_hpc.data.audit.audit``), against the serial check it replaced (decode every file, then
   read it again for its hash), each from an empty cache; the machine's load is printed before each.
   The 1- and 2-process checks run as ``--pairs`` pairs, in alternating order (1 then 2, 2 then 1, ...)
   so that a drift of the shared machine's speed during the run falls on both; the ratio is each
   pair's and their median;
3. the items per second a training data loader reads (random batches of 16, no workers) from the
   packed corpus staged in another folder, against the same utterances read as separate files.

    python benchmarks/prepare_stage.py [--files 134000] [--scale 0.1] [--pairs 3] [--loader-items 4000]
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from ctsl_hpc.config import load_config
from ctsl_hpc.data.audio import read_audio
from ctsl_hpc.data.audit import Reading, VerdictCache, audit
from ctsl_hpc.data.corpus import load_csv_manifest
from ctsl_hpc.data.packed import pack, stage
from ctsl_hpc.preflight import input_problems

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speech_stand_in import SAMPLE_RATE, msp_like_seconds, speech_like  # noqa: E402

SPLIT_SHARES = {"train": 84_030, "dev": 19_815, "test": 30_647}  # MSP-Podcast 1.11's partitions


def write_stand_in(root: Path, files: int, scale: float, rng: np.random.Generator) -> Path:
    """``files`` WAVs (16-bit, 16 kHz) in ``root/audio``, a manifest, and a noise folder per split."""
    seconds = msp_like_seconds(files, rng, "lognormal") * scale
    sources = [speech_like(int(SAMPLE_RATE * 11 * scale) + 1, rng) for _ in range(64)]  # cut from 64 waves
    total = sum(SPLIT_SHARES.values())
    splits = np.repeat(list(SPLIT_SHARES), [round(files * n / total) for n in SPLIT_SHARES.values()])[:files]
    splits = np.concatenate([splits, np.full(files - len(splits), "train")])
    audio = root / "audio"
    audio.mkdir(parents=True)
    rows = ["path,arousal,dominance,valence,split"]
    for i, (length, split) in enumerate(zip(seconds, splits, strict=True)):
        wave = sources[i % len(sources)][: int(length * SAMPLE_RATE)] * rng.uniform(0.3, 1.0)
        name = f"u{i:06d}.wav"
        sf.write(audio / name, wave, SAMPLE_RATE, subtype="PCM_16")
        a, d, v = rng.uniform(1, 7, 3)
        rows.append(f"audio/{name},{a:.2f},{d:.2f},{v:.2f},{split}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    for split in SPLIT_SHARES:
        folder = root / "noise" / split
        folder.mkdir(parents=True)
        sf.write(folder / "babble.wav", sum(speech_like(60 * SAMPLE_RATE, rng) for _ in range(4)), SAMPLE_RATE)
    return root / "manifest.csv"


def old_serial_check(paths: list[Path], reading: Reading) -> None:
    """What the audio check did before the prepare stage: decode each file, then read it again to hash it."""
    for path in paths:
        try:
            read_audio(path, reading.sample_rate, reading.max_seconds, reading.min_seconds)
        except ValueError:
            pass
        hashlib.sha256(path.read_bytes()).hexdigest()


def _cpu_seconds() -> tuple[float, float]:
    """CPU seconds (user + system) of this process and of its finished child processes."""
    mine, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return mine.ru_utime + mine.ru_stime, children.ru_utime + children.ru_stime


def measured(name: str, files: int, run) -> float:
    """Files per second of ``run()``, printed with the load average before it and the CPU seconds it took."""
    load = os.getloadavg()[0]
    cpu = _cpu_seconds()
    started = time.perf_counter()
    run()
    rate = files / (time.perf_counter() - started)
    mine, helpers = (after - before for after, before in zip(_cpu_seconds(), cpu, strict=True))
    print(f"{name}: {rate:.0f} files/s (load average {load:.2f} before it; CPU {mine:.1f} s here, {helpers:.1f} s in "
          f"helper processes)")
    return rate


def loader_rate(dataset, items: int) -> float:
    """Items per second a DataLoader (random batches of 16, no workers) reads from ``dataset``."""
    from torch.utils.data import DataLoader

    from ctsl_hpc.data.batching import RandomBatchSampler, collate

    loader = DataLoader(dataset, batch_sampler=RandomBatchSampler(dataset.lengths, 16, seed=0), collate_fn=collate)
    started, seen = time.perf_counter(), 0
    for batch in loader:
        seen += len(batch["index"])
        if seen >= items:
            break
    return seen / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=134_000)
    parser.add_argument("--scale", type=float, default=0.1, help="durations x this (MSP-Podcast's: 2.75-11 s)")
    parser.add_argument("--pairs", type=int, default=3, help="1- and 2-process checks, in alternating order")
    parser.add_argument("--loader-items", type=int, default=4000)
    parser.add_argument("--keep", type=Path, help="build the stand-in here and keep it (default: a temporary folder)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    root = args.keep or Path(tempfile.mkdtemp(prefix="ctsl-prepare-bench-"))
    try:
        started = time.perf_counter()
        manifest = write_stand_in(root / "corpus", args.files, args.scale, rng)
        size = sum(p.stat().st_size for p in (root / "corpus" / "audio").iterdir())
        print(f"stand-in: {args.files} files, {size / 1e9:.2f} GB, written in {time.perf_counter() - started:.0f} s")
        noise = {s: root / "corpus" / "noise" / s for s in SPLIT_SHARES}
        cfg = load_config(None, ["data.corpus=csv", f"data.manifest={manifest}", "model.backbone=tiny",
                                 f"workdir={root / 'work'}", "data.max_seconds=12", "data.min_seconds=0.1",
                                 *(f"noise.{s}={f}" for s, f in noise.items())])
        started = time.perf_counter()
        problems = input_problems(cfg)
        checks_s = time.perf_counter() - started
        print(f"submission checks: {checks_s:.1f} s for {args.files} entries ({problems or 'no problem'})")

        utterances = [u for split in load_csv_manifest(manifest).values() for u in split]
        paths = [u.path for u in utterances]
        reading = Reading(SAMPLE_RATE, 12.0, 0.1)
        serial = measured("serial check before the prepare stage", len(paths), lambda: old_serial_check(paths, reading))
        ratios, one_rates = [], []
        for pair in range(args.pairs):
            rates = {}
            for processes in (1, 2) if pair % 2 == 0 else (2, 1):
                cache = VerdictCache(root / f"pair{pair}-{processes}.jsonl")  # empty: every file checked
                name = f"pair {pair + 1}, audio check, {processes} process{'es' if processes > 1 else ''}"
                check = functools.partial(audit, paths, reading, cache, processes)
                rates[processes] = measured(name, len(paths), check)
            ratios.append(rates[2] / rates[1])
            one_rates.append(rates[1])
            print(f"pair {pair + 1}: 2 processes / 1 process = {ratios[-1]:.2f}x")
        print(f"ratio: 2 processes / 1 process = {statistics.median(ratios):.2f}x (median of "
              f"{', '.join(f'{r:.2f}x' for r in ratios)}); 1 process / the serial check before = "
              f"{statistics.median(one_rates) / serial:.2f}x")

        sample = [utterances[i] for i in rng.choice(len(utterances), min(args.loader_items * 2, len(utterances)),
                                                    replace=False)]
        read = lambda key: read_audio(key, SAMPLE_RATE, 12.0, 0.1)  # noqa: E731
        started = time.perf_counter()
        packed = pack(root / "packed", {str(u.path): len(read(str(u.path))) for u in sample}, read)
        staged = stage(packed.folder, root / "node-local" / "copy")
        print(f"packed and staged {len(sample)} utterances in {time.perf_counter() - started:.0f} s")
        from ctsl_hpc.data.batching import UtteranceSet

        common = dict(sample_rate=SAMPLE_RATE, max_seconds=12.0, min_seconds=0.1)
        files_rate = loader_rate(UtteranceSet(sample, **common), args.loader_items)
        staged_rate = loader_rate(UtteranceSet(sample, **common, store=staged), args.loader_items)
        print(f"data loader: {files_rate:.0f} items/s from separate files, {staged_rate:.0f} items/s from the staged "
              f"pack: {staged_rate / files_rate:.2f}x")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
