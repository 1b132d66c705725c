"""The corpus packed into a few large files, and staged to node-local storage for the jobs that read it.

On the parallel file systems of HPC centres (Lustre, GPFS) many small random reads are the classic
bottleneck. With ``data.stage_dir`` set, the prepare stage writes every usable utterance once, as
training reads it (decoded, mono, resampled, cropped: :func:`~ctsl_hpc.data.audio.read_audio`'s
float32 samples), into shards of concatenated samples with an index; every training and evaluation
job copies the shards to node-local storage when it starts (:func:`stage`: one sequential copy per
node, shared by the node's ranks) and reads from there.

Why numpy's ``.npy`` for the shards: the samples are exactly what training would decode, so
reading them changes no result; a shard is one large file (one sequential copy); ``np.load(...,
mmap_mode="r")`` gives random access by index without reading the rest; and numpy is already a
dependency. WebDataset and Lhotse Shar shards are read sequentially (training reads random
batches), an Arrow table or HDF5 would add a library for the same access.

Example:
    >>> import tempfile, numpy as np
    >>> folder = Path(tempfile.mkdtemp()) / "packed"
    >>> lengths = {"a.wav": 3, "b.wav": 2}
    >>> corpus = pack(folder, lengths, lambda key: np.arange(lengths[key], dtype=np.float32))
    >>> corpus.wave("b.wav"), corpus.length("a.wav")
    (array([0., 1.], dtype=float32), 3)
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic_io import atomic_write_json, atomic_write_text, read_json

log = logging.getLogger(__name__)

INDEX_FILE = "index.json"
COMPLETE = "COMPLETE"  # written last: a pack or a stage without it is unfinished
JOB_ID_VARIABLE = "CTSL_JOB_ID"  # a launcher exports it (Slurm: the job id): it names the job's staged copy
SHARD_SAMPLES = 1 << 28  # float32 samples per shard (1 GiB): a few large files for a big corpus
KEYS_PER_CHUNK = 256  # utterances a worker reads and writes per task
_DTYPE = np.float32


class StagingError(OSError):
    """The stage folder cannot hold the packed corpus (the message names ``data.stage_dir``)."""


@dataclass(frozen=True)
class Item:
    shard: int
    offset: int
    length: int


class PackedCorpus:
    """The waves of a packed corpus by key (an utterance's path), read through memory maps."""

    def __init__(self, folder: str | os.PathLike[str]):
        self.folder = Path(folder)
        index = read_json(self.folder / INDEX_FILE, "delete the folder: the prepare stage packs the corpus again")
        self.shards: list[str] = index["shards"]
        self.items = {key: Item(*where) for key, where in index["items"].items()}
        self.meta: dict = index.get("meta", {})  # what the packer recorded (the corpus fingerprint)
        self._maps: dict[int, np.ndarray] = {}

    def __contains__(self, key: str) -> bool:
        return key in self.items

    def length(self, key: str) -> int:
        return self.items[key].length

    def wave(self, key: str) -> np.ndarray:
        """The samples of ``key`` (a copy: the memory map stays read-only)."""
        item = self.items[key]
        if item.shard not in self._maps:
            self._maps[item.shard] = np.load(self.folder / self.shards[item.shard], mmap_mode="r")
        return np.array(self._maps[item.shard][item.offset : item.offset + item.length])

    def files(self) -> list[Path]:
        """Every file of the pack, the index last."""
        return [*(self.folder / name for name in self.shards), self.folder / INDEX_FILE]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_maps": {}}  # DataLoader workers open their own maps


def is_packed(folder: str | os.PathLike[str]) -> bool:
    return (Path(folder) / COMPLETE).is_file()


def pack(
    folder: str | os.PathLike[str], lengths: Mapping[str, int], read: Callable[[str], np.ndarray],
    meta: Mapping | None = None, shard_samples: int = SHARD_SAMPLES, processes: int = 1,
) -> PackedCorpus:
    """Write ``read(key)`` for every key of ``lengths`` (its sample count) into shards in ``folder``, with
    ``meta`` in the index; ``processes`` workers read and write at once (``read`` then must be picklable).

    The shards are sized up front (the lengths come from the audio check), each worker fills its keys'
    places, and the pack is marked complete last. A wave whose length differs from the one given is an
    error: the file changed."""
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)  # an unfinished pack of an earlier run
    staging = folder.with_name(f".{folder.name}.tmp")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    items: dict[str, list[int]] = {}
    sizes: list[int] = [0]
    for key, length in lengths.items():
        if sizes[-1] and sizes[-1] + length > shard_samples:
            sizes.append(0)
        items[key] = [len(sizes) - 1, sizes[-1], int(length)]
        sizes[-1] += int(length)
    names = [f"shard-{number:03d}.npy" for number in range(len(sizes))]
    for name, size in zip(names, sizes, strict=True):  # sized on disk up front; the workers fill them
        np.lib.format.open_memmap(staging / name, mode="w+", dtype=_DTYPE, shape=(size,)).flush()
    keys = list(items)
    chunks = [(staging, names, [(k, *items[k]) for k in keys[i : i + KEYS_PER_CHUNK]], read)
              for i in range(0, len(keys), KEYS_PER_CHUNK)]  # fmt: skip
    processes = min(processes, len(chunks))  # a worker costs 0.2-0.4 s of CPU to start: none without a chunk
    if processes <= 1:
        for chunk in chunks:
            _fill(chunk)
    else:
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            for _ in pool.imap_unordered(_fill, chunks):
                pass
    atomic_write_json(staging / INDEX_FILE, {"shards": names, "items": items, "meta": dict(meta or {})})
    staging.rename(folder)
    atomic_write_text(folder / COMPLETE, f"{len(items)} utterances in {len(names)} shard(s)\n")
    return PackedCorpus(folder)


