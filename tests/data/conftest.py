"""Shared helpers for the data tests: fresh random generators and small WAV writers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf


def _speech_like(rng: np.random.Generator, seconds: float, sample_rate: int = 16000) -> np.ndarray:
    """A voiced-sounding test signal: a random-pitch harmonic tone with a syllable-rate envelope, plus hiss."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    f0 = rng.uniform(90, 250)
    tone = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 6))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(3, 6) * t) ** 2
    wave = 0.1 * tone * envelope + 0.005 * rng.standard_normal(t.size)
    return wave.astype(np.float32)


def _write_wav(path: Path, wave: np.ndarray, sample_rate: int = 16000) -> Path:
    """Write `wave` (float, [-1, 1]; 2-D = frames x channels), creating folders; WAVs keep float samples."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave, sample_rate, subtype="FLOAT" if path.suffix == ".wav" else None)
    return path


@pytest.fixture
def speech(rng: np.random.Generator):
    """speech(seconds, sample_rate=16000) -> a fresh speech-like float32 wave."""
    return lambda seconds, sample_rate=16000: _speech_like(rng, seconds, sample_rate)


@pytest.fixture
def write_wav():
    """write_wav(path, wave, sample_rate=16000) -> path."""
    return _write_wav
