"""Preemption for a Ray Tune search: Ray forwards no signal to trials, so the search relays a flag file.

The search task turns its job's stop request (SIGUSR2, Slurm's preemption warning) into a ``STOP``
file in the Tune experiment's folder (:func:`ctsl_hpc.tune.driver.relayed`); every trial's
``should_stop`` reads it, saves a checkpoint and stops.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ctsl_hpc.atomic_io import atomic_write_text
from ctsl_hpc.config import ExperimentConfig
from ctsl_hpc.workdir import Workdir

log = logging.getLogger(__name__)


def tune_dir(cfg: ExperimentConfig, workdir: Workdir) -> Path:
    """Where the Tune experiment lives: ``tune.storage_path`` (shared storage) or ``<workdir>/tune``."""
    return Path(cfg.tune.storage_path or workdir.tune).resolve()


class PreemptionRelay:
    """A stop request in the work directory: the driver writes it, every trial's ``should_stop`` reads it."""

    def __init__(self, directory: Path):
        self.path = Path(directory) / "STOP"

    def request(self, reason: str = "stop requested") -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, f"{reason} at {time.strftime('%Y-%m-%d %H:%M:%S')}\n")

    def requested(self) -> bool:
        return self.path.exists()

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
