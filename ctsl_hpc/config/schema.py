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


def key(default: Any = dataclasses.MISSING, doc: str = "", *, default_factory: Any = dataclasses.MISSING) -> Any:
    """A config field with its one-line meaning (``docs/configuration.md`` is generated from these:
    :mod:`ctsl_hpc.config.reference`)."""
    return field(default=default, default_factory=default_factory, metadata={"doc": doc})


@dataclass
class DataConfig:
    corpus: str = key(
        "synthetic",
        "the corpus: synthetic (the demo's), msp_podcast or csv (a name registered in ctsl_hpc.data.corpora)",
    )
    root: str | None = key(None, "msp_podcast: the corpus folder (Audios/, Labels/)")
    manifest: str | None = key(
        None, "csv: the manifest (path,arousal,dominance,valence,split[,speaker]; paths relative to its folder)"
    )
    sample_rate: int = key(16000, "Hz; audio of another rate is resampled as it is read")
    max_seconds: float = key(12.0, "crop length: longer utterances are cropped (their middle) to it")
    min_seconds: float = key(0.5, "utterances shorter than this are unusable (data.on_bad_audio says what then)")
    normalize: bool = key(True, "normalise waveforms with the training set's mean and std")
    on_bad_audio: Literal["error", "skip"] = key(
        "error", "an unreadable, silent or too short file: error stops before training, skip leaves it out"
    )
    msp_test_split: Literal["Test1", "Test2"] = key(
        "Test1", "msp_podcast: the test partition (Test1 as the paper, or Test2)"
    )
    preload: bool = key(False, "decode every utterance once into memory (small corpora)")
    stage_dir: str | None = key(
        None, "a node-local folder the jobs copy the packed corpus to ($SLURM_TMPDIR...); null: read in place"
    )


@dataclass
class SyntheticConfig:
    utterances: int = key(600, "the demo corpus's espeak-ng utterances (70 % train, 15 % dev, 15 % test)")
    seed: int = key(0, "the demo corpus's seed (texts, voices, labels)")


@dataclass
class NoiseConfig:
    train: str | None = key(None, "folder of training noise (audio files); the students' pool")
    dev: str | None = key(
        None, "folder of development noise: the noisy development set (checkpoint selection, Table 2)"
    )
    test: str | None = key(None, "folder of test noise: the noisy test conditions")
    minutes: float = key(30.0, "each pool is read up to this many minutes (the paper's short noise pool)")
    snr_db: float = key(0.0, "the SNR of the noisy training set's mixing")
    snr_mode: Literal["rms", "msp"] = key(
        "rms", "rms: SNR of the whole signals; msp: MSP-Podcast's active-speech convention"
    )


@dataclass
class TinyBackboneConfig:
    hidden_size: int = key(64, "model.backbone: tiny: transformer width")
    num_layers: int = key(2, "tiny: transformer layers")
    heads: int = key(4, "tiny: attention heads (must divide hidden_size)")
    intermediate_size: int = key(256, "tiny: feed-forward width")
    conv_dim: int = key(64, "tiny: channels of each CNN layer")
    conv_stride: list[int] = key(
        default_factory=lambda: [5, 4, 2, 2, 2], doc="tiny: CNN strides (their product: samples per frame)"
    )
    conv_kernel: list[int] = key(
        default_factory=lambda: [10, 3, 3, 3, 2], doc="tiny: CNN kernel sizes (one per stride)"
    )


LARGE_ROBUST = "facebook/wav2vec2-large-robust"  # the paper's backbone (its architecture: ctsl_hpc.model)


@dataclass
class ModelConfig:
    backbone: str = key(LARGE_ROBUST, "hub id, local folder, a shipped backbone (tiny-ssl) or tiny (random init)")
    num_layers: int = key(12, "transformer layers kept from the bottom (the paper: 12 of 24)")
    freeze_feature_encoder: bool = key(True, "keep the CNN feature encoder fixed while training")
    pooling: Literal["masked", "unmasked"] = key(
        "masked", "masked: mean over real frames; unmasked: over every frame, padding included"
    )
    head_layers: int = key(2, "hidden layers of the regression head")
    head_hidden: int = key(1024, "width of the head's hidden layers")
    dropout: float = key(0.5, "dropout in the head")
    gradient_checkpointing: bool = key(
        False, "recompute the transformer's activations in the backward pass (less memory)"
    )
    layerdrop: float = key(
        0.0, "wav2vec2 LayerDrop while training (hub config: 0.1); 0: every DDP/DeepSpeed rank runs all layers"
    )
    tiny: TinyBackboneConfig = key(default_factory=TinyBackboneConfig, doc="the shape of the random-init tiny backbone")


