"""Resumable checkpoints: one directory per save, written atomically, complete once marked.

Layout: one folder per save (:meth:`ctsl_hpc.workdir.RunDir.checkpoint`) holding the engine's files
(weights, optimiser, scheduler) and ``trainer.pt`` (:class:`TrainerState`: epoch, position in the
epoch, RNG states, history). The folder is first written under a ``.tmp`` name and renamed; the
``COMPLETE`` marker is written last, so a checkpoint cut short by a kill is never loaded.
:class:`Checkpointer` is the component a trainer saves and resumes through.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ctsl_hpc.atomic_io import atomic_write_text, sync_tree, writing
from ctsl_hpc.run_records import History
from ctsl_hpc.train.engines import Engine
from ctsl_hpc.train.safe_load import load_state
from ctsl_hpc.workdir import RunDir

MARKER = "COMPLETE"
TRAINER_FILE = "trainer.pt"


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
        sync_tree(final)  # every file on the disk before the marker says the checkpoint is complete
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


@dataclass
class TrainerState:
    """Where a run stands: ``trainer.pt`` of a checkpoint holds it with the RNG states (:func:`rng_state`)."""

    epoch: int = 0  # epochs finished (the epoch in progress, 0-based)
    batch: int = 0  # batches of that epoch done (this rank's; 0 at an epoch's end)
    global_step: int = 0  # optimiser steps
    history: History = field(default_factory=History)
    running: dict[str, Any] | None = None  # the epoch's totals so far (ctsl_hpc.train.batches.EpochTotals)

    def to_dict(self, rng: dict[str, Any]) -> dict[str, Any]:
        return {"epoch": self.epoch, "batch": self.batch, "running": self.running, "global_step": self.global_step,
                "history": self.history.to_list(), "rng": rng}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainerState:
        return cls(values["epoch"], values["batch"], values["global_step"], History.from_list(values["history"]),
                   values.get("running"))

    @classmethod
    def read(cls, checkpoint: Path) -> TrainerState:
        """The state saved in ``checkpoint`` (its RNG states left out)."""
        return cls.from_dict(load_trainer_state(checkpoint))


def load_trainer_state(checkpoint: Path) -> dict[str, Any]:
    """The saved :meth:`TrainerState.to_dict` of ``checkpoint`` (its ``rng`` included)."""
    return load_state(checkpoint / TRAINER_FILE)




def prune_checkpoints(run_dir: Path, keep_last: int, protect: set[Path]) -> None:
    """Delete all but the newest ``keep_last`` checkpoints, never those in ``protect``."""
    if keep_last <= 0:
        return
    for path in complete_checkpoints(run_dir)[:-keep_last]:
        if path not in protect:
            shutil.rmtree(path)


class Stateful(Protocol):
    """What a checkpoint holds besides the engine's files (the trainer)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Checkpointer:
    """A run's checkpoints: the engine's files and the trainer's state, saved together by every rank."""

    def __init__(self, run: RunDir, engine: Engine, keep_last: int = 0):
        self.run, self.engine, self.keep_last = run, engine, keep_last

    def latest(self) -> Path | None:
        return latest_complete_checkpoint(self.run.path)

    def save(self, trainer: Stateful, global_step: int) -> Path:
        """A complete checkpoint of ``trainer`` after optimiser step ``global_step``; older ones pruned
        (``train.keep_checkpoints``)."""
        engine = self.engine
        path = save_checkpoint(self.run.path, global_step, trainer.state_dict(), engine.save, engine.is_main,
                               engine.barrier)
        if engine.is_main:
            prune_checkpoints(self.run.path, self.keep_last, {path})
        return path

    def load(self, path: Path, trainer: Stateful) -> None:
        """Restore ``trainer`` from ``path``: its state and the shared RNG states first, then the engine's
        files (a distributed engine restores each rank's own RNG states)."""
        trainer.load_state_dict(load_trainer_state(path))
        self.engine.load(path)
