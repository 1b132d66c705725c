"""The models of the comparison (the rows of the paper's Table 1), one spec each.

``original`` is the clean teacher: trained on clean speech with the CCC loss alone. Every other
variant is a *student*, a copy of the teacher adapted to noisy speech: the regression head alone
(``RH``) or the whole model (``RM...``), with the CCC loss plus the loss terms it lists, each
weighted by a ``student.*`` config key. The term functions live in
:data:`ctsl_hpc.train.objective.LOSS_TERMS`. Each variant names the baselines Table 1 tests it
against (one marker per baseline, :func:`marked_baselines`).

A new variant is one :func:`register` call (or one line in :data:`PAPER_VARIANTS`); a new loss
term is its function in :mod:`ctsl_hpc.losses`, a line in ``LOSS_TERMS`` and a weight field in
``StudentConfig``. Torch-free: the config validates variant names against this table.

Example:
    >>> spec("RM+TL+CL").terms
    (LossTerm(name='tl', weight='lambda_tl'), LossTerm(name='cl', weight='lambda_cl'))
    >>> spec("RH").train_backbone
    False
    >>> spec("RM+TL").baselines, marked_baselines()
    (('original', 'RH', 'RM'), ('original', 'RH', 'RM'))
"""

from __future__ import annotations

from dataclasses import dataclass

TEACHER = "original"
PAPER_BASELINES = (TEACHER, "RH", "RM")  # what the paper tests its contrastive students against


@dataclass(frozen=True)
class LossTerm:
    """A term of the student loss: its function's name and the ``student.*`` key of its weight."""

    name: str
    weight: str


@dataclass(frozen=True)
class VariantSpec:
    """What one variant trains, on which input, with which loss terms."""

    name: str
    student: bool = True  # False: the clean teacher itself (trained on clean speech)
    train_backbone: bool = True  # False: only the regression head learns
    terms: tuple[LossTerm, ...] = ()  # added to the CCC loss, each times its weight
    baselines: tuple[str, ...] = PAPER_BASELINES  # the variants Table 1 tests this one against (registered before it)

    @property
    def noisy_input(self) -> bool:
        """Students learn from noisy speech, the teacher from clean speech."""
        return self.student


TL = LossTerm("tl", "lambda_tl")  # RMSE to the teacher's clean embedding
CL = LossTerm("cl", "lambda_cl")  # label-margin InfoNCE against the teacher's clean embedding

PAPER_VARIANTS: tuple[VariantSpec, ...] = (
    VariantSpec(TEACHER, student=False, baselines=()),
    VariantSpec("RH", train_backbone=False, baselines=(TEACHER,)),
    VariantSpec("RM", baselines=(TEACHER,)),  # the paper marks RM against original only
    VariantSpec("RM+TL", terms=(TL,)),
    VariantSpec("RM+CL", terms=(CL,)),
    VariantSpec("RM+TL+CL", terms=(TL, CL)),
)
_REGISTRY: dict[str, VariantSpec] = {}


def register(variant: VariantSpec) -> VariantSpec:
    """Add ``variant`` to the table (registering the same spec twice is a no-op); its baselines must be
    registered before it."""
    known = _REGISTRY.get(variant.name)
    if known is not None and known != variant:
        raise ValueError(f"variant {variant.name!r} is already registered as {known}")
    unknown = [b for b in variant.baselines if b not in _REGISTRY]
    if unknown:
        raise ValueError(f"variant {variant.name!r}: baselines {unknown} are not registered before it")
    _REGISTRY[variant.name] = variant
    return variant


def spec(name: str) -> VariantSpec:
    """The spec of variant ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown variant {name!r}; choose from {list(_REGISTRY)}") from None


def names() -> tuple[str, ...]:
    """Every variant, the teacher first, in registration order."""
    return tuple(_REGISTRY)


def marked_baselines() -> tuple[str, ...]:
    """Every variant some variant is tested against, in registration order: Table 1's markers, in this order."""
    used = {b for v in _REGISTRY.values() for b in v.baselines}
    return tuple(name for name in _REGISTRY if name in used)


def student_names() -> tuple[str, ...]:
    """The student variants (every variant but the teacher)."""
    return tuple(name for name, s in _REGISTRY.items() if s.student)


for _variant in PAPER_VARIANTS:
    register(_variant)
