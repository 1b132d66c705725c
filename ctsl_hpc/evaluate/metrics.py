"""Evaluation constants and the concordance correlation coefficient (CCC) on numpy arrays."""

from __future__ import annotations

import numpy as np

from ctsl_hpc.data.corpus import ATTRIBUTES

__all__ = ["ATTRIBUTES", "CONDITIONS", "SNR_OF", "ccc_numpy"]

CONDITIONS: tuple[str, str, str, str] = ("clean", "snr10", "snr5", "snr0")
"""Test conditions: clean speech and noisy speech at 10, 5 and 0 dB SNR."""

SNR_OF: dict[str, float | None] = {"clean": None, "snr10": 10.0, "snr5": 5.0, "snr0": 0.0}
"""SNR in dB of each condition (None = no noise added)."""


def _as_matrix(name: str, values: np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != len(ATTRIBUTES):
        raise ValueError(f"{name} must have shape [N, {len(ATTRIBUTES)}], got {array.shape}")
    if array.shape[0] == 0:
        raise ValueError(f"{name} is empty: CCC needs at least one row")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def ccc_numpy(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """CCC per attribute of ``pred`` against ``target`` (both [N, 3], same scale), in float64.

    CCC_k = 2 cov(p_k, y_k) / (var(p_k) + var(y_k) + (mean(p_k) - mean(y_k))^2) with biased
    (1/N) moments. Constant predictions give 0; the value is NaN only when the denominator is 0
    (predictions and targets constant and equal), as ``audmetric.concordance_cc`` does.
    """
    p = _as_matrix("pred", pred)
    y = _as_matrix("target", target)
    if p.shape != y.shape:
        raise ValueError(f"pred and target shapes differ: {p.shape} vs {y.shape}")
    p_mean, y_mean = p.mean(axis=0), y.mean(axis=0)
    p_dev, y_dev = p - p_mean, y - y_mean
    covariance = (p_dev * y_dev).mean(axis=0)
    denominator = (p_dev**2).mean(axis=0) + (y_dev**2).mean(axis=0) + (p_mean - y_mean) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, 2.0 * covariance / denominator, np.nan)
