"""CCC, Pearson r and mean bias on numpy arrays against audmetric, scipy and numpy, and their edge cases."""

from __future__ import annotations

import audmetric
import numpy as np
import pytest
from scipy import stats

from ctsl_hpc.data.corpus import ATTRIBUTES
from ctsl_hpc.evaluate.metrics import bias_numpy, ccc_numpy, pearson_numpy, to_label_scale


@pytest.mark.parametrize("n", [2, 7, 300])
def test_ccc_matches_audmetric_on_fresh_random_inputs(n: int, rng: np.random.Generator) -> None:
    target = rng.uniform(1, 7, size=(n, 3))
    pred = 0.6 * target + rng.normal(0.5, 1.0, size=(n, 3))
    got = ccc_numpy(pred, target)
    expected = [audmetric.concordance_cc(target[:, k], pred[:, k]) for k in range(3)]
    assert got.shape == (len(ATTRIBUTES),)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


def test_ccc_is_symmetric_in_prediction_and_target(rng: np.random.Generator) -> None:
    a, b = rng.normal(size=(50, 3)), rng.normal(size=(50, 3))
    np.testing.assert_allclose(ccc_numpy(a, b), ccc_numpy(b, a), rtol=1e-12)


def test_constant_predictions_give_zero(rng: np.random.Generator) -> None:
    target = rng.uniform(0, 1, size=(20, 3))
    pred = np.full((20, 3), 0.5)
    np.testing.assert_array_equal(ccc_numpy(pred, target), np.zeros(3))


def test_perfect_predictions_give_one(rng: np.random.Generator) -> None:
    target = rng.uniform(0, 1, size=(20, 3))
    np.testing.assert_allclose(ccc_numpy(target.copy(), target), np.ones(3), rtol=1e-12)


def test_shifted_predictions_are_penalised_unlike_pearson(rng: np.random.Generator) -> None:
    target = rng.uniform(0, 1, size=(40, 3))
    ccc = ccc_numpy(target + 1.0, target)
    assert np.all(ccc < 0.5)


def test_constant_and_equal_columns_give_nan_like_audmetric() -> None:
    pred = np.full((5, 3), 2.0)
    target = np.full((5, 3), 2.0)
    target[:, 1] = np.arange(5)
    got = ccc_numpy(pred, target)
    assert np.isnan(got[0]) and np.isnan(got[2]) and got[1] == 0.0
    assert np.isnan(audmetric.concordance_cc(target[:, 0], pred[:, 0]))


@pytest.mark.parametrize(
    ("pred", "target", "message"),
    [
        (np.zeros((4, 2)), np.zeros((4, 2)), "shape"),
        (np.zeros((0, 3)), np.zeros((0, 3)), "empty"),
        (np.zeros((4, 3)), np.zeros((5, 3)), "differ"),
        (np.full((4, 3), np.nan), np.zeros((4, 3)), "NaN"),
    ],
)
def test_bad_inputs_raise_clear_errors(pred: np.ndarray, target: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ccc_numpy(pred, target)


@pytest.mark.parametrize("n", [2, 9, 300])
def test_pearson_r_matches_scipy_and_numpy_on_fresh_random_inputs(n: int, rng: np.random.Generator) -> None:
    target = rng.uniform(1, 7, size=(n, 3))
    pred = rng.uniform(-1, 1, 3) * target + rng.normal(rng.uniform(-2, 2), rng.uniform(0.1, 2), size=(n, 3))
    got = pearson_numpy(pred, target)
    np.testing.assert_allclose(got, [stats.pearsonr(pred[:, k], target[:, k]).statistic for k in range(3)], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got, [np.corrcoef(pred[:, k], target[:, k])[0, 1] for k in range(3)], rtol=1e-9, atol=1e-12)
    assert got.dtype == np.float64 and np.all(np.abs(got) <= 1.0)


def test_pearson_r_ignores_offset_and_scale_that_ccc_punishes(rng: np.random.Generator) -> None:
    target = rng.uniform(1, 7, size=(50, 3))
    squeezed = 0.3 * target - 2.0
    np.testing.assert_allclose(pearson_numpy(squeezed, target), np.ones(3), rtol=1e-12)
    assert np.all(ccc_numpy(squeezed, target) < 0.2)


def test_pearson_r_is_nan_where_a_column_is_constant_like_audmetric(rng: np.random.Generator) -> None:
    target = rng.uniform(1, 7, size=(6, 3))
    pred = rng.uniform(1, 7, size=(6, 3))
    pred[:, 1] = 4.0
    got = pearson_numpy(pred, target)
    assert np.isnan(got[1]) and np.isfinite(got[[0, 2]]).all()
    assert np.isnan(audmetric.pearson_cc(target[:, 1], pred[:, 1]))


@pytest.mark.parametrize("n", [1, 7, 300])
def test_bias_is_the_mean_of_prediction_minus_label_on_fresh_random_inputs(n: int, rng: np.random.Generator) -> None:
    target, pred = rng.uniform(0, 1, size=(n, 3)), rng.uniform(0, 1, size=(n, 3))
    got = bias_numpy(to_label_scale(pred), to_label_scale(target))
    expected = [np.mean([6 * (pred[i, k] - target[i, k]) for i in range(n)]) for k in range(3)]
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(to_label_scale(target), 1 + 6 * target)


def test_r_and_bias_reject_bad_inputs_like_ccc() -> None:
    for metric in (pearson_numpy, bias_numpy):
        with pytest.raises(ValueError, match="differ"):
            metric(np.zeros((4, 3)), np.zeros((5, 3)))
        with pytest.raises(ValueError, match="NaN"):
            metric(np.full((4, 3), np.nan), np.zeros((4, 3)))
