"""Datasets, collation and batch samplers (length buckets, plain random) for training and evaluation."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .audio import AudioError, WaveformStats, audio_num_samples, read_audio
from .corpus import Utterance
from .noise import NoisePool, mix, noise_rng, noisy_copy
from .packed import PackedCorpus

log = logging.getLogger(__name__)

BAD_AUDIO_POLICIES = ("error", "skip")


class UtteranceSet(Dataset):
    """Clean (and optionally noisy) waveforms with labels scaled to [0, 1].

    Waves are preloaded (`preload=True`, small corpora) or read in `__getitem__`. With a noise pool and
    `snr_db`, item `i` of epoch `e` is mixed with the segment drawn from `noise_rng(seed, e, i)`, so the
    draw does not depend on DataLoader workers or batch order. With `copy_index` set, the draw is the
    fixed test copy `noisy_copy(..., seed, copy_index, i)` and ignores the epoch. Mixing is done on the raw
    waves; both clean and noisy are then normalised with `stats` when given.

    With `store` (a staged :class:`~ctsl_hpc.data.packed.PackedCorpus`), the waves it holds are read from it
    instead of their files: the same samples. The epoch lives in shared memory, so `set_epoch` reaches
    persistent DataLoader workers too.
    Bad audio (unreadable, silent, shorter than `min_seconds`) raises AudioError, or with
    `on_bad_audio="skip"` is dropped with a logged count (see `skipped`). Without preloading, only header
    checks (readable, long enough) can be done up front; content errors surface when the item is read.
    """

    def __init__(
        self,
        utterances: Sequence[Utterance],
        sample_rate: int = 16000,
        max_seconds: float | None = None,
        min_seconds: float = 0.0,
        stats: WaveformStats | None = None,
        preload: bool = False,
        noise: NoisePool | None = None,
        snr_db: float | None = None,
        snr_mode: str = "rms",
        seed: int = 0,
        copy_index: int | None = None,
        on_bad_audio: str = "error",
        store: PackedCorpus | None = None,
    ) -> None:
        if on_bad_audio not in BAD_AUDIO_POLICIES:
            raise ValueError(f"on_bad_audio = {on_bad_audio!r} is not one of {', '.join(BAD_AUDIO_POLICIES)}")
        if (noise is None) != (snr_db is None):
            raise ValueError("UtteranceSet: give both a noise pool and snr_db, or neither")
        if noise is not None and noise.sample_rate != sample_rate:
            raise ValueError(f"noise pool is at {noise.sample_rate} Hz, the dataset at {sample_rate} Hz")
        self.sample_rate = sample_rate
        self.max_seconds = max_seconds
        self.min_seconds = min_seconds
        self.stats = stats
        self.noise = noise
        self.snr_db = snr_db
        self.snr_mode = snr_mode
        self.seed = seed
        self.copy_index = copy_index
        self.store = store
        self.skipped: list[tuple[str, str]] = []
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

        kept: list[Utterance] = []
        waves: list[np.ndarray] = []
        lengths: list[int] = []
        for utt in utterances:
            try:
                if preload:
                    wave = self._read(utt)
                    waves.append(wave)
                    lengths.append(wave.shape[0])
                elif self._stored(utt):
                    lengths.append(store.length(str(utt.path)))
                else:
                    n = audio_num_samples(utt.path, sample_rate, max_seconds)
                    if n < min_seconds * sample_rate:
                        raise AudioError(
                            f"{utt.path}: too short ({n / sample_rate:.3f} s < min_seconds {min_seconds:g} s)"
                        )
                    lengths.append(n)
            except AudioError as exc:
                if on_bad_audio == "error":
                    raise
                self.skipped.append((str(utt.path), str(exc)))
                continue
            kept.append(utt)
        if self.skipped:
            log.warning(
                "skipped %d bad utterance(s) of %d (first: %s)", len(self.skipped), len(utterances), self.skipped[0][1]
            )
        self.utterances = kept
        self._waves = waves if preload else None
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self._labels = np.asarray([u.scaled_labels() for u in kept], dtype=np.float32).reshape(-1, 3)

    def __len__(self) -> int:
        return len(self.utterances)

    @property
    def labels(self) -> np.ndarray:
        """Labels of all items, [N, 3] on the [0, 1] scale, in dataset order."""
        return self._labels

    @property
    def epoch(self) -> int:
        """The epoch whose noise draws items currently use."""
        return int(self._epoch.item())

    def set_epoch(self, epoch: int) -> None:
        """Select the noise draws of `epoch` (visible to already-started workers)."""
        self._epoch.fill_(int(epoch))

    def _stored(self, utt: Utterance) -> bool:
        return self.store is not None and str(utt.path) in self.store

    def _read(self, utt: Utterance) -> np.ndarray:
        """The samples of ``utt`` as training reads them: from the packed corpus when it holds them (the same
        samples, already decoded), else decoded from the file."""
        if self._stored(utt):
            return self.store.wave(str(utt.path))
        return read_audio(utt.path, self.sample_rate, self.max_seconds, self.min_seconds)

    def raw_wave(self, index: int) -> np.ndarray:
        """The clean wave of item `index` before normalisation."""
        if self._waves is not None:
            return self._waves[index]
        return self._read(self.utterances[index])

    def __getitem__(self, index: int) -> dict[str, Any]:
        clean = self.raw_wave(index)
        noisy = None
        if self.noise is not None and self.snr_db is not None:
            if self.copy_index is not None:
                noisy = noisy_copy(clean, self.noise, self.snr_db, self.seed, self.copy_index, index, self.snr_mode)
            else:
                segment = self.noise.segment(noise_rng(self.seed, self.epoch, index), clean.shape[0])
                noisy = mix(clean, segment, self.snr_db, self.snr_mode)
        if self.stats is not None:
            clean = self.stats.normalise(clean)
            noisy = None if noisy is None else self.stats.normalise(noisy)
        return {"index": index, "clean": clean, "noisy": noisy, "labels": self._labels[index]}


def collate(items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Pad waves to the longest in the batch; `mask` is True on real samples.

    Returns index [B], clean [B,T], noisy [B,T] (only when items carry one), mask [B,T], lengths [B], labels [B,3].
    """
    if not items:
        raise ValueError("collate: empty batch")
    lengths = torch.tensor([len(it["clean"]) for it in items], dtype=torch.int64)
    longest = int(lengths.max())
    mask = torch.arange(longest)[None, :] < lengths[:, None]
    has_noisy = items[0]["noisy"] is not None
    if any((it["noisy"] is not None) != has_noisy for it in items):
        raise ValueError("collate: some items carry a noisy wave and others do not")

    def pad(key: str) -> torch.Tensor:
        out = torch.zeros(len(items), longest, dtype=torch.float32)
        for row, it in enumerate(items):
            out[row, : len(it[key])] = torch.from_numpy(np.asarray(it[key], dtype=np.float32))
        return out

    batch = {
        "index": torch.tensor([int(it["index"]) for it in items], dtype=torch.int64),
        "clean": pad("clean"),
        "mask": mask,
        "lengths": lengths,
        "labels": torch.from_numpy(np.stack([np.asarray(it["labels"], dtype=np.float32) for it in items])),
    }
    if has_noisy:
        batch["noisy"] = pad("noisy")
    return batch