def _fill(chunk: tuple[Path, list[str], list[tuple[str, int, int, int]], Callable[[str], np.ndarray]]) -> None:
    """Write the waves of ``(key, shard, offset, length)`` entries into their shards (one worker's share)."""
    folder, names, entries, read = chunk
    maps: dict[int, np.ndarray] = {}
    for key, shard, offset, length in entries:
        wave = np.asarray(read(key), dtype=_DTYPE)
        if wave.shape != (length,):
            raise ValueError(f"{key}: {wave.shape[0]} samples now, {length} when it was checked: it changed; "
                             "run the sweep again (the prepare stage checks it anew)")
        if shard not in maps:
            maps[shard] = np.load(folder / names[shard], mmap_mode="r+")
        maps[shard][offset : offset + length] = wave
    for mapped in maps.values():
        mapped.flush()


def stage(packed: str | os.PathLike[str], target: str | os.PathLike[str]) -> PackedCorpus:
    """Copy the pack in ``packed`` to ``target`` (node-local storage), keeping what an earlier start of the same
    job copied whole; refused with one line when the folder lacks the space."""
    source, target = PackedCorpus(packed), Path(target)
    if is_packed(target):
        return PackedCorpus(target)
    missing = [f for f in source.files() if not _same_size(f, target / f.name)]
    needed = sum(f.stat().st_size for f in missing)
    target.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(target).free
    if needed > free:
        raise StagingError(f"data.stage_dir: {target.parent} has {free / 1e9:.2f} GB free, the packed corpus needs "
                           f"{needed / 1e9:.2f} GB more: choose a larger folder, or unset data.stage_dir to read the "
                           "files in place")
    for file in missing:
        partial = target / f".{file.name}.part"
        shutil.copyfile(file, partial)  # one sequential read of a large file
        partial.rename(target / file.name)
    atomic_write_text(target / COMPLETE, (Path(packed) / COMPLETE).read_text())
    log.info("staged the packed corpus (%.2f GB copied, %d file(s) kept from an earlier start) in %s",
             needed / 1e9, len(source.files()) - len(missing), target)
    return PackedCorpus(target)


def _same_size(source: Path, copy: Path) -> bool:
    return copy.is_file() and copy.stat().st_size == source.stat().st_size


def unstage(target: str | os.PathLike[str]) -> None:
    """Remove a staged copy (the job is done reading it)."""
    shutil.rmtree(target, ignore_errors=True)
