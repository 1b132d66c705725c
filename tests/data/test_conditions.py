"""The test conditions: one SNR each, clean the only one without noise, and the names tables print."""

from __future__ import annotations

from ctsl_hpc.data.conditions import CLEAN, CONDITIONS, HARDEST, NOISY_CONDITIONS, SNR_OF, label


def test_conditions_have_an_snr_each_and_only_clean_is_noise_free() -> None:
    assert set(SNR_OF) == set(CONDITIONS)
    assert [c for c in CONDITIONS if SNR_OF[c] is None] == [CLEAN]
    assert set(NOISY_CONDITIONS) == set(CONDITIONS) - {CLEAN}
    assert SNR_OF[HARDEST] == min(SNR_OF[c] for c in NOISY_CONDITIONS) == 0.0


def test_labels_name_the_snr_in_db() -> None:
    assert [label(c) for c in CONDITIONS] == ["clean", "10 dB", "5 dB", "0 dB"]