@dataclass
class TrainConfig:
    epochs: int = key(20, "the teacher's epochs")
    batch_size: int = key(32, "the global batch (divided over the ranks)")
    grad_accum: int = key(1, "optimiser steps every this many batches")
    lr: float = key(1e-5, "the teacher's learning rate (Adam)")
    lr_decay: float = key(1.0, "learning rate factor per epoch")
    grad_clip: float = key(0.0, "clip the gradient norm to this (0: no clipping)")
    seed: int = key(0, "training seed: data order, dropout, masks")
    engine: Literal["plain", "ddp", "deepspeed"] = key(
        "plain", "plain (one process), ddp or deepspeed (ZeRO, bf16 on GPUs)"
    )
    deepspeed_config: str = key(
        "configs/deepspeed/zero2.json", "DeepSpeed's JSON (shipped: configs/deepspeed/zero{1,2,3}.json)"
    )
    precision: Literal["auto", "fp32", "bf16"] = key("auto", "auto: bf16 on GPUs that have it, else fp32")
    num_workers: int = key(0, "DataLoader worker processes")
    bucket_by_length: bool = key(
        False, "batches of similar length: less padding, but a narrower label spread per batch"
    )
    max_batch_seconds: float | None = key(None, "with buckets: cap a batch's total audio seconds")
    fused_optimizer: bool = key(True, "the fused Adam kernel on GPUs")
    compile: bool = key(False, "torch.compile the model")
    log_every: int = key(10, "a loss line every this many steps")
    keep_checkpoints: int = key(0, "complete checkpoints kept besides the selected epochs (0: the newest only)")


@dataclass
class StudentConfig:
    variants: list[str] = key(
        default_factory=lambda: ["RH", "RM", "RM+TL", "RM+CL", "RM+TL+CL"],
        doc="the students trained (the paper's five, or a registered variant)",
    )
    epochs: int = key(20, "each student's epochs")
    lr: float = key(1e-5, "the students' learning rate")
    lr_decay: float = key(1.0, "learning rate factor per epoch")
    lambda_tl: float = key(100.0, "weight of the transfer loss (RMSE to the teacher's clean embedding)")
    lambda_cl: float = key(10.0, "weight of the contrastive loss (label-margin InfoNCE)")
    margin: float = key(0.5, "InfoNCE: negatives are at least this far in label (1..7 scale, per attribute)")
    temperature: float = key(0.1, "InfoNCE temperature")
    snr_db: float = key(0.0, "the target SNR: the noisy training and development sets' mixing")
    cache_teacher_embeddings: bool = key(
        True, "compute the teacher's clean embeddings once (false: a live teacher every step)"
    )


@dataclass
class EvalConfig:
    groups: Literal["copies", "splits"] = key(
        "splits", "splits: the paper's disjoint test groups; copies: noisy copies of the whole test set"
    )
    n_groups: int = key(30, "test groups per condition")
    top_k: int = key(3, "development checkpoints scored per variant (best, non-consecutive)")
    alpha: float = key(0.05, "significance level of the one-tailed Welch t-tests")
    batch_size: int = key(16, "batch size of scoring and embedding")
    noisy_roots: dict[str, str] = key(
        default_factory=dict,
        doc="the corpus's own noisy test recordings: {snr0: folder, ...}, a file per test utterance",
    )
    noisy_dev_roots: dict[str, str] = key(
        default_factory=dict, doc="its noisy development recordings, the same way: checkpoint selection and Table 2"
    )


@dataclass
class CostConfig:
    """The throughput behind the GPU-hours that ``sweep --dry-run`` estimates (audio seconds per GPU-second).

    None: the package's figure for the configured model size and precision (``ctsl_hpc.cost``)."""

    train_audio_s_per_gpu_s: float | None = key(
        None, "training throughput (audio s per GPU-s); null: the package's figure"
    )
    forward_audio_s_per_gpu_s: float | None = key(
        None, "forward-only throughput (evaluation, embeddings); null: the package's figure"
    )


@dataclass
class TrackingConfig:
    enabled: bool = key(True, "log to MLflow")
    uri: str | None = key(
        None, "tracking URI (http(s)://, sqlite:///, a path); null: $MLFLOW_TRACKING_URI, else the work directory's"
    )
    experiment: str | None = key(None, "MLflow experiment; null: the config's name")


