"""The training data's batches: the sampler and loader of a run, and what an epoch counts of them.

``train.batch_size`` is the global batch: with several ranks each takes its share of every global
batch (:class:`ctsl_hpc.data.batching.ShardedBatchSampler`). ``train.bucket_by_length`` groups
utterances of similar length (less padding, a slightly different objective: the CCC loss and the
InfoNCE negatives are computed within a batch); without it the batches are random, as in the paper.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from ctsl_hpc.config import TrainConfig
from ctsl_hpc.data.batching import LengthBucketSampler, RandomBatchSampler, ShardedBatchSampler, UtteranceSet, collate


def make_sampler(dataset: UtteranceSet, train: TrainConfig, rank: int, world: int):
    """The run's batch sampler: length buckets (``train.bucket_by_length``) or random batches, sharded over ranks."""
    max_samples = None
    if train.max_batch_seconds is not None:
        max_samples = int(train.max_batch_seconds * dataset.sample_rate)
    cls = LengthBucketSampler if train.bucket_by_length else RandomBatchSampler
    sampler = cls(dataset.lengths, train.batch_size, train.seed, True, 1, 0, max_samples)
    return sampler if world == 1 else ShardedBatchSampler(sampler, rank, world)


def make_loader(dataset: UtteranceSet, sampler, train: TrainConfig, device: torch.device) -> DataLoader:
    """One DataLoader for the whole run (``train.num_workers`` persistent workers, pinned memory on GPUs).

    The loader re-reads its batch sampler at every ``iter()``: call ``sampler.set_epoch(epoch, start_batch)``
    and ``dataset.set_epoch(epoch)`` (shared memory, seen by running workers) before iterating. Noise is
    mixed in the workers (``UtteranceSet.__getitem__``). The loader's own generator only seeds the
    workers, so it never draws from the global RNG that the dropout masks use.
    """
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=train.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=train.num_workers > 0,
        generator=torch.Generator().manual_seed(train.seed),
    )


@dataclass
class EpochTotals:
    """The running sums of an epoch: its loss averages and padding, kept in a mid-epoch checkpoint so that a
    resumed epoch reports what an uninterrupted one does.

    Example:
        >>> totals = EpochTotals.empty(("ccc", "total"))
        >>> totals.add({"ccc": torch.tensor(0.5), "total": torch.tensor(0.75)})
        >>> totals.add({"ccc": torch.tensor(1.5), "total": torch.tensor(1.25)})
        >>> totals.losses()
        {'ccc': 1.0, 'total': 1.0}
    """

    sums: dict[str, float]
    steps: int = 0  # micro-batches
    padded: int = 0  # samples fed to the model
    real: int = 0  # of them, audio (not padding)

    @classmethod
    def empty(cls, terms: Iterable[str]) -> EpochTotals:
        return cls(dict.fromkeys(terms, 0.0))

    def count(self, batch: dict[str, torch.Tensor]) -> None:
        """Count a batch's samples and padding."""
        self.padded += batch["mask"].numel()
        self.real += int(batch["lengths"].sum())

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        """Add one micro-batch's loss terms."""
        for key, value in terms.items():
            self.sums[key] += float(value.detach())
        self.steps += 1

    def losses(self) -> dict[str, float]:
        """Each term's average over the epoch's micro-batches."""
        return {k: v / max(self.steps, 1) for k, v in self.sums.items()}

    def padding_waste(self) -> float:
        """Padded samples / samples fed."""
        return 1.0 - self.real / self.padded if self.padded else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "steps": self.steps, "padded": self.padded, "real": self.real}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EpochTotals:
        return cls(dict(values["sums"]), values["steps"], values["padded"], values["real"])


@dataclass
class Timing:
    """Wall time of an epoch's training steps (data loading included, development scoring not), on this rank."""

    seconds: float  # the start time while the epoch runs, then its duration
    steps: int = 0  # optimiser steps
    audio_samples: int = 0  # real audio fed (no padding)

    def metrics(self, sample_rate: int) -> dict[str, float]:
        """``time/step_s`` and ``throughput/audio_s_per_s`` (this rank's audio per wall second)."""
        if not self.steps:
            return {}
        return {"time/step_s": self.seconds / self.steps,
                "throughput/audio_s_per_s": self.audio_samples / sample_rate / self.seconds}
