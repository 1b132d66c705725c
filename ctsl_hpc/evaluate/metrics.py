"""The metrics of a test group on numpy arrays: CCC, Pearson r, mean bias; the 1..7 label scale."""

from __future__ import annotations

import numpy as np
import torch

from ctsl_hpc.data.corpus import ATTRIBUTES, LABEL_MAX, LABEL_MIN
from ctsl_hpc.losses import ccc


def _as_matrix(name: str, values: np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != len(ATTRIBUTES):
        raise ValueError(f"{name} must have shape [N, {len(ATTRIBUTES)}], got {array.shape}")
    if array.shape[0] == 0:
        raise ValueError(f"{name} is empty: CCC needs at least one row")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def _pair(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = _as_matrix("pred", pred)
    y = _as_matrix("target", target)
    if p.shape != y.shape:
        raise ValueError(f"pred and target shapes differ: {p.shape} vs {y.shape}")
    return p, y


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
    p, y = _pair(pred, target)
    return ccc(torch.from_numpy(p), torch.from_numpy(y), eps=0.0).numpy()


def pearson_numpy(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    r"""Pearson's correlation coefficient per attribute of ``pred`` against ``target``, in float64.

    .. math:: r_k = \frac{\text{cov}(p_k, y_k)}{\sigma_{p_k} \sigma_{y_k}}

    Unlike CCC it ignores offsets and scale: a model that ranks utterances well but is shifted or
    squeezed keeps a high r and loses CCC.

    Args:
        pred: predictions [N, 3], finite.
        target: labels [N, 3], finite.

    Returns:
        r per attribute [3] in [-1, 1]; NaN where a column of ``pred`` or ``target`` is constant
        (as ``scipy.stats.pearsonr`` and ``audmetric.pearson_cc``).

    Example:
        >>> y = np.array([[1.0, 2.0, 3.0], [3.0, 4.0, 7.0], [2.0, 5.0, 4.0]])
        >>> pearson_numpy(0.5 * y - 2.0, y)  # shifted and squeezed: r stays 1
        array([1., 1., 1.])
        >>> pearson_numpy(np.full((3, 3), 2.0), y)  # constant predictions: undefined
        array([nan, nan, nan])
    """
    p, y = _pair(pred, target)
    pc, yc = p - p.mean(axis=0), y - y.mean(axis=0)
    scale = np.sqrt((pc * pc).sum(axis=0) * (yc * yc).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(scale > 0, (pc * yc).sum(axis=0) / np.where(scale > 0, scale, 1.0), np.nan)
    return np.clip(r, -1.0, 1.0)


def bias_numpy(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    r"""Mean bias per attribute: the mean of prediction minus label, in the scale of the inputs.

    .. math:: b_k = \frac{1}{N} \sum_i (p_{ik} - y_{ik})

    Args:
        pred: predictions [N, 3], finite (pass both on the 1..7 label scale: :func:`to_label_scale`).
        target: labels [N, 3], finite, same scale.

    Returns:
        bias per attribute [3], finite; negative when the model predicts too low.

    Example:
        >>> y = np.array([[1.0, 2.0, 3.0], [3.0, 4.0, 7.0]])
        >>> bias_numpy(y - np.array([1.5, 0.0, -0.5]), y)
        array([-1.5,  0. ,  0.5])
    """
    p, y = _pair(pred, target)
    return (p - y).mean(axis=0)


def to_label_scale(values: np.ndarray) -> np.ndarray:
    """Model outputs or scaled labels on [0, 1] back to the 1..7 label scale, ``1 + 6 x``.

    Example:
        >>> to_label_scale(np.array([0.0, 0.5, 1.0]))
        array([1., 4., 7.])
    """
    return LABEL_MIN + (LABEL_MAX - LABEL_MIN) * np.asarray(values, dtype=np.float64)