@dataclass
class TuneConfig:
    """The Ray Tune search over the student's loss weights and the training-noise budget."""

    variant: str = key("RM+TL+CL", "the student variant the trials train")
    lambda_tl: list[float] = key(default_factory=lambda: [1.0, 1000.0], doc="lambda_TL's log-uniform range [low, high]")
    lambda_cl: list[float] = key(default_factory=lambda: [0.1, 100.0], doc="lambda_CL's log-uniform range [low, high]")
    noise_minutes: list[float] = key(
        default_factory=lambda: [0.5, 2.0, 10.0, 30.0], doc="the training-noise minutes to choose from"
    )
    num_samples: int = key(8, "trials")
    search_alg: Literal["random", "optuna"] = key("random", "random (Ray's variant generator) or optuna (TPE)")
    metric: Literal[DEV_METRICS] = key(DEV_SCORE, "the development metric the search maximises (its best epoch's)")
    scheduler: Literal["asha", "hyperband", "fifo"] = key(
        "asha", "early stopping: asha, hyperband (synchronous brackets) or fifo (none)"
    )
    grace_period: int = key(1, "ASHA: epochs before a trial may be stopped")
    reduction_factor: int = key(2, "ASHA and Hyperband: a 1/factor of the trials go on at each rung")
    brackets: int = key(1, "ASHA: brackets; bracket s's first rung is at grace_period x reduction_factor^s")
    max_t: int = key(4, "epochs of a trial never stopped early")
    max_concurrent: int = key(0, "trials at a time (0: as many as the resources allow)")
    cpus_per_trial: float = key(1.0, "CPUs each trial takes")
    gpus_per_trial: float = key(0.0, "GPUs each trial takes")
    storage_path: str | None = key(
        None, "where the Tune experiment lives; null: <workdir>/tune (shared storage on a cluster)"
    )
    max_failures: int = key(2, "retries of a trial whose process or node died, from its newest checkpoint")
    reuse_actors: bool = key(
        True, "a finished trial's worker process runs the next trial on its CPUs/GPUs (no new process and imports); "
        "false: a fresh process per trial"
    )
    final_variants: list[str] | None = key(None, "students trained with the best point; null: student.variants")
    seed: int = key(0, "the search's seed")


@dataclass
class ContainerConfig:
    """A container every job of a stage runs in: Apptainer, or pyxis (``srun --container-image``)."""

    runtime: Literal["apptainer", "pyxis"] | None = key(None, "apptainer, pyxis, or null (no container)")
    image: str | None = key(None, "Apptainer: a .sif file; pyxis: an image (docker://..., a .sqsh file)")
    mounts: list[str] = key(default_factory=list, doc="host[:container] paths; $VARIABLES expand in the job")
    options: list[str] = key(default_factory=list, doc="more apptainer exec / srun options")


@dataclass
class SlurmStageConfig:
    """Per-stage Slurm overrides (teacher, students, eval, tune); ``None`` inherits the ``slurm.*`` default."""

    partition: str | None = key(None, "this stage's override of slurm.partition (null: the default's)")
    account: str | None = key(None, "override of slurm.account")
    qos: str | None = key(None, "override of slurm.qos")
    time_min: int | None = key(None, "override of slurm.time_min")
    nodes: int | None = key(None, "override of slurm.nodes")
    gpus_per_node: int | None = key(None, "override of slurm.gpus_per_node")
    tasks_per_node: int | None = key(None, "override of slurm.tasks_per_node")
    cpus_per_task: int | None = key(None, "override of slurm.cpus_per_task")
    mem_gb: float | None = key(None, "override of slurm.mem_gb")
    constraint: str | None = key(None, "override of slurm.constraint")
    array_parallelism: int | None = key(None, "override of slurm.array_parallelism")
    signal_delay_s: int | None = key(None, "override of slurm.signal_delay_s")
    max_requeues: int | None = key(None, "override of slurm.max_requeues")
    additional: dict[str, Any] | None = key(None, "sbatch options merged over slurm.additional")
    setup: list[str] | None = key(None, "replaces slurm.setup for this stage")
    python: str | None = key(None, "override of slurm.python")
    container: ContainerConfig | None = key(None, "override of slurm.container")
    env: dict[str, str] | None = key(None, "variables merged over slurm.env")