def padding_waste(batches: Sequence[Sequence[int]], lengths: Sequence[int] | np.ndarray) -> float:
    """Padded samples / total samples (real + padding) when each batch is padded to its longest item."""
    lengths = np.asarray(lengths)
    total = 0
    real = 0
    for batch in batches:
        lens = lengths[np.asarray(batch, dtype=np.int64)]
        total += int(lens.max()) * len(lens)
        real += int(lens.sum())
    return 0.0 if total == 0 else (total - real) / total


class _BatchSampler:
    """Shared epoch/rank/resume logic; subclasses build the global batch list of an epoch."""

    def __init__(
        self,
        lengths: Sequence[int] | np.ndarray,
        batch_size: int,
        seed: int,
        shuffle: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
        max_batch_samples: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        if max_batch_samples is not None and max_batch_samples < 1:
            raise ValueError(f"max_batch_samples must be >= 1, got {max_batch_samples}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        if self.lengths.size == 0:
            raise ValueError("sampler: no utterances")
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.num_replicas = num_replicas
        self.rank = rank
        self.max_batch_samples = max_batch_samples
        self.epoch = 0
        self.start_batch = 0
        self._plan_cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's batches; iteration starts at this rank's batch `start_batch` (for resuming)."""
        if start_batch < 0:
            raise ValueError(f"start_batch must be >= 0, got {start_batch}")
        self.epoch = int(epoch)
        self.start_batch = int(start_batch)

    def _rng(self) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([int(self.seed), int(self.epoch)]))

    def _global_batches(self, rng: np.random.Generator) -> list[list[int]]:
        raise NotImplementedError

    def _cut(self, order: np.ndarray) -> list[list[int]]:
        """Cut an ordered index list into batches by count, or greedily by the padded-samples budget."""
        if self.max_batch_samples is None:
            return [order[i : i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)]
        batches: list[list[int]] = []
        current: list[int] = []
        longest = 0
        for idx in order.tolist():
            length = int(self.lengths[idx])
            if current and (len(current) + 1) * max(longest, length) > self.max_batch_samples:
                batches.append(current)
                current, longest = [], 0
            current.append(idx)
            longest = max(longest, length)
        if current:
            batches.append(current)
        return batches

    def batches(self) -> list[list[int]]:
        """This rank's full batch list for the current epoch (ranks are disjoint and equally long)."""
        if self._plan_cache is None or self._plan_cache[0] != self.epoch:
            batches = self._global_batches(self._rng())
            usable = len(batches) - len(batches) % self.num_replicas
            self._plan_cache = (self.epoch, batches[self.rank : usable : self.num_replicas])
        return self._plan_cache[1]

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.batches()[self.start_batch :]

    def __len__(self) -> int:
        """Batches of this rank in the whole epoch (including those skipped by `start_batch`)."""
        return len(self.batches())


class LengthBucketSampler(_BatchSampler):
    """Batches of similar-length utterances, reshuffled each epoch from (seed, epoch).

    Each epoch: the utterances are shuffled, split into chunks of `chunk_size`, and each chunk is sorted
    by length times a random factor in [1 - jitter, 1 + jitter] (so batch membership changes between
    epochs); consecutive runs become batches (`batch_size` items, or as many as fit
    `max_batch_samples` padded samples), and the batch order is shuffled across the whole epoch.
    With several replicas, rank r takes batches r, r + R, ...; the last `len % R` batches are dropped so
    that ranks stay disjoint and equally long. `shuffle=False` gives a fixed, length-sorted order.
    """

    def __init__(
        self,
        lengths: Sequence[int] | np.ndarray,
        batch_size: int,
        seed: int,
        shuffle: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
        max_batch_samples: int | None = None,
        chunk_size: int | None = None,
        jitter: float = 0.02,
    ) -> None:
        super().__init__(lengths, batch_size, seed, shuffle, num_replicas, rank, max_batch_samples)
        self.chunk_size = chunk_size or max(4096, 64 * batch_size * num_replicas)
        self.jitter = jitter

    def _global_batches(self, rng: np.random.Generator) -> list[list[int]]:
        n = self.lengths.size
        if not self.shuffle:
            return self._cut(np.argsort(-self.lengths, kind="stable"))
        order = rng.permutation(n)
        keys = self.lengths[order] * rng.uniform(1.0 - self.jitter, 1.0 + self.jitter, size=n)
        batches: list[list[int]] = []
        for start in range(0, n, self.chunk_size):
            chunk = order[start : start + self.chunk_size]
            batches.extend(self._cut(chunk[np.argsort(-keys[start : start + self.chunk_size], kind="stable")]))
        return [batches[i] for i in rng.permutation(len(batches))]


class RandomBatchSampler(_BatchSampler):
    """Plain random batches (the naive baseline), same interface as LengthBucketSampler."""

    def _global_batches(self, rng: np.random.Generator) -> list[list[int]]:
        order = rng.permutation(self.lengths.size) if self.shuffle else np.arange(self.lengths.size)
        return self._cut(order)


class ShardedBatchSampler:
    """Each rank's share of every global batch: items ``rank::world_size`` (balanced lengths).

    ``sampler`` makes the global batch list (built with one replica). A global batch with fewer
    items than ranks (at most the epoch's last) is dropped on every rank alike. ``set_epoch(epoch,
    start_batch)`` counts global batches, the same number on every rank.
    """

    def __init__(self, sampler: Any, rank: int, world_size: int):
        if sampler.num_replicas != 1:
            raise ValueError("ShardedBatchSampler needs a sampler of the global batches (num_replicas=1)")
        if sampler.batch_size % world_size:
            raise ValueError(
                f"train.batch_size={sampler.batch_size} is the global batch; it must be divisible by "
                f"the world size {world_size}"
            )
        self.sampler, self.rank, self.world_size = sampler, rank, world_size
        self.batch_size = sampler.batch_size // world_size
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.sampler.set_epoch(epoch)
        self.start_batch = int(start_batch)

    def batches(self) -> list[list[int]]:
        full = [b for b in self.sampler.batches() if len(b) >= self.world_size]
        return [b[self.rank :: self.world_size] for b in full]

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.batches()[self.start_batch :]

    def __len__(self) -> int:
        return len(self.batches())
