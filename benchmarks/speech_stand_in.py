"""Speech-like stand-in audio for the benchmarks: MSP-Podcast-like durations, a voiced signal, WAV corpora.

Torch-free on purpose: ``benchmarks/prepare_stage.py`` imports it in its main module, which the audio
check's spawned workers import again (a torch import there would delay every worker by seconds, which
a prepare job's workers, under ``python -m ctsl_hpc.launch`` or submitit, do not pay).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from ctsl_hpc.data.corpus import Utterance

SAMPLE_RATE = 16000
MIN_SECONDS, MAX_SECONDS = 2.75, 11.0


def msp_like_seconds(n: int, rng: np.random.Generator, dist: str) -> np.ndarray:
    """Utterance durations in [2.75, 11] s: log-normal (median 5 s, most short, a long tail) or uniform."""
    if dist == "uniform":
        return rng.uniform(MIN_SECONDS, MAX_SECONDS, n)
    return np.clip(rng.lognormal(np.log(5.0), 0.4, n), MIN_SECONDS, MAX_SECONDS)


def speech_like(n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """A voiced, syllable-modulated harmonic signal with a wandering pitch (a speech stand-in)."""
    t = np.arange(n_samples) / SAMPLE_RATE
    f0 = rng.uniform(90, 250) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.3, 1.5) * t))
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    syllables = 0.5 * (1 + np.sin(2 * np.pi * rng.uniform(3, 6) * t)) ** 2
    wave = voiced * syllables + 0.02 * rng.standard_normal(n_samples)
    return (0.1 * wave / np.abs(wave).max()).astype(np.float32)


def write_corpus(folder: Path, seconds: np.ndarray, rng: np.random.Generator) -> list[Utterance]:
    """WAV files of the given durations with random labels on the 1..7 scale."""
    folder.mkdir(parents=True, exist_ok=True)
    utts = []
    for i, s in enumerate(seconds):
        path = folder / f"utt{i:05d}.wav"
        sf.write(path, speech_like(int(s * SAMPLE_RATE), rng), SAMPLE_RATE, subtype="PCM_16")
        utts.append(Utterance(path, tuple(rng.uniform(1, 7, 3).tolist()), "train"))
    return utts
