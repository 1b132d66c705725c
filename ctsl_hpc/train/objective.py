"""The training objective: the CCC loss plus the variant's weighted terms, on the global batch.

:data:`LOSS_TERMS` maps each term a variant may list (:mod:`ctsl_hpc.variants`) to its function of
the batch's student and teacher embeddings; a new term is one function in :mod:`ctsl_hpc.losses`
and one line here. Every term is reported in every step (0 where the variant does not use it), so
all runs log the same metric names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ctsl_hpc.losses import ccc_loss, contrastive_loss, transfer_loss
from ctsl_hpc.train.recipe import Recipe

TeacherEmbedder = Callable[[dict[str, torch.Tensor]], torch.Tensor]


@dataclass(frozen=True)
class TermInputs:
    """What a loss term sees: the batch's student and teacher embeddings, labels and the recipe."""

    h_student: torch.Tensor
    h_teacher: torch.Tensor
    labels: torch.Tensor
    recipe: Recipe


LOSS_TERMS: dict[str, Callable[[TermInputs], torch.Tensor]] = {
    "tl": lambda x: transfer_loss(x.h_teacher, x.h_student),
    "cl": lambda x: contrastive_loss(x.h_student, x.h_teacher, x.labels, x.recipe.margin, x.recipe.temperature),
}
REPORTED = ("ccc", *LOSS_TERMS, "total")  # the loss names every step reports


def student_loss(
    out,
    batch: dict[str, torch.Tensor],
    recipe: Recipe,
    teacher_embed: TeacherEmbedder | None,
    gather: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
) -> dict[str, torch.Tensor]:
    """The loss terms of one batch (:data:`REPORTED`), ``total`` the weighted sum.

    ``gather`` (``engine.gather``) collects every rank's rows, so the terms are those of the global batch.
    """
    pred, embedding, labels = gather(out.pred.float()), gather(out.embedding.float()), gather(batch["labels"])
    terms = {"ccc": ccc_loss(pred, labels)}
    zero = terms["ccc"].new_zeros(())
    terms.update({name: zero for name in LOSS_TERMS})
    total = terms["ccc"]
    if recipe.needs_teacher:
        if teacher_embed is None:
            raise ValueError(f"variant {recipe.name} needs the teacher's embeddings")
        h_teacher = gather(teacher_embed(batch).to(out.embedding.device, torch.float32))
        inputs = TermInputs(embedding, h_teacher, labels, recipe)
        for name, weight in recipe.weights.items():
            if weight > 0:
                terms[name] = LOSS_TERMS[name](inputs)
                total = total + weight * terms[name]
    terms["total"] = total
    return terms
