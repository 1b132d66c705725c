"""What the training loop needs to know about the model it trains: a variant's spec under a config.

The spec (:mod:`ctsl_hpc.variants`) says what a variant trains and which loss terms it adds; the
config says the epochs, learning rate and each term's weight. The teacher trains on clean speech
with the ``train.*`` settings, every student on noisy speech with the ``student.*`` settings.
"""

from __future__ import annotations

from dataclasses import dataclass

from ctsl_hpc import variants
from ctsl_hpc.config import ExperimentConfig
from ctsl_hpc.data.corpus import label_distance_on_model_scale


@dataclass(frozen=True)
class Recipe:
    """Everything the training loop needs to know about one model it trains."""

    name: str
    epochs: int
    lr: float
    lr_decay: float
    noisy_input: bool  # students see noisy speech, the teacher clean speech
    train_backbone: bool  # False: only the regression head is trained (RH)
    weights: dict[str, float]  # loss term -> its weight (terms with weight 0 are skipped)
    margin: float  # on the [0, 1] label scale
    temperature: float

    @property
    def needs_teacher(self) -> bool:
        """Whether a loss term compares with the teacher's clean embeddings."""
        return any(weight > 0 for weight in self.weights.values())


def recipe(variant: str, cfg: ExperimentConfig) -> Recipe:
    """The recipe of ``variant`` (the teacher, :data:`ctsl_hpc.variants.TEACHER`, or a student) under ``cfg``."""
    spec = variants.spec(variant)
    s = cfg.student
    section = s if spec.student else cfg.train
    return Recipe(
        name=spec.name,
        epochs=section.epochs,
        lr=section.lr,
        lr_decay=section.lr_decay,
        noisy_input=spec.noisy_input,
        train_backbone=spec.train_backbone,
        weights={term.name: float(getattr(s, term.weight)) for term in spec.terms},
        margin=label_distance_on_model_scale(s.margin),
        temperature=s.temperature,
    )
