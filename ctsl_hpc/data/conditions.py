"""The test conditions: clean speech, and speech mixed with held-out noise at 10, 5 and 0 dB SNR.

Torch-free and low in the layers: the config checks ``eval.noisy_roots`` against these names, the
dry run's cost counts them, the evaluation scores every model under each.

Example:
    >>> NOISY_CONDITIONS, label(HARDEST)
    (('snr10', 'snr5', 'snr0'), '0 dB')
"""

from __future__ import annotations

CLEAN = "clean"
SNR_OF: dict[str, float | None] = {CLEAN: None, "snr10": 10.0, "snr5": 5.0, "snr0": 0.0}
"""SNR in dB of each condition (None = no noise added), in the order they are scored."""

CONDITIONS: tuple[str, ...] = tuple(SNR_OF)
NOISY_CONDITIONS: tuple[str, ...] = tuple(c for c in CONDITIONS if SNR_OF[c] is not None)
HARDEST = min(NOISY_CONDITIONS, key=lambda c: SNR_OF[c])  # the lowest SNR (the paper's matched 0 dB)


def label(condition: str) -> str:
    """How tables and plots name a condition: ``clean``, ``10 dB``, ..."""
    snr = SNR_OF[condition]
    return condition if snr is None else f"{snr:g} dB"
