"""Typed experiment configuration: YAML files in ``configs/`` plus dotted command-line overrides.

Every key is declared in :mod:`~ctsl_hpc.config.schema` with its type and default; an unknown key
or a bad value raises :class:`ConfigError` naming the dotted key before any work starts.

Example:
    >>> cfg = load_config(None, ["train.epochs=3", "student.lambda_tl=50"])
    >>> cfg.train.epochs, cfg.student.lambda_tl
    (3, 50.0)
"""

from ctsl_hpc.config.files import CONFIG_DIR, DEMO_CONFIG, SWEEP_CONFIG, shipped_file
from ctsl_hpc.config.loading import build_section, config_from_dict, flatten, load_config, parse_override
from ctsl_hpc.config.schema import (
    EVAL_STAGE,
    GRAPH_STAGES,
    LARGE_ROBUST,
    PREPARE_STAGE,
    SLURM_STAGES,
    STUDENTS_STAGE,
    TEACHER_STAGE,
    TRAINING_STAGES,
    TUNE_STAGE,
    ConfigError,
    ContainerConfig,
    CostConfig,
    DataConfig,
    EvalConfig,
    ExperimentConfig,
    ModelConfig,
    NoiseConfig,
    SlurmConfig,
    SlurmStageConfig,
    StudentConfig,
    SyntheticConfig,
    TinyBackboneConfig,
    TrackingConfig,
    TrainConfig,
    TuneConfig,
)
from ctsl_hpc.config.validation import check_training_ranks, validate

__all__ = [
    "CONFIG_DIR", "DEMO_CONFIG", "EVAL_STAGE", "GRAPH_STAGES", "LARGE_ROBUST", "PREPARE_STAGE", "SWEEP_CONFIG", "SLURM_STAGES",
    "STUDENTS_STAGE", "TEACHER_STAGE", "TRAINING_STAGES", "TUNE_STAGE", "ConfigError",
    "ContainerConfig", "CostConfig", "DataConfig", "EvalConfig",
    "ExperimentConfig", "ModelConfig", "NoiseConfig", "SlurmConfig", "SlurmStageConfig", "StudentConfig",
    "SyntheticConfig", "TinyBackboneConfig", "TrackingConfig", "TrainConfig", "TuneConfig", "build_section",
    "check_training_ranks", "config_from_dict", "flatten", "load_config", "parse_override", "shipped_file", "validate",
]
