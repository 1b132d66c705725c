"""Resumable checkpoints: one directory per save, written atomically, complete once marked.

Layout: one folder per save (:meth:`ctsl_hpc.workdir.RunDir.checkpoint`) holding the engine's files
(weights, optimiser, scheduler) and ``trainer.pt`` (epoch, position in the epoch, RNG states,
history). The folder is first written under a ``.tmp`` name and renamed; the ``COMPLETE`` marker is
written last, so a checkpoint cut short by a kill is never loaded.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctsl_hpc.atomic_io import atomic_write_text, writing
from ctsl_hpc.workdir import RunDir

MARKER = "COMPLETE"
TRAINER_FILE = "trainer.pt"
# what numpy.random.get_state() pickles to (an ndarray of the MT19937 keys)
NUMPY_RNG_GLOBALS = [np.ndarray, np.dtype, type(np.dtype(np.uint32)), np._core.multiarray._reconstruct]


def rng_state() -> dict[str, Any]:
    """Every random number generator the training step reads."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def seed_rngs(seed: int) -> None:
    """Seed every generator :func:`rng_state` saves: torch's (dropout), numpy's global one (wav2vec2's
    SpecAugment masks draw from it) and Python's, so a run is reproducible from its seed."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    run_dir: Path,
    global_step: int,
    trainer_state: dict[str, Any],
    write_engine_state: Callable[[Path], None],
    is_main: bool = True,
    barrier: Callable[[], None] = lambda: None,
) -> Path:
    """Write a checkpoint for ``global_step``; every rank calls it, rank 0 publishes it.

    ``write_engine_state(tmp_dir)`` writes the model/optimiser files (all ranks, collectively for
    sharded engines); then rank 0 adds ``trainer.pt``, renames the directory into place and writes
    the marker.
    """
    final = RunDir(Path(run_dir)).checkpoint(global_step)
    tmp = final.with_name(final.name + ".tmp")
    if is_main:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    barrier()
    with writing(tmp):
        write_engine_state(tmp)
    barrier()
    if is_main:
        with writing(tmp / TRAINER_FILE):
            torch.save(trainer_state, tmp / TRAINER_FILE)
        if final.exists():  # an earlier, identical save of this step (e.g. re-run after a crash)
            shutil.rmtree(final)
        tmp.rename(final)
        atomic_write_text(final / MARKER, f"{global_step}\n")
    barrier()
    return final


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """All complete checkpoints, oldest first."""
    root = RunDir(Path(run_dir)).checkpoints
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and (p / MARKER).is_file()]
    return sorted(found, key=RunDir.checkpoint_step)


def latest_complete_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint whose marker was written, or None."""
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def load_state(path: Path, map_location: Any = "cpu") -> Any:
    """A file this package saved with ``torch.save``, loaded tensors-only (``weights_only``): plain
    containers, numbers and tensors, plus the numpy types of numpy's RNG state. Anything else in it
    (a pickled object that would run code) is refused."""
    with torch.serialization.safe_globals(NUMPY_RNG_GLOBALS):
        return torch.load(path, map_location=map_location, weights_only=True)


def load_trainer_state(checkpoint: Path) -> dict[str, Any]:
    return load_state(checkpoint / TRAINER_FILE)


def prune_checkpoints(run_dir: Path, keep_last: int, protect: set[Path]) -> None:
    """Delete all but the newest ``keep_last`` checkpoints, never those in ``protect``."""
    if keep_last <= 0:
        return
    for path in complete_checkpoints(run_dir)[:-keep_last]:
        if path not in protect:
            shutil.rmtree(path)
