"""Audio reading (soundfile + soxr) with validation, and training-set waveform statistics."""

from __future__ import annotations

import io
import json
import logging
import math
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

log = logging.getLogger(__name__)

SILENCE_PEAK = 1e-4  # a clip whose absolute peak is below this (full scale = 1) counts as silent
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au")


class AudioError(ValueError):
    """An audio file is unreadable, empty, silent or too short."""


def audio_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The audio files (by suffix, :data:`AUDIO_SUFFIXES`) anywhere under ``folder``, sorted."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)


def resample(wave: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Resample a mono float waveform with soxr (returns float32; a no-op when the rates match)."""
    wave = np.asarray(wave, dtype=np.float32)
    if source_rate == target_rate:
        return wave
    return soxr.resample(wave, source_rate, target_rate, quality="HQ").astype(np.float32, copy=False)


def read_audio(
    path: str | os.PathLike[str],
    sample_rate: int,
    max_seconds: float | None = None,
    min_seconds: float = 0.0,
    content: bytes | None = None,
) -> np.ndarray:
    """Read `path` as mono float32 at `sample_rate`, cropped to its first `max_seconds`.

    Multichannel audio is averaged; another sample rate is resampled with soxr (logged at debug).
    Raises AudioError naming the file if it is unreadable, empty, silent or shorter than `min_seconds`.
    `content`, when given, is the file's bytes already read (decoded from memory: the same samples).
    """
    path = Path(path)
    source = str(path) if content is None else io.BytesIO(content)
    try:
        with sf.SoundFile(source) as file:  # one open for the header and the samples (sf.info would open it again)
            frames, rate = file.frames, file.samplerate
            if max_seconds is not None:
                # read a little past the crop when resampling, so the crop's end sees the same filter context
                margin = 0 if rate == sample_rate else int(0.1 * rate)
                frames = min(frames, int(math.ceil(max_seconds * rate)) + margin)
            data = file.read(frames, dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, OSError) as exc:
        raise AudioError(f"{path}: cannot read audio ({exc})") from exc
    if data.shape[0] == 0:
        raise AudioError(f"{path}: empty audio (0 samples)")
    wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not np.all(np.isfinite(wave)):
        raise AudioError(f"{path}: audio holds NaN or infinite samples")
    if rate != sample_rate:
        log.debug("resampling %s from %d Hz to %d Hz", path, rate, sample_rate)
        wave = resample(wave, rate, sample_rate)
    if max_seconds is not None:
        wave = wave[: int(round(max_seconds * sample_rate))]
    if wave.shape[0] < min_seconds * sample_rate:
        raise AudioError(f"{path}: too short ({wave.shape[0] / sample_rate:.3f} s < min_seconds {min_seconds:g} s)")
    if float(np.max(np.abs(wave))) < SILENCE_PEAK:
        raise AudioError(f"{path}: silent audio (peak below {SILENCE_PEAK:g})")
    return np.ascontiguousarray(wave, dtype=np.float32)


def audio_num_samples(path: str | os.PathLike[str], sample_rate: int, max_seconds: float | None = None) -> int:
    """Number of samples `read_audio` returns for `path`, from the header only (no decoding)."""
    try:
        info = sf.info(str(path))
    except (sf.SoundFileError, RuntimeError, OSError) as exc:
        raise AudioError(f"{path}: cannot read audio header ({exc})") from exc
    n = int(round(info.frames * sample_rate / info.samplerate)) if info.samplerate != sample_rate else info.frames
    if max_seconds is not None:
        n = min(n, int(round(max_seconds * sample_rate)))
    return n


@dataclass(frozen=True)
class WaveformStats:
    """Mean and standard deviation of the training waveforms (z-normalisation, saved with the model)."""

    mean: float
    std: float

    def normalise(self, wave: np.ndarray) -> np.ndarray:
        """(wave - mean) / std as float32."""
        return ((np.asarray(wave, dtype=np.float32) - np.float32(self.mean)) / np.float32(self.std)).astype(
            np.float32, copy=False
        )

    def to_json(self) -> str:
        """The statistics as JSON (what :meth:`load` reads)."""
        return json.dumps(asdict(self))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> WaveformStats:
        """Read statistics written as :meth:`to_json`."""
        try:
            data = json.loads(Path(path).read_text())
            return cls(mean=float(data["mean"]), std=float(data["std"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not a waveform statistics file ({exc})") from exc


@dataclass(frozen=True)
class Moments:
    """Sample count, mean and sum of squared deviations of one wave (float64), for :func:`merge_moments`."""

    count: int
    mean: float
    m2: float

    @classmethod
    def of(cls, wave: np.ndarray) -> Moments:
        w = np.asarray(wave, dtype=np.float64).ravel()
        if w.size == 0:
            return cls(0, 0.0, 0.0)
        mean = float(w.mean())
        return cls(int(w.size), mean, float(np.square(w - mean).sum()))


def merge_moments(parts: Iterable[Moments]) -> WaveformStats:
    """Mean and (population) std over all samples of all parts, merged in order with Chan et al.'s parallel
    update (float64), so no concatenation is needed.

    Example:
        >>> merge_moments([Moments.of(np.array([1.0, 3.0])), Moments.of(np.array([5.0]))])
        WaveformStats(mean=3.0, std=1.632993161855452)
    """
    count, mean, m2 = 0, 0.0, 0.0
    for part in parts:
        if part.count == 0:
            continue
        total = count + part.count
        delta = part.mean - mean
        mean += delta * part.count / total
        m2 += part.m2 + delta * delta * count * part.count / total
        count = total
    if count == 0:
        raise ValueError("compute_stats: no samples (empty training set?)")
    std = math.sqrt(m2 / count)
    if std == 0.0:
        raise ValueError("compute_stats: all training samples are equal (std = 0)")
    return WaveformStats(mean=mean, std=std)


def compute_stats(waves: Iterable[np.ndarray]) -> WaveformStats:
    """Mean and (population) std over all samples of all waves (:func:`merge_moments` of each wave's)."""
    return merge_moments(Moments.of(wave) for wave in waves)
