"""The three losses of CTSL: CCC, transfer (RMSE) and label-margin InfoNCE.

Conventions (METHOD.md): predictions and labels are [B, 3] tensors in arousal, dominance, valence
order on the model's [0, 1] scale; embeddings are [B, D].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_MARGIN = 0.5 / 6  # 0.5 on the 1..7 scale, expressed on the [0, 1] scale


def ccc(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Concordance correlation coefficient per attribute over the batch, biased variances.

    ``ccc_k = 2 cov(p_k, y_k) / (var(p_k) + var(y_k) + (mean(p_k) - mean(y_k))^2)``.
    ``eps`` keeps the ratio finite when both columns are constant and equal (then ccc = 0).

    >>> y = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.4, 0.9]])
    >>> ccc(y, y)
    tensor([1., 1., 1.])
    """
    pred_mean, target_mean = pred.mean(dim=0), target.mean(dim=0)
    pred_c, target_c = pred - pred_mean, target - target_mean
    covariance = (pred_c * target_c).mean(dim=0)
    denominator = pred_c.pow(2).mean(dim=0) + target_c.pow(2).mean(dim=0) + (pred_mean - target_mean).pow(2)
    return 2 * covariance / (denominator + eps)


def ccc_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``sum_k (1 - ccc_k)`` over arousal, dominance and valence."""
    return (1 - ccc(pred, target)).sum()


def transfer_loss(h_teacher: torch.Tensor, h_student: torch.Tensor) -> torch.Tensor:
    """RMSE between the teacher's clean and the student's noisy embeddings (teacher detached)."""
    return torch.sqrt(F.mse_loss(h_student, h_teacher.detach()))


def contrastive_loss(
    h_student: torch.Tensor,
    h_teacher: torch.Tensor,
    labels: torch.Tensor,
    margin: float = DEFAULT_MARGIN,
    temperature: float = 0.1,
) -> torch.Tensor:
    """Label-margin InfoNCE of METHOD.md.

    Anchor i: query ``h_student[i]``, positive ``h_teacher[i]`` (detached), negatives
    ``h_student[j]`` (j != i) whose labels differ from i's by at least ``margin`` on all three
    attributes. Cosine similarity / ``temperature``; the mean over anchors with at least one
    negative, 0 when no anchor has one.
    """
    query = F.normalize(h_student, dim=-1)
    positive = F.normalize(h_teacher.detach(), dim=-1)
    positive_logit = (query * positive).sum(dim=-1, keepdim=True) / temperature  # [B, 1]
    negative_logits = query @ query.T / temperature  # [B, B]
    distance = (labels.unsqueeze(1) - labels.unsqueeze(0)).abs()  # [B, B, 3]
    is_negative = (distance >= margin - 1e-6).all(dim=-1)  # tolerance: 0.5 steps on the 1..7 grid
    is_negative.fill_diagonal_(False)
    has_negative = is_negative.any(dim=1)
    if not bool(has_negative.any()):
        return h_student.sum() * 0.0
    negative_logits = negative_logits.masked_fill(~is_negative, float("-inf"))
    logits = torch.cat([positive_logit, negative_logits], dim=1)[has_negative]
    return -(logits[:, 0] - torch.logsumexp(logits, dim=1)).mean()
