"""What a training stage's callers need without importing torch: the sink its epoch metrics go to and the
exception a stop request ends it with (the prepare job, the launcher and the backends import these torch-free)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class MetricsSink(Protocol):
    """Where per-epoch metrics go (MLflow in the tracking layer; nothing by default)."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...


class NullSink:
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass


class TrainingInterrupted(RuntimeError):
    """A stage stopped on request after saving what it resumes from (a checkpoint, the scores so far)."""

    def __init__(self, checkpoint: Path):
        super().__init__(f"stopped on request; resumable state at {checkpoint}")
        self.checkpoint = checkpoint
