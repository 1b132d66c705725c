"""SNR mixing, the noise pool and reproducible draws."""

from __future__ import annotations

import time

import numpy as np
import pytest

from ctsl_hpc.data.audio import read_audio
from ctsl_hpc.data.noise import NoiseError, NoisePool, mix, noise_gain, noise_rng, noisy_copy


def _snr_rms(speech: np.ndarray, added: np.ndarray) -> float:
    s, n = speech.astype(np.float64), added.astype(np.float64)
    return 10 * np.log10(np.mean(s**2) / np.mean(n**2))


def _form_factor(x: np.ndarray) -> float:
    x = x.astype(np.float64)
    return float(np.sqrt(np.mean(x**2)) / np.mean(np.abs(x)))


def test_rms_mix_reaches_the_requested_power_snr(rng, speech):
    for _ in range(5):
        clean = speech(float(rng.uniform(1, 4)))
        noise = (rng.standard_normal(clean.size + int(rng.integers(0, 5000))) * rng.uniform(0.01, 3)).astype(np.float32)
        snr = float(rng.uniform(-5, 20))
        noisy = mix(clean, noise, snr)
        assert noisy.dtype == np.float32 and noisy.shape == clean.shape
        assert _snr_rms(clean, noisy - clean) == pytest.approx(snr, abs=0.01)


def test_msp_mix_reaches_the_requested_mean_absolute_ratio(rng, speech):
    clean = speech(2.0)
    noise = rng.laplace(size=clean.size).astype(np.float32)
    snr = float(rng.uniform(1, 20))
    added = mix(clean, noise, snr, mode="msp") - clean
    ratio_db = 10 * np.log10(np.abs(clean.astype(np.float64)).mean() / np.abs(added.astype(np.float64)).mean())
    assert ratio_db == pytest.approx(snr, abs=0.01)
    # ... which is not the power SNR: that one doubles it and adds the signals' form factors (rms / mean|x|)
    # (a check that the two merely differ by 0.5 dB failed once: seed 854172325, 1.87 vs 2.18 dB).
    form_factor_db = 20 * np.log10(_form_factor(clean) / _form_factor(added))
    assert _snr_rms(clean, added) == pytest.approx(2 * snr + form_factor_db, abs=0.01)


def test_msp_and_rms_agree_at_0_db_and_differ_elsewhere(rng, speech):
    clean = speech(2.0)
    noise = (rng.permutation(clean) * rng.uniform(0.1, 10)).astype(np.float32)  # same amplitude distribution
    assert noise_gain(clean, noise, 0.0, "msp") == pytest.approx(noise_gain(clean, noise, 0.0, "rms"), rel=1e-5)
    snr = float(rng.choice([-5.0, 5.0, 10.0]))
    ratio = noise_gain(clean, noise, snr, "rms") / noise_gain(clean, noise, snr, "msp")
    assert ratio == pytest.approx(10 ** (snr / 20), rel=1e-5)


def test_mix_rejects_short_or_zero_energy_noise_and_unknown_modes(speech):
    clean = speech(1.0)
    with pytest.raises(NoiseError, match="shorter than speech"):
        mix(clean, np.ones(clean.size - 1, dtype=np.float32), 0.0)
    with pytest.raises(NoiseError, match="zero"):
        mix(clean, np.zeros(clean.size, dtype=np.float32), 0.0)
    with pytest.raises(ValueError, match="snr_mode = 'db'"):
        mix(clean, np.ones(clean.size, dtype=np.float32), 0.0, mode="db")


def test_pool_from_directory_reads_sorted_resampled_and_capped(tmp_path, rng, speech, write_wav):
    rates = [8000, 22050, 16000]
    waves = [speech(1.0, rate) for rate in rates]
    for name, wave, rate in zip(["b.wav", "a.flac", "c/d.wav"], waves, rates, strict=True):
        write_wav(tmp_path / "noise" / name, wave, rate)
    (tmp_path / "noise" / "README.txt").write_text("not audio")
    expected = np.concatenate([read_audio(tmp_path / "noise" / n, 16000) for n in ["a.flac", "b.wav", "c/d.wav"]])
    pool = NoisePool.from_directory(tmp_path / "noise", 16000)
    np.testing.assert_array_equal(pool.signal, expected)
    assert [p.rsplit("/", 1)[-1] for p in pool.sources] == ["a.flac", "b.wav", "d.wav"]
    capped = NoisePool.from_directory(tmp_path / "noise", 16000, minutes=1.5 / 60)
    assert capped.signal.shape[0] == 24000
    assert capped.sources == pool.sources[:2]
    np.testing.assert_allclose(capped.signal, expected[:24000], atol=1e-6)


