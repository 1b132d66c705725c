"""The three losses of CTSL: CCC, transfer (RMSE) and label-margin InfoNCE.

Conventions (METHOD.md): predictions and labels are [B, 3] tensors in arousal, dominance, valence
order on the model's [0, 1] scale; embeddings are [B, D].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ctsl_hpc.data.corpus import label_distance_on_model_scale

DEFAULT_MARGIN = label_distance_on_model_scale(0.5)  # 0.5 on the 1..7 scale, expressed on the [0, 1] scale
MARGIN_TOLERANCE = 1e-6  # a label distance this much under the margin still counts (exact 0.5 steps on the 1..7 grid)


def ccc(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    r"""Concordance correlation coefficient per attribute over the batch, biased variances.

    .. math:: \text{CCC}_k = \frac{2\,\text{cov}(p_k, y_k)}{\sigma^2_{p_k} + \sigma^2_{y_k} + (\mu_{p_k} - \mu_{y_k})^2}

    Args:
        pred: predictions [B, 3].
        target: labels [B, 3], same scale.
        eps: keeps the ratio finite when both columns are constant and equal (then ccc = 0).

    Returns:
        CCC per column [3], in [-1, 1] (1: perfect agreement, 0: none).

    Example:
        >>> y = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.4, 0.9]])
        >>> ccc(y, y).round(decimals=4)
        tensor([1., 1., 1.])
        >>> ccc(y + 0.2, y).round(decimals=4)  # an offset of 0.2 costs concordance, not correlation
        tensor([0.6667, 0.3333, 0.8182])
    """
    pred_mean, target_mean = pred.mean(dim=0), target.mean(dim=0)
    pred_c, target_c = pred - pred_mean, target - target_mean
    covariance = (pred_c * target_c).mean(dim=0)
    denominator = pred_c.pow(2).mean(dim=0) + target_c.pow(2).mean(dim=0) + (pred_mean - target_mean).pow(2)
    return 2 * covariance / (denominator + eps)


def ccc_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    r"""The CCC loss: :math:`L_{CCC} = \sum_k (1 - \text{CCC}_k)` over arousal, dominance and valence.

    Args:
        pred: predictions [B, 3].
        target: labels [B, 3].

    Returns:
        A scalar in [0, 6] (0: perfect agreement on every attribute).

    Example:
        >>> y = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.4, 0.9]])
        >>> ccc_loss(y, y).round(decimals=4)
        tensor(0.)
        >>> ccc_loss(-y, y).round(decimals=4)  # every CCC below 0: the loss exceeds 3
        tensor(3.3456)
    """
    return (1 - ccc(pred, target)).sum()


def transfer_loss(h_teacher: torch.Tensor, h_student: torch.Tensor) -> torch.Tensor:
    r"""The transfer loss: RMSE between the teacher's clean and the student's noisy embeddings.

    .. math:: L_{TL} = \sqrt{\frac{1}{BD} \sum_{i,d} (h^T_{id} - h^S_{id})^2}

    Args:
        h_teacher: the teacher's embeddings [B, D] (detached: no gradient reaches the teacher).
        h_student: the student's embeddings [B, D].

    Returns:
        A scalar >= 0.

    Example:
        >>> h = torch.zeros(2, 4)
        >>> transfer_loss(h, h + 3.0)
        tensor(3.)
    """
    return torch.sqrt(F.mse_loss(h_student, h_teacher.detach()))


def margin_negatives(labels: torch.Tensor, margin: float = DEFAULT_MARGIN) -> torch.Tensor:
    r"""Which utterances are valid InfoNCE negatives of which: :math:`N_i = \{j \ne i : |y_j - y_i| \ge m \text{ on all attributes}\}`.

    Args:
        labels: [B, 3] on the [0, 1] scale.
        margin: the label distance a negative needs on every attribute (less ``MARGIN_TOLERANCE``,
            which keeps exact 0.5 steps on the 1..7 grid).

    Returns:
        A bool matrix [B, B], row i marking the negatives of anchor i; the anchors that count are
        the rows with at least one True.

    Example:
        >>> labels = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 1.0]])
        >>> margin_negatives(labels, 0.5).any(dim=1)  # the third differs from the first on two attributes only
        tensor([ True,  True, False])
    """
    distance = (labels.unsqueeze(1) - labels.unsqueeze(0)).abs()  # [B, B, 3]
    is_negative = (distance >= margin - MARGIN_TOLERANCE).all(dim=-1)
    return is_negative.fill_diagonal_(False)


def contrastive_loss(
    h_student: torch.Tensor,
    h_teacher: torch.Tensor,
    labels: torch.Tensor,
    margin: float = DEFAULT_MARGIN,
    temperature: float = 0.1,
) -> torch.Tensor:
    r"""Label-margin InfoNCE of METHOD.md.

    .. math:: L_{CL} = -\frac{1}{|A|} \sum_{i \in A} \log \frac{e^{s(h^S_i, h^T_i)/\tau}}
              {e^{s(h^S_i, h^T_i)/\tau} + \sum_{j \in N_i} e^{s(h^S_i, h^S_j)/\tau}}

    Anchor i: query ``h_student[i]``, positive ``h_teacher[i]`` (detached), negatives ``h_student[j]``
    (j != i) whose labels differ from i's by at least ``margin`` on all three attributes (:math:`N_i`,
    :func:`margin_negatives`);
    :math:`s` is the cosine similarity; :math:`A` the anchors with at least one negative.

    Args:
        h_student: the student's (noisy) embeddings [B, D].
        h_teacher: the teacher's (clean) embeddings [B, D].
        labels: [B, 3] on the [0, 1] scale.
        margin: the label distance a negative needs on every attribute.
        temperature: the softmax temperature.

    Returns:
        A scalar >= 0; 0 when no anchor has a negative.

    Example:
        >>> h = torch.eye(2)
        >>> labels = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
        >>> contrastive_loss(h, h, labels, temperature=1.0)  # positives aligned, negatives orthogonal
        tensor(0.3133)
        >>> contrastive_loss(h, h, labels * 0.01)  # labels too close: no negative anywhere
        tensor(0.)
    """
    query = F.normalize(h_student, dim=-1)
    positive = F.normalize(h_teacher.detach(), dim=-1)
    positive_logit = (query * positive).sum(dim=-1, keepdim=True) / temperature  # [B, 1]
    negative_logits = query @ query.T / temperature  # [B, B]
    is_negative = margin_negatives(labels, margin)
    has_negative = is_negative.any(dim=1)
    if not bool(has_negative.any()):
        return h_student.sum() * 0.0
    negative_logits = negative_logits.masked_fill(~is_negative, float("-inf"))
    logits = torch.cat([positive_logit, negative_logits], dim=1)[has_negative]
    return -(logits[:, 0] - torch.logsumexp(logits, dim=1)).mean()
