"""The six models of the paper and what each one trains.

``original`` is the clean teacher (no adaptation). The students start from the teacher and are
trained on noisy speech: ``RH`` retrains the head only, the ``RM`` family retrains the whole model
with the transfer (TL) and/or contrastive (CL) terms switched on.
"""

from __future__ import annotations

from dataclasses import dataclass

from ctsl_hpc.config import VARIANTS, ExperimentConfig


@dataclass(frozen=True)
class Recipe:
    """Everything the training loop needs to know about one model it trains."""

    name: str
    epochs: int
    lr: float
    lr_decay: float
    noisy_input: bool  # students see noisy speech, the teacher clean speech
    train_backbone: bool  # False: only the regression head is trained (RH)
    lambda_tl: float
    lambda_cl: float
    margin: float  # on the [0, 1] label scale
    temperature: float

    @property
    def needs_teacher(self) -> bool:
        return self.lambda_tl > 0 or self.lambda_cl > 0


def recipe(variant: str, cfg: ExperimentConfig) -> Recipe:
    """The recipe of ``variant`` (``teacher`` or a student variant) under ``cfg``."""
    s = cfg.student
    if variant in ("teacher", "original"):
        t = cfg.train
        return Recipe("teacher", t.epochs, t.lr, t.lr_decay, False, True, 0.0, 0.0, s.margin / 6, s.temperature)
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {list(VARIANTS)}")
    lambda_tl = s.lambda_tl if "TL" in variant else 0.0
    lambda_cl = s.lambda_cl if "CL" in variant else 0.0
    return Recipe(
        name=variant,
        epochs=s.epochs,
        lr=s.lr,
        lr_decay=s.lr_decay,
        noisy_input=True,
        train_backbone=variant != "RH",
        lambda_tl=lambda_tl,
        lambda_cl=lambda_cl,
        margin=s.margin / 6,
        temperature=s.temperature,
    )