def test_pool_errors_name_the_folder_or_file(tmp_path, speech, write_wav):
    with pytest.raises(NoiseError, match="noise folder not found"):
        NoisePool.from_directory(tmp_path / "absent", 16000)
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoiseError, match=f"{tmp_path / 'empty'}: no audio files"):
        NoisePool.from_directory(tmp_path / "empty", 16000)
    write_wav(tmp_path / "short" / "a.wav", speech(1.0))
    with pytest.raises(NoiseError, match=r"holds 1.00 s, fewer than the 12 s needed"):
        NoisePool.from_directory(tmp_path / "short", 16000, min_seconds=12)
    (tmp_path / "short" / "b.wav").write_bytes(b"RIFF....WAVEjunk")
    with pytest.raises(NoiseError, match="b.wav: cannot read audio"):
        NoisePool.from_directory(tmp_path / "short", 16000)
    with pytest.raises(NoiseError, match="empty"):
        NoisePool.from_arrays([np.zeros(0)], 16000)


def test_segments_are_contiguous_circular_and_reproducible(rng):
    signal = rng.standard_normal(5000).astype(np.float32)
    pool = NoisePool.from_arrays([signal[:2000], signal[2000:]], 16000)
    circular = np.concatenate([signal] * 4)
    for n in [1, 700, 4999, 5000, 12345]:
        seed, epoch, index = (int(x) for x in rng.integers(0, 2**31, size=3))
        seg = pool.segment(noise_rng(seed, epoch, index), n)
        assert seg.shape == (n,)
        start = int(noise_rng(seed, epoch, index).integers(0, 5000))
        np.testing.assert_array_equal(seg, circular[start : start + n])
        np.testing.assert_array_equal(seg, pool.segment(noise_rng(seed, epoch, index), n))
    draws = {pool.segment(noise_rng(1, epoch, 3), 50).tobytes() for epoch in range(10)}
    assert len(draws) == 10


def test_noisy_copies_are_reproducible_and_share_noise_across_snrs(rng, speech):
    pool = NoisePool.from_arrays([rng.standard_normal(80000)], 16000)
    clean = speech(1.5)
    copies = [noisy_copy(clean, pool, 5.0, seed=7, copy_index=c, utt_index=3) for c in range(3)]
    np.testing.assert_array_equal(copies[0], noisy_copy(clean, pool, 5.0, seed=7, copy_index=0, utt_index=3))
    assert not np.array_equal(copies[0], copies[1])
    at_0db = noisy_copy(clean, pool, 0.0, seed=7, copy_index=0, utt_index=3) - clean
    at_5db = copies[0] - clean
    np.testing.assert_allclose(at_0db / np.linalg.norm(at_0db), at_5db / np.linalg.norm(at_5db), atol=1e-5)


def test_loading_and_mixing_run_far_faster_than_real_time(tmp_path, speech, write_wav):
    """Issue 8 asks >= 500x real time per core for noise mixing + loading (measured here: ~9000x)."""
    paths = [write_wav(tmp_path / f"u{i}.wav", speech(4.0)) for i in range(20)]
    pool = NoisePool.from_arrays([speech(60.0)], 16000)
    start = time.process_time()
    audio_seconds = 0.0
    for rounds in range(5):
        for i, path in enumerate(paths):
            clean = read_audio(path, 16000, max_seconds=12.0)
            mix(clean, pool.segment(noise_rng(0, rounds, i), clean.size), 0.0)
            audio_seconds += clean.size / 16000
    cpu = time.process_time() - start
    assert audio_seconds / cpu > 500


def test_head_of_a_pool_equals_the_pool_read_with_that_cap(tmp_path, speech, write_wav):
    for name in ["a.wav", "b.wav", "c.wav"]:
        write_wav(tmp_path / "noise" / name, speech(1.0, 16000), 16000)
    pool = NoisePool.from_directory(tmp_path / "noise", 16000)
    assert pool.ends == (16000, 32000, 48000)
    for minutes in (0.5 / 60, 1.0 / 60, 1.5 / 60, 5.0):
        capped = NoisePool.from_directory(tmp_path / "noise", 16000, minutes=minutes)
        head = pool.head(minutes)
        np.testing.assert_array_equal(head.signal, capped.signal)
        assert (head.sources, head.ends) == (capped.sources, capped.ends), minutes
