"""The stages of one experiment, each a plain function of an :class:`Experiment` (config + work directory).

prepare data -> train the teacher -> train each student -> evaluate every model -> report. Every
training stage writes its outputs under the work directory and a ``DONE`` summary when finished,
so running it again reuses what is done and resumes what is not. The orchestration layer (a local
process, Slurm jobs, Ray trials) calls these functions; nothing here knows which one it runs under.
Tracking reaches the stages as sinks (:class:`RunSink`): this module never imports MLflow. The evaluation
stage, :mod:`ctsl_hpc.experiment.evaluation`, is imported on its own (SciPy and Matplotlib, which the
training jobs do not need).
"""

from typing import TYPE_CHECKING

from ctsl_hpc.experiment.experiment import Experiment, RunSink, SinkFactory, StopRequest, never
from ctsl_hpc.experiment.inputs import Data

if TYPE_CHECKING:
    from ctsl_hpc.experiment.stages import (
        student_trainer,
        teacher_embedder,
        teacher_summary,
        teacher_trainer,
        train_student,
        train_teacher,
    )

# the training stages import torch and transformers: loaded on first use, so that the prepare job (a CPU job)
# and the launcher, which import Experiment, run without them
_STAGES = ("student_trainer", "teacher_embedder", "teacher_summary", "teacher_trainer", "train_student", "train_teacher")


def __getattr__(name: str):
    if name in _STAGES:
        from ctsl_hpc.experiment import stages

        return getattr(stages, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Data", "Experiment", "RunSink", "SinkFactory", "StopRequest", "never", *_STAGES]
