"""The experiment configuration's schema: every key, its type and its default.

Sections mirror the method (``data``, ``noise``, ``model``, ``train``, ``student``, ``eval``) and
where it runs (``tracking``, ``cost``, ``slurm``, ``tune``). Loading and overrides are in
:mod:`ctsl_hpc.config.loading`, value checks in :mod:`ctsl_hpc.config.validation`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from ctsl_hpc.run_records import DEV_METRICS, DEV_SCORE


class ConfigError(ValueError):
    """A configuration key is unknown or its value is invalid; the message names the key."""


@dataclass
class DataConfig:
    corpus: str = "synthetic"  # a name registered in ctsl_hpc.data.corpora
    root: str | None = None
    manifest: str | None = None
    sample_rate: int = 16000
    max_seconds: float = 12.0
    min_seconds: float = 0.5
    normalize: bool = True
    on_bad_audio: Literal["error", "skip"] = "error"
    msp_test_split: Literal["Test1", "Test2"] = "Test1"
    preload: bool = False
    # a node-local folder the jobs copy the packed corpus to and read from, e.g. $SLURM_TMPDIR, $TMPDIR or
    # /local/scratch/$USER (variables are expanded in the job); None: read the audio files where they are
    stage_dir: str | None = None


@dataclass
class SyntheticConfig:
    utterances: int = 600
    seed: int = 0


@dataclass
class NoiseConfig:
    train: str | None = None
    dev: str | None = None
    test: str | None = None
    minutes: float = 30.0
    snr_db: float = 0.0
    snr_mode: Literal["rms", "msp"] = "rms"


@dataclass
class TinyBackboneConfig:
    hidden_size: int = 64
    num_layers: int = 2
    heads: int = 4
    intermediate_size: int = 256
    conv_dim: int = 64
    conv_stride: list[int] = field(default_factory=lambda: [5, 4, 2, 2, 2])
    conv_kernel: list[int] = field(default_factory=lambda: [10, 3, 3, 3, 2])


LARGE_ROBUST = "facebook/wav2vec2-large-robust"  # the paper's backbone (its architecture: ctsl_hpc.model)


@dataclass
class ModelConfig:
    backbone: str = LARGE_ROBUST
    num_layers: int = 12
    freeze_feature_encoder: bool = True
    pooling: Literal["masked", "unmasked"] = "masked"
    head_layers: int = 2
    head_hidden: int = 1024
    dropout: float = 0.5
    gradient_checkpointing: bool = False
    tiny: TinyBackboneConfig = field(default_factory=TinyBackboneConfig)


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-5
    lr_decay: float = 1.0
    grad_clip: float = 0.0
    seed: int = 0
    engine: Literal["plain", "ddp", "deepspeed"] = "plain"
    deepspeed_config: str = "configs/deepspeed/zero2.json"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    num_workers: int = 0
    bucket_by_length: bool = True
    max_batch_seconds: float | None = None
    fused_optimizer: bool = True
    compile: bool = False
    log_every: int = 10
    keep_checkpoints: int = 0


@dataclass
class StudentConfig:
    variants: list[str] = field(
        default_factory=lambda: ["RH", "RM", "RM+TL", "RM+CL", "RM+TL+CL"]
    )
    epochs: int = 20
    lr: float = 1e-5
    lr_decay: float = 1.0
    lambda_tl: float = 100.0
    lambda_cl: float = 10.0
    margin: float = 0.5
    temperature: float = 0.1
    snr_db: float = 0.0
    cache_teacher_embeddings: bool = True


@dataclass
class EvalConfig:
    groups: Literal["copies", "splits"] = "copies"
    n_groups: int = 30
    top_k: int = 3
    alpha: float = 0.05
    batch_size: int = 16
    noisy_roots: dict[str, str] = field(default_factory=dict)


@dataclass
class CostConfig:
    """The throughput behind the GPU-hours that ``sweep --dry-run`` estimates (audio seconds per GPU-second).

    None: the package's figure for the configured model size and precision (``ctsl_hpc.cost``)."""

    train_audio_s_per_gpu_s: float | None = None  # training: forward, backward and optimiser step
    forward_audio_s_per_gpu_s: float | None = None  # forward only: evaluation, teacher embeddings


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: str | None = None
    experiment: str | None = None


@dataclass
class TuneConfig:
    """The Ray Tune search over the student's loss weights and the training-noise budget."""

    variant: str = "RM+TL+CL"
    lambda_tl: list[float] = field(default_factory=lambda: [1.0, 1000.0])  # log-uniform [low, high]
    lambda_cl: list[float] = field(default_factory=lambda: [0.1, 100.0])  # log-uniform [low, high]
    noise_minutes: list[float] = field(default_factory=lambda: [0.5, 2.0, 10.0, 30.0])  # choice
    num_samples: int = 8
    search_alg: Literal["random", "optuna"] = "random"
    metric: Literal[DEV_METRICS] = DEV_SCORE  # the development metric the search maximises
    grace_period: int = 1  # ASHA, in epochs
    reduction_factor: int = 2
    max_t: int = 4  # epochs of a trial that is never stopped early
    max_concurrent: int = 0  # 0: as many trials as the resources allow
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    storage_path: str | None = None  # default: <workdir>/tune (shared storage on a cluster)
    max_failures: int = 2  # retries of a trial whose process or node died, from its newest checkpoint
    final_variants: list[str] | None = None  # students trained with the best config; default student.variants
    seed: int = 0


@dataclass
class ContainerConfig:
    """A container every job of a stage runs in: Apptainer, or pyxis (``srun --container-image``)."""

    runtime: Literal["apptainer", "pyxis"] | None = None  # None: no container
    image: str | None = None  # Apptainer: a .sif file; pyxis: an image (docker://..., a .sqsh file)
    mounts: list[str] = field(default_factory=list)  # host[:container] paths the jobs read and write
    options: list[str] = field(default_factory=list)  # more `apptainer exec` / srun options


