"""The losses against independent references (audmetric, info-nce-pytorch, float64 definitions)."""

import audmetric
import numpy as np
import pytest
import torch
from info_nce import info_nce

from ctsl_hpc.losses import DEFAULT_MARGIN, MARGIN_TOLERANCE, ccc, ccc_loss, contrastive_loss, transfer_loss


def test_ccc_matches_audmetric_per_attribute(rng):
    n = int(rng.integers(5, 200))
    target = rng.uniform(0, 1, size=(n, 3))
    pred = 0.6 * target + rng.normal(0, 0.2, size=(n, 3)) + rng.normal(0, 0.1, size=3)
    ours = ccc(torch.tensor(pred), torch.tensor(target)).numpy()
    reference = [audmetric.concordance_cc(target[:, k], pred[:, k]) for k in range(3)]
    np.testing.assert_allclose(ours, reference, rtol=1e-6, atol=1e-9)


def test_ccc_loss_is_sum_of_one_minus_ccc(rng):
    pred, target = torch.tensor(rng.random((16, 3))), torch.tensor(rng.random((16, 3)))
    assert ccc_loss(pred, target).item() == pytest.approx((3 - ccc(pred, target).sum()).item())


def test_ccc_of_constant_predictions_is_zero_and_finite(rng):
    target = torch.tensor(rng.random((10, 3)))
    pred = torch.full((10, 3), 0.5, dtype=torch.float64, requires_grad=True)
    value = ccc(pred, target)
    assert torch.allclose(value, torch.zeros(3, dtype=torch.float64))
    ccc_loss(pred, target).backward()
    assert torch.isfinite(pred.grad).all()


def test_ccc_batch_of_one_is_finite():
    pred, target = torch.tensor([[0.2, 0.3, 0.4]]), torch.tensor([[0.5, 0.5, 0.5]])
    assert torch.isfinite(ccc(pred, target)).all()


def test_transfer_loss_is_rmse_with_teacher_detached(rng):
    h_t = torch.tensor(rng.normal(size=(8, 32)), requires_grad=True)
    h_s = torch.tensor(rng.normal(size=(8, 32)), requires_grad=True)
    loss = transfer_loss(h_t, h_s)
    expected = np.sqrt(np.mean((h_t.detach().numpy() - h_s.detach().numpy()) ** 2))
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    loss.backward()
    assert h_t.grad is None and h_s.grad is not None


def reference_contrastive(h_s, h_t, labels, margin, temperature):
    """Anchor by anchor with info-nce-pytorch, negatives chosen by the label margin in float64."""
    losses = []
    for i in range(len(h_s)):
        far = np.all(np.abs(labels - labels[i]) >= margin - MARGIN_TOLERANCE, axis=1)
        far[i] = False
        if far.any():
            losses.append(
                info_nce(h_s[i : i + 1], h_t[i : i + 1], h_s[torch.tensor(far)], temperature=temperature).item()
            )
    return float(np.mean(losses)) if losses else 0.0


@pytest.mark.parametrize("batch", [2, 7, 32])
def test_contrastive_loss_matches_info_nce_pytorch(rng, batch):
    h_s = torch.tensor(rng.normal(size=(batch, 16)))
    h_t = h_s + torch.tensor(rng.normal(0, 0.5, size=(batch, 16)))
    labels = rng.integers(0, 13, size=(batch, 3)) / 12  # the 1..7 grid in half steps, scaled
    ours = contrastive_loss(h_s, h_t, torch.tensor(labels), DEFAULT_MARGIN, 0.1).item()
    assert ours == pytest.approx(reference_contrastive(h_s, h_t, labels, DEFAULT_MARGIN, 0.1), rel=1e-6)


def test_contrastive_loss_is_zero_when_no_anchor_has_a_negative(rng):
    h_s = torch.tensor(rng.normal(size=(6, 8)), requires_grad=True)
    labels = torch.full((6, 3), 0.5)
    loss = contrastive_loss(h_s, h_s.detach(), labels)
    assert loss.item() == 0.0
    loss.backward()  # still part of the graph
    assert torch.equal(h_s.grad, torch.zeros_like(h_s))


def test_contrastive_loss_batch_of_one_is_zero():
    assert contrastive_loss(torch.ones(1, 4), torch.ones(1, 4), torch.zeros(1, 3)).item() == 0.0


def test_contrastive_loss_needs_distance_on_all_three_attributes():
    h = torch.eye(2, 4)
    near_on_one = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 0.01]])
    far_on_all = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    assert contrastive_loss(h, h, near_on_one).item() == 0.0
    assert contrastive_loss(h, h, far_on_all).item() > 0.0
