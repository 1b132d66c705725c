"""The job entry points of a sweep: teacher, one student, evaluation.

Each is a picklable function of (work directory[, variant]) that reopens the workspace and its
MLflow run tree, runs one pipeline stage and returns a small summary. The local runner calls them
in order; the Slurm backend submits them as jobs (teacher -> student array -> evaluation).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from ctsl_hpc import pipeline
from ctsl_hpc.config import ExperimentConfig, config_from_dict
from ctsl_hpc.workdir import CONFIG_FILE

log = logging.getLogger(__name__)


def open_workspace(workdir: str | Path) -> pipeline.Workspace:
    """Reopen a work directory with the configuration saved in it."""
    path = Path(workdir)
    cfg = config_from_dict(yaml.safe_load((path / CONFIG_FILE).read_text()))
    return pipeline.Workspace.open(cfg, path)


def open_tracker(ws: pipeline.Workspace):
    """The workspace's MLflow run tree (parent run opened), or None when tracking is off."""
    cfg: ExperimentConfig = ws.cfg
    if not cfg.tracking.enabled:
        return None
    from ctsl_hpc.track import Tracker

    tracker = Tracker(ws.root, cfg.tracking.uri, cfg.tracking.experiment or cfg.name)
    tracker.parent(config=cfg.to_dict())
    return tracker


def _child(tracker, key: str):
    return None if tracker is None else tracker.child(key)


def teacher_job(workdir: str | Path, should_stop: Callable[[], bool] = lambda: False) -> dict[str, Any]:
    """Train (or resume, or reuse) the teacher."""
    ws = open_workspace(workdir)
    tracker = open_tracker(ws)
    run = _child(tracker, "teacher")
    summary = pipeline.train_teacher(ws, sink=run, should_stop=should_stop)
    _close(run, ws, summary)
    return summary


def _close(run, ws: pipeline.Workspace, summary: dict[str, Any]) -> None:
    """Attach the resolved config and the best model directory, and end the run."""
    if run is None:
        return
    run.log_artifact(ws.root / CONFIG_FILE)
    run.log_artifacts(Path(summary["best_dir"]), "model")
    run.finish("FINISHED")


def student_job(workdir: str | Path, variant: str, should_stop: Callable[[], bool] = lambda: False) -> dict[str, Any]:
    """Train (or resume, or reuse) one student variant."""
    ws = open_workspace(workdir)
    tracker = open_tracker(ws)
    run = _child(tracker, f"student/{variant}")
    summary = pipeline.train_student(ws, variant, sink=run, should_stop=should_stop)
    _close(run, ws, summary)
    return summary


def evaluate_job(workdir: str | Path, parent_metrics: Callable[[], Mapping[str, float]] | None = None) -> Path:
    """Score every model, write the report, attach it (and ``parent_metrics()``, when tracking) to the
    parent run and end the run tree."""
    ws = open_workspace(workdir)
    tracker = open_tracker(ws)
    variants = ["original", *ws.cfg.student.variants]
    reopened = []

    def sink_for(key: str):
        run = _child(tracker, key)
        if run is not None:
            reopened.append(run)
        return run

    report_dir = pipeline.evaluate(ws, variants, sink_for=sink_for)
    for run in reopened:  # reopened (RUNNING) for the test scores: end them again
        run.finish("FINISHED")
    if tracker is not None:
        parent = tracker.parent()
        parent.log_artifacts(report_dir, "report")
        if parent_metrics is not None:
            parent.log_metrics(parent_metrics(), step=0)
        parent.finish("FINISHED")
        tracker.flush()
    return report_dir