@dataclass
class SlurmStageConfig:
    """Per-stage Slurm overrides (teacher, students, eval, tune); ``None`` inherits the ``slurm.*`` default."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_min: int | None = None
    nodes: int | None = None
    gpus_per_node: int | None = None
    tasks_per_node: int | None = None
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    constraint: str | None = None
    array_parallelism: int | None = None
    signal_delay_s: int | None = None
    max_requeues: int | None = None
    additional: dict[str, Any] | None = None  # extra sbatch options, merged over slurm.additional
    setup: list[str] | None = None  # replaces slurm.setup for this stage
    python: str | None = None
    container: ContainerConfig | None = None
    env: dict[str, str] | None = None  # merged over slurm.env


PREPARE_STAGE, TEACHER_STAGE, STUDENTS_STAGE, EVAL_STAGE, TUNE_STAGE = "prepare", "teacher", "students", "eval", "tune"
# job stages, each with its own overrides (prepare: the CPU job checking the inputs; tune: the Ray allocation)
SLURM_STAGES = (PREPARE_STAGE, TEACHER_STAGE, STUDENTS_STAGE, EVAL_STAGE, TUNE_STAGE)
GRAPH_STAGES = (PREPARE_STAGE, TEACHER_STAGE, STUDENTS_STAGE, EVAL_STAGE)  # the job graph of a sweep, in order
ONE_NODE_STAGES = (PREPARE_STAGE, EVAL_STAGE)  # one process each: a multi-node default is not for them
TRAINING_STAGES = (TEACHER_STAGE, STUDENTS_STAGE)  # stages whose jobs run the training engine (several ranks with ddp/deepspeed)


@dataclass
class SlurmConfig:
    """Slurm resources of a sweep; each stage may override any field (``slurm.students.gpus_per_node``)."""

    partition: str | None = None  # None: the cluster's default partition
    account: str | None = None
    qos: str | None = None
    time_min: int = 240
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int | None = None  # ranks per node of ddp/deepspeed training; None: one per GPU (1 without GPUs)
    cpus_per_task: int = 2
    mem_gb: float = 8.0
    constraint: str | None = None
    array_parallelism: int = 8
    signal_delay_s: int = 120
    max_requeues: int = 10
    additional: dict[str, Any] = field(default_factory=dict)  # e.g. {"exclusive": true, "reservation": "x"}
    setup: list[str] = field(default_factory=list)  # shell lines before Python: module load, source venv/bin/activate
    python: str | None = None  # the interpreter command; None: the one that submits (sys.executable)
    container: ContainerConfig = field(default_factory=ContainerConfig)
    env: dict[str, str] = field(default_factory=dict)  # exported in the job script, e.g. NCCL_SOCKET_IFNAME
    prepare: SlurmStageConfig = field(default_factory=SlurmStageConfig)  # CPU-only unless it sets gpus_per_node
    teacher: SlurmStageConfig = field(default_factory=SlurmStageConfig)
    students: SlurmStageConfig = field(default_factory=SlurmStageConfig)
    eval: SlurmStageConfig = field(default_factory=SlurmStageConfig)
    tune: SlurmStageConfig = field(default_factory=SlurmStageConfig)

    def stage(self, name: str) -> SlurmStageConfig:
        """The resolved settings of stage ``name`` (every field filled; ``additional`` merged)."""
        if name not in SLURM_STAGES:
            raise ConfigError(f"slurm: unknown stage {name!r} (stages: {list(SLURM_STAGES)})")
        override: SlurmStageConfig = getattr(self, name)
        values = {}
        for f in dataclasses.fields(SlurmStageConfig):
            mine = getattr(override, f.name)
            values[f.name] = getattr(self, f.name) if mine is None else mine
        values["additional"] = {**self.additional, **(override.additional or {})}
        values["env"] = {**self.env, **(override.env or {})}
        if name in ONE_NODE_STAGES and override.nodes is None:
            values["nodes"] = 1  # one process: a multi-node default is for training and the Tune allocation
        if name == PREPARE_STAGE and override.gpus_per_node is None:
            values["gpus_per_node"] = 0  # it decodes audio on CPUs: a GPU default is for the other stages
        return SlurmStageConfig(**values)

    def ranks_per_node(self, name: str, engine: str) -> int:
        """Processes per node of stage ``name``: for the training stages of a distributed engine
        ``tasks_per_node``, else one per GPU (one without GPUs); one otherwise (evaluation is one
        process, the Tune allocation one Ray node per node)."""
        resolved = self.stage(name)
        if name not in TRAINING_STAGES or engine not in ("ddp", "deepspeed"):
            return 1
        if resolved.tasks_per_node is not None:
            return resolved.tasks_per_node
        return max(1, resolved.gpus_per_node)


@dataclass
class ExperimentConfig:
    name: str = "ctsl"
    workdir: str = "runs/ctsl"
    # octal, as a string: "027" lets the group read what a sweep writes and others nothing; no mask makes a file
    # group- or world-writable, and the pickles, job scripts, frozen code and tracking spool are the owner's alone
    umask: str = "027"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    cost: CostConfig = field(default_factory=CostConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)

    @property
    def file_mask(self) -> int:
        """The process umask of the sweep's commands and jobs: ``umask`` as octal, never letting the group or
        others write (``| 0o022``).

        Example:
            >>> oct(ExperimentConfig(umask="002").file_mask)
            '0o22'
        """
        return int(self.umask, 8) | 0o022

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain nested dicts (YAML/JSON serialisable)."""
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """A short stable hash of the resolved configuration."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]
