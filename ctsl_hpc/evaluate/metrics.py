"""Evaluation constants and the concordance correlation coefficient (CCC) on numpy arrays."""

from __future__ import annotations

import numpy as np
import torch

from ctsl_hpc.data.corpus import ATTRIBUTES
from ctsl_hpc.evaluate.conditions import CONDITIONS, SNR_OF
from ctsl_hpc.losses import ccc

__all__ = ["ATTRIBUTES", "CONDITIONS", "SNR_OF", "ccc_numpy"]


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
    r"""CCC per attribute of ``pred`` against ``target``, in float64 (the training loss's formula,
    :func:`ctsl_hpc.losses.ccc`, without its epsilon).

    .. math:: \text{CCC}_k = \frac{2\,\text{cov}(p_k, y_k)}{\sigma^2_{p_k} + \sigma^2_{y_k} + (\mu_{p_k} - \mu_{y_k})^2}

    with biased (1/N) moments, as ``audmetric.concordance_cc`` computes it.

    Args:
        pred: predictions [N, 3], finite.
        target: labels [N, 3] on the same scale, finite.

    Returns:
        CCC per attribute [3] in [-1, 1]; 0 for constant predictions; NaN only where the
        denominator is 0 (predictions and labels constant and equal).

    Example:
        >>> y = np.array([[1.0, 2.0, 3.0], [3.0, 4.0, 7.0]])
        >>> ccc_numpy(y, y)
        array([1., 1., 1.])
        >>> ccc_numpy(np.full((2, 3), 2.0), y)  # constant predictions
        array([0., 0., 0.])
    """
    p = _as_matrix("pred", pred)
    y = _as_matrix("target", target)
    if p.shape != y.shape:
        raise ValueError(f"pred and target shapes differ: {p.shape} vs {y.shape}")
    return ccc(torch.from_numpy(p), torch.from_numpy(y), eps=0.0).numpy()
