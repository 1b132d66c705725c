"""The test conditions (torch-free: the dry run's cost estimate counts them too)."""

from __future__ import annotations

CONDITIONS: tuple[str, str, str, str] = ("clean", "snr10", "snr5", "snr0")
"""Test conditions: clean speech and noisy speech at 10, 5 and 0 dB SNR."""

SNR_OF: dict[str, float | None] = {"clean": None, "snr10": 10.0, "snr5": 5.0, "snr0": 0.0}
"""SNR in dB of each condition (None = no noise added)."""
