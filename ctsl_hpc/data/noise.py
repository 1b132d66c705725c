"""Noise contamination: SNR mixing (rms and msp conventions), a noise pool, reproducible draws."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .audio import AudioError, audio_files, read_audio

log = logging.getLogger(__name__)

SNR_MODES = ("rms", "msp")


class NoiseError(ValueError):
    """A noise pool or noise signal cannot be used (empty, too short, zero energy)."""


def noise_gain(speech: np.ndarray, noise: np.ndarray, snr_db: float, mode: str = "rms") -> float:
    """Gain applied to `noise` so that `speech + gain * noise` has the requested SNR.

    rms (default): gain = rms(s) / (rms(n) * 10^(snr/20)), the standard power SNR.
    msp (the release's convention): gain = mean|s| / (mean|n| * 10^(snr/10)).
    """
    s = np.asarray(speech, dtype=np.float32)
    n = np.asarray(noise, dtype=np.float32)
    if mode == "rms":
        # float32 dot products accumulate pairwise in BLAS: fast and accurate enough for a gain
        s_level = float(np.sqrt(np.dot(s, s) / s.size))
        n_level = float(np.sqrt(np.dot(n, n) / n.size))
        exponent = 20.0
    elif mode == "msp":
        s_level = float(np.abs(s).mean(dtype=np.float64))
        n_level = float(np.abs(n).mean(dtype=np.float64))
        exponent = 10.0
    else:
        raise ValueError(f"snr_mode = {mode!r} is not one of {', '.join(SNR_MODES)}")
    if n_level == 0.0 or not np.isfinite(n_level):
        raise NoiseError("noise segment has zero (or non-finite) energy; cannot reach a target SNR")
    return s_level / (n_level * 10.0 ** (snr_db / exponent))


def mix(speech: np.ndarray, noise: np.ndarray, snr_db: float, mode: str = "rms") -> np.ndarray:
    """Return speech + gain * noise[:len(speech)] at `snr_db` (see `noise_gain` for the two conventions).

    `noise` must be at least as long as `speech`; only its first len(speech) samples are used.
    """
    speech = np.asarray(speech, dtype=np.float32)
    noise = np.asarray(noise, dtype=np.float32)
    if speech.ndim != 1 or noise.ndim != 1:
        raise ValueError("mix expects 1-D speech and noise arrays")
    if noise.shape[0] < speech.shape[0]:
        raise NoiseError(f"noise ({noise.shape[0]} samples) is shorter than speech ({speech.shape[0]} samples)")
    noise = noise[: speech.shape[0]]
    gain = np.float32(noise_gain(speech, noise, snr_db, mode))
    return speech + gain * noise


def noise_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of the noise draw for utterance `index` in `epoch` (independent of worker layout)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), int(index)]))


class NoisePool:
    """A single concatenated noise signal from which random segments are cut.

    ``sources`` names the files (or arrays) it was read from, in order; ``ends`` the sample where
    each one ends in the signal (given with ``sources``, or empty).
    """

    def __init__(
        self, signal: np.ndarray, sample_rate: int, sources: Sequence[str] = (), ends: Sequence[int] = ()
    ) -> None:
        signal = np.ascontiguousarray(signal, dtype=np.float32)
        if signal.ndim != 1 or signal.shape[0] == 0:
            raise NoiseError("noise pool is empty")
        if not np.any(signal):
            raise NoiseError("noise pool has zero energy")
        if len(ends) and len(ends) != len(sources):
            raise ValueError(f"noise pool: {len(ends)} source ends for {len(sources)} sources")
        self.signal = signal
        self.sample_rate = int(sample_rate)
        self.sources = tuple(sources)
        self.ends = tuple(int(e) for e in ends)

    @property
    def seconds(self) -> float:
        """Length of the pool in seconds."""
        return self.signal.shape[0] / self.sample_rate

    @classmethod
    def from_arrays(cls, arrays: Sequence[np.ndarray], sample_rate: int, minutes: float | None = None) -> NoisePool:
        """An in-memory pool: the arrays concatenated in order, capped to `minutes` of audio."""
        if not arrays:
            raise NoiseError("noise pool: no arrays given")
        parts = [np.asarray(a, dtype=np.float32).ravel() for a in arrays]
        pool = cls(np.concatenate(parts), sample_rate, [f"array[{i}]" for i in range(len(parts))],
                   np.cumsum([p.shape[0] for p in parts]))  # fmt: skip
        return pool if minutes is None else pool.head(minutes)

    def head(self, minutes: float) -> NoisePool:
        """The pool's first ``minutes`` of audio, with the sources that reach into them."""
        cap = int(round(minutes * 60 * self.sample_rate))
        if cap >= self.signal.shape[0]:
            return self
        if not self.ends:
            return NoisePool(self.signal[:cap], self.sample_rate)
        kept = next(i for i, end in enumerate(self.ends) if end >= cap) + 1
        return NoisePool(self.signal[:cap], self.sample_rate, self.sources[:kept], [*self.ends[: kept - 1], cap])

    @classmethod
    def from_directory(
        cls,
        folder: str | os.PathLike[str],
        sample_rate: int,
        minutes: float | None = None,
        min_seconds: float = 0.0,
    ) -> NoisePool:
        """Read every audio file of `folder` (sorted by name, recursively), resample, concatenate, cap to `minutes`.

        Files are read only until the cap is reached. Raises NoiseError if the folder has no audio
        files, or the pool is shorter than `min_seconds` (pass the longest segment you will draw).
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise NoiseError(f"{folder}: noise folder not found")
        files = audio_files(folder)
        if not files:
            raise NoiseError(f"{folder}: no audio files in noise folder")
        cap = None if minutes is None else int(round(minutes * 60 * sample_rate))
        parts: list[np.ndarray] = []
        used: list[str] = []
        ends: list[int] = []
        total = 0
        for path in files:
            remaining = None if cap is None else (cap - total) / sample_rate
            try:
                wave = read_audio(path, sample_rate, max_seconds=remaining)
            except AudioError as exc:
                raise NoiseError(f"noise pool {folder}: {exc}") from exc
            parts.append(wave)
            used.append(str(path))
            total += wave.shape[0]
            ends.append(total)
            if cap is not None and total >= cap:
                break
        pool = cls(np.concatenate(parts), sample_rate, used, ends)
        if pool.seconds < min_seconds:
            raise NoiseError(
                f"{folder}: noise pool holds {pool.seconds:.2f} s, fewer than the {min_seconds:g} s needed"
            )
        log.debug("noise pool %s: %d files, %.1f s", folder, len(used), pool.seconds)
        return pool

    def segment(self, rng: np.random.Generator, n_samples: int) -> np.ndarray:
        """A segment of `n_samples` starting at a uniformly random position of the pool.

        The pool is treated as circular: a segment running past the end wraps to the start, and a
        segment longer than the pool tiles it (so every pool sample is equally likely to be used).
        """
        n_samples = int(n_samples)
        if n_samples <= 0:
            raise ValueError(f"segment length must be positive, got {n_samples}")
        length = self.signal.shape[0]
        start = int(rng.integers(0, length))
        if start + n_samples <= length:
            return self.signal[start : start + n_samples].copy()
        return np.take(self.signal, np.arange(start, start + n_samples) % length)


def noisy_copy(
    wave: np.ndarray,
    pool: NoisePool,
    snr_db: float,
    seed: int,
    copy_index: int,
    utt_index: int,
    mode: str = "rms",
) -> np.ndarray:
    """Noisy copy number `copy_index` of test utterance `utt_index`: reproducible, and the same noise
    segment at every SNR (only the gain changes), so conditions are paired.
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(copy_index), int(utt_index), 0x7E57]))
    return mix(wave, pool.segment(rng, len(wave)), snr_db, mode)
