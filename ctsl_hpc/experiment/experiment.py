"""An experiment: its configuration and its work directory; the data is built on first use."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Protocol

from ctsl_hpc.config import ExperimentConfig
from ctsl_hpc.experiment.inputs import Data
from ctsl_hpc.train.interface import MetricsSink
from ctsl_hpc.workdir import Workdir


class RunSink(MetricsSink, Protocol):
    """A tracked run: metrics plus artifacts (MLflow's child run in the tracking layer)."""

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...

    def log_artifacts(self, directory: Path, artifact_path: str | None = None) -> None: ...


SinkFactory = Callable[[str], RunSink | None]  # a variant -> its tracked run (None: not tracked)
StopRequest = Callable[[], bool]


def never() -> bool:
    """The default stop request: keep going."""
    return False


@dataclass
class Experiment:
    """A configuration and its work directory; the data is built on first use."""

    cfg: ExperimentConfig
    workdir: Workdir

    @classmethod
    def open(cls, cfg: ExperimentConfig, root: str | Path | None = None) -> Experiment:
        """Create or reopen the work directory of ``cfg``; refuse one made for another experiment."""
        return cls(cfg, Workdir.open(cfg, root))

    @classmethod
    def reopen(cls, root: str | Path) -> Experiment:
        """The experiment a work directory was created for, with its saved configuration."""
        workdir = Workdir(root)
        return cls(workdir.read_config(), workdir)

    @cached_property
    def data(self) -> Data:
        return Data(self.cfg, self.workdir)