PREPARE_STAGE, TEACHER_STAGE, STUDENTS_STAGE, EVAL_STAGE, TUNE_STAGE = "prepare", "teacher", "students", "eval", "tune"
# job stages, each with its own overrides (prepare: the CPU job checking the inputs; tune: the Ray allocation)
SLURM_STAGES = (PREPARE_STAGE, TEACHER_STAGE, STUDENTS_STAGE, EVAL_STAGE, TUNE_STAGE)
GRAPH_STAGES = (PREPARE_STAGE, TEACHER_STAGE, STUDENTS_STAGE, EVAL_STAGE)  # the job graph of a sweep, in order
ONE_NODE_STAGES = (PREPARE_STAGE, EVAL_STAGE)  # one process each: a multi-node default is not for them
TRAINING_STAGES = (TEACHER_STAGE, STUDENTS_STAGE)  # stages whose jobs run the training engine (ranks with ddp/deepspeed)


@dataclass
class SlurmConfig:
    """Slurm resources of a sweep; each stage may override any field (``slurm.students.gpus_per_node``)."""

    partition: str | None = key(None, "partition (null: the cluster's default)")
    account: str | None = key(None, "account to charge")
    qos: str | None = key(None, "quality of service")
    time_min: int = key(240, "time limit in minutes")
    nodes: int = key(1, "nodes per job (training stages with ddp/deepspeed; tune: Ray nodes)")
    gpus_per_node: int = key(0, "GPUs per node")
    tasks_per_node: int | None = key(
        None, "ranks per node of ddp/deepspeed training; null: one per GPU (one without GPUs)"
    )
    cpus_per_task: int = key(2, "CPUs per task")
    mem_gb: float = key(8.0, "memory per node in GB")
    constraint: str | None = key(None, "node features (--constraint)")
    array_parallelism: int = key(8, "array tasks running at once")
    signal_delay_s: int = key(120, "USR2 this long before the time limit: checkpoint and requeue")
    max_requeues: int = key(10, "restarts a job may take before it fails")
    additional: dict[str, Any] = key(
        default_factory=dict, doc="any other sbatch option, e.g. {exclusive: true, reservation: x}"
    )
    setup: list[str] = key(default_factory=list, doc="shell lines before Python: module load ..., source .../activate")
    python: str | None = key(None, "the interpreter command; null: the one that submits")
    container: ContainerConfig = key(
        default_factory=ContainerConfig, doc="every job in a container (Apptainer or pyxis)"
    )
    env: dict[str, str] = key(default_factory=dict, doc="variables exported in the job script, e.g. NCCL_SOCKET_IFNAME")
    prepare: SlurmStageConfig = key(
        default_factory=SlurmStageConfig, doc="the prepare stage's overrides (CPU-only unless it sets gpus_per_node)"
    )
    teacher: SlurmStageConfig = key(default_factory=SlurmStageConfig, doc="the teacher's overrides")
    students: SlurmStageConfig = key(default_factory=SlurmStageConfig, doc="the students' overrides")
    eval: SlurmStageConfig = key(default_factory=SlurmStageConfig, doc="the evaluation's overrides")
    tune: SlurmStageConfig = key(default_factory=SlurmStageConfig, doc="the search's overrides (its Ray allocation)")

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
    name: str = key("ctsl", "the experiment's name (MLflow experiment, job names)")
    workdir: str = key("runs/ctsl", "the work directory: everything a resume needs")
    umask: str = key(
        "027", 'octal string: "027" the group reads, others nothing; nothing is ever group- or world-writable'
    )
    seed: int = key(0, "the seed of noise draws, test groups and the head's initialisation")
    seeds: list[int] = key(
        default_factory=list,
        doc="replicates: the whole sweep once per seed (seed and train.seed), Table 1 over the seeds",
    )
    data: DataConfig = key(default_factory=DataConfig, doc="the corpus")
    synthetic: SyntheticConfig = key(default_factory=SyntheticConfig, doc="the demo corpus")
    noise: NoiseConfig = key(default_factory=NoiseConfig, doc="the noise pools")
    model: ModelConfig = key(default_factory=ModelConfig, doc="the model")
    train: TrainConfig = key(default_factory=TrainConfig, doc="training (the teacher; engine and batching for all)")
    student: StudentConfig = key(default_factory=StudentConfig, doc="the students")
    eval: EvalConfig = key(default_factory=EvalConfig, doc="the evaluation protocol")
    tracking: TrackingConfig = key(default_factory=TrackingConfig, doc="MLflow")
    cost: CostConfig = key(default_factory=CostConfig, doc="the dry run's GPU-hour figures")
    slurm: SlurmConfig = key(default_factory=SlurmConfig, doc="Slurm resources, per stage")
    tune: TuneConfig = key(default_factory=TuneConfig, doc="the Ray Tune search")

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
