"""Audio reading, validation and waveform statistics."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import soundfile as sf

from ctsl_hpc.data.audio import AudioError, WaveformStats, audio_num_samples, compute_stats, read_audio


def _dominant_frequency(wave: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(wave.size)))
    return float(np.fft.rfftfreq(wave.size, 1 / sample_rate)[np.argmax(spectrum)])


def test_stereo_at_another_rate_is_averaged_resampled_and_cropped(tmp_path, rng, write_wav, caplog):
    source_rate = int(rng.choice([8000, 22050, 44100]))
    freq = float(rng.uniform(200, 2000))
    t = np.arange(int(2.0 * source_rate)) / source_rate
    left = 0.4 * np.sin(2 * np.pi * freq * t)
    right = 0.2 * np.sin(2 * np.pi * freq * t)
    path = write_wav(tmp_path / "stereo.wav", np.stack([left, right], axis=1), source_rate)
    with caplog.at_level(logging.DEBUG, logger="ctsl_hpc.data.audio"):
        wave = read_audio(path, 16000, max_seconds=1.5)
    assert "resampling" in caplog.text and str(path) in caplog.text
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert wave.shape[0] == 24000
    assert _dominant_frequency(wave, 16000) == pytest.approx(freq, abs=2.0)
    steady = wave[2000:-2000]
    assert np.sqrt(np.mean(steady**2)) == pytest.approx(0.3 / np.sqrt(2), rel=0.01)  # channel average
    assert audio_num_samples(path, 16000, max_seconds=1.5) == wave.shape[0]
    assert audio_num_samples(path, 16000) == pytest.approx(len(read_audio(path, 16000)), abs=1)


def test_matching_rate_reads_samples_unchanged(tmp_path, speech, write_wav):
    original = speech(1.2)
    path = write_wav(tmp_path / "a.wav", original)
    np.testing.assert_array_equal(read_audio(path, 16000), original)


def test_bad_clips_raise_audio_error_naming_the_file(tmp_path, speech, write_wav, rng):
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(rng.bytes(2000))
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 16000)
    silent = write_wav(tmp_path / "silent.wav", np.zeros(16000, dtype=np.float32))
    short = write_wav(tmp_path / "short.wav", speech(0.3))
    cases = [
        (garbage, "cannot read audio"),
        (tmp_path / "absent.wav", "cannot read audio"),
        (empty, "empty audio"),
        (silent, "silent audio"),
        (short, r"too short \(0.300 s < min_seconds 0.5 s\)"),
    ]
    for path, message in cases:
        with pytest.raises(AudioError, match=message) as info:
            read_audio(path, 16000, min_seconds=0.5)
        assert str(path) in str(info.value)


def test_streamed_stats_match_concatenated_float64(rng):
    waves = [
        (rng.standard_normal(int(rng.integers(100, 50000))) * rng.uniform(0.01, 0.5) + 0.01).astype(np.float32)
        for _ in range(20)
    ]
    stats = compute_stats(iter(waves))
    joined = np.concatenate(waves).astype(np.float64)
    assert stats.mean == pytest.approx(joined.mean(), rel=1e-9, abs=1e-12)
    assert stats.std == pytest.approx(joined.std(), rel=1e-9)
    normalised = np.concatenate([stats.normalise(w) for w in waves]).astype(np.float64)
    assert normalised.mean() == pytest.approx(0.0, abs=1e-5)
    assert normalised.std() == pytest.approx(1.0, rel=1e-5)


def test_stats_round_trip_and_degenerate_inputs(tmp_path, rng):
    stats = WaveformStats(mean=float(rng.normal()), std=float(rng.uniform(0.1, 2)))
    (tmp_path / "stats.json").write_text(stats.to_json())
    assert WaveformStats.load(tmp_path / "stats.json") == stats
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="bad.json"):
        WaveformStats.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="no samples"):
        compute_stats([])
    with pytest.raises(ValueError, match="std = 0"):
        compute_stats([np.full(10, 0.3, dtype=np.float32)])
