"""The stages of one experiment, each a plain function of an :class:`Experiment` (config + work directory).

prepare data -> train the teacher -> train each student -> evaluate every model -> report. Every
training stage writes its outputs under the work directory and a ``DONE`` summary when finished,
so running it again reuses what is done and resumes what is not. The orchestration layer (a local
process, Slurm jobs, Ray trials) calls these functions; nothing here knows which one it runs under.
Tracking reaches the stages as sinks (:class:`RunSink`): this module never imports MLflow. The evaluation
stage, :mod:`ctsl_hpc.experiment.evaluation`, is imported on its own (SciPy and Matplotlib, which the
training jobs do not need).
"""

from ctsl_hpc.experiment.experiment import Experiment, RunSink, SinkFactory, StopRequest, never
from ctsl_hpc.experiment.inputs import Data
from ctsl_hpc.experiment.stages import (
    student_trainer,
    teacher_embedder,
    teacher_summary,
    teacher_trainer,
    train_student,
    train_teacher,
)

__all__ = [
    "Data", "Experiment", "RunSink", "SinkFactory", "StopRequest", "never", "student_trainer", "teacher_embedder",
    "teacher_summary", "teacher_trainer", "train_student", "train_teacher",
]
