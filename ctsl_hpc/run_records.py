"""What a training run records: one record per finished epoch, the run's history, the names of its metrics.

The one owner of ``history.json`` (its path is :attr:`ctsl_hpc.workdir.RunDir.history`) and of the
epoch metric names: the training loop writes them, the work directory reads a run's progress from
them, Ray Tune trials report them and the config checks ``tune.metric`` against
:data:`DEV_METRICS`. Torch-free, so the config and the management commands can read them.

Example:
    >>> record = EpochRecord(epoch=1, dev_ccc=[0.5, 0.4, 0.3], dev_score=0.4, losses={"ccc": 1.8})
    >>> record.metrics()
    {'loss/ccc': 1.8, 'dev/ccc/arousal': 0.5, 'dev/ccc/dominance': 0.4, 'dev/ccc/valence': 0.3, 'dev/ccc_mean': 0.4}
    >>> History([record]).dev_scores()
    {1: 0.4}
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ctsl_hpc.atomic_io import RecordError, atomic_write_json, read_json
from ctsl_hpc.data.corpus import ATTRIBUTES

DEV_SCORE = "dev/ccc_mean"  # the mean development CCC over the attributes: checkpoint choice and the search's metric


def dev_ccc_metric(attribute: str) -> str:
    """The metric name of one attribute's development CCC (``dev/ccc/arousal``)."""
    return f"dev/ccc/{attribute}"


def loss_metric(term: str) -> str:
    """The metric name of a loss term's epoch average (``loss/ccc``, ``loss/total``)."""
    return f"loss/{term}"


DEV_METRICS: tuple[str, ...] = (DEV_SCORE, *(dev_ccc_metric(a) for a in ATTRIBUTES))
HISTORY_REMEDY = "delete it: the run rewrites it from its newest checkpoint"


@dataclass
class EpochRecord:
    """One finished epoch; its model directory is ``RunDir.epoch_dir(epoch)``."""

    epoch: int  # 1-based
    dev_ccc: list[float]  # per attribute, in ATTRIBUTES order
    dev_score: float  # their mean
    losses: dict[str, float]  # each loss term's average over the epoch's batches

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> EpochRecord:
        """Read a saved record (fields this version no longer has, e.g. an old absolute ``model_dir``, are dropped)."""
        return cls(**{f.name: values[f.name] for f in fields(cls)})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def metrics(self) -> dict[str, float]:
        """The epoch's metrics by name: the losses, each attribute's development CCC and their mean."""
        out = {loss_metric(term): float(value) for term, value in self.losses.items()}
        out.update({dev_ccc_metric(a): float(c) for a, c in zip(ATTRIBUTES, self.dev_ccc, strict=True)})
        out[DEV_SCORE] = float(self.dev_score)
        return out


@dataclass
class History:
    """The finished epochs of a run, oldest first."""

    epochs: list[EpochRecord] = field(default_factory=list)

    @property
    def best(self) -> EpochRecord:
        """The epoch with the highest development score (the earliest of equals)."""
        return max(self.epochs, key=lambda r: r.dev_score)

    @property
    def last_epoch(self) -> int | None:
        return self.epochs[-1].epoch if self.epochs else None

    def dev_scores(self) -> dict[int, float]:
        return {r.epoch: r.dev_score for r in self.epochs}

    def to_list(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self.epochs]

    @classmethod
    def from_list(cls, records: Iterable[Mapping[str, Any]]) -> History:
        return cls([EpochRecord.from_dict(r) for r in records])


def read_history(path: str | os.PathLike[str]) -> History:
    """The history saved at ``path`` (empty when the run has not finished an epoch yet)."""
    if not os.path.isfile(path):
        return History()
    records = read_json(path, HISTORY_REMEDY)
    try:
        return History.from_list(records)
    except (KeyError, TypeError, AttributeError) as exc:
        raise RecordError(f"{path} holds no epoch records ({type(exc).__name__}: {exc}): {HISTORY_REMEDY}") from None


def write_history(path: str | os.PathLike[str], history: History) -> None:
    """Save ``history`` at ``path``, whole or not at all."""
    atomic_write_json(path, history.to_list())
