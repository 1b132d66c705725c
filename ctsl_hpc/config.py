"""Typed experiment configuration: YAML files in ``configs/`` plus dotted command-line overrides.

Every key is declared here with its type and default; an unknown key or a bad value raises
:class:`ConfigError` naming the dotted key before any work starts.

Example:
    >>> cfg = load_config(None, ["train.epochs=3", "student.lambda_tl=50"])
    >>> cfg.train.epochs, cfg.student.lambda_tl
    (3, 50.0)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEMO_CONFIG = CONFIG_DIR / "demo.yaml"


class ConfigError(ValueError):
    """A configuration key is unknown or its value is invalid; the message names the key."""


@dataclass
class DataConfig:
    corpus: Literal["synthetic", "msp_podcast", "csv"] = "synthetic"
    root: str | None = None
    manifest: str | None = None
    sample_rate: int = 16000
    max_seconds: float = 12.0
    min_seconds: float = 0.5
    normalize: bool = True
    on_bad_audio: Literal["error", "skip"] = "error"
    msp_test_split: Literal["Test1", "Test2"] = "Test1"
    preload: bool = False


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


@dataclass
class ModelConfig:
    backbone: str = "facebook/wav2vec2-large-robust"
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
    metric: Literal["dev/ccc_mean", "dev/ccc/arousal", "dev/ccc/dominance", "dev/ccc/valence"] = "dev/ccc_mean"
    grace_period: int = 1  # ASHA, in epochs
    reduction_factor: int = 2
    max_t: int = 4  # epochs of a trial that is never stopped early
    max_concurrent: int = 0  # 0: as many trials as the resources allow
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    storage_path: str | None = None  # default: <workdir>/tune (shared storage on a cluster)
    final_variants: list[str] | None = None  # students trained with the best config; default student.variants
    seed: int = 0


@dataclass
class SlurmStageConfig:
    """Per-stage Slurm overrides (teacher, students, eval); ``None`` inherits the ``slurm.*`` default."""

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


SLURM_STAGES = ("teacher", "students", "eval")


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
    teacher: SlurmStageConfig = field(default_factory=SlurmStageConfig)
    students: SlurmStageConfig = field(default_factory=SlurmStageConfig)
    eval: SlurmStageConfig = field(default_factory=SlurmStageConfig)

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
        return SlurmStageConfig(**values)


@dataclass
class ExperimentConfig:
    name: str = "ctsl"
    workdir: str = "runs/ctsl"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain nested dicts (YAML/JSON serialisable)."""
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """A short stable hash of the resolved configuration."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


VARIANTS = ("original", "RH", "RM", "RM+TL", "RM+CL", "RM+TL+CL")
STUDENT_VARIANTS = VARIANTS[1:]


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against the type ``hint`` (converting int -> float), naming ``key`` on error."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise ConfigError(f"{key}: {value!r} is not one of {list(typing.get_args(hint))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        _, item = typing.get_args(hint)
        return {str(k): _coerce(v, item, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return _build(hint, value, key)
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{key}: expected float, got {value!r}") from None
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if hint in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if not isinstance(value, hint):
        raise ConfigError(f"{key}: expected {hint.__name__}, got {value!r}")
    return value


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in names:
            raise ConfigError(f"unknown config key {key!r} (known: {sorted(names)})")
        kwargs[name] = _coerce(value, hints[name], key)
    return cls(**kwargs)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> dict[str, Any]:
    """Turn ``"a.b.c=value"`` into ``{"a": {"b": {"c": value}}}`` (value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    path, raw = text.split("=", 1)
    keys = path.strip().split(".")
    if not all(keys):
        raise ConfigError(f"override {text!r} has an empty key")
    value: Any = yaml.safe_load(raw) if raw.strip() else None
    for key in reversed(keys):
        value = {key: value}
    return value


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return loaded


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> ExperimentConfig:
    """Load ``path`` (default: ``configs/demo.yaml``), apply dotted overrides, validate."""
    values = _read_yaml(Path(path) if path else DEMO_CONFIG)
    for text in overrides:
        values = _merge(values, parse_override(text))
    cfg = _build(ExperimentConfig, values)
    validate(cfg)
    return cfg


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings to dotted keys, e.g. ``{"a": {"b": 1}} -> {"a.b": 1}`` (empty mappings kept as values)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def config_from_dict(values: dict[str, Any]) -> ExperimentConfig:
    """Rebuild a validated config from :meth:`ExperimentConfig.to_dict` output."""
    cfg = _build(ExperimentConfig, values)
    validate(cfg)
    return cfg


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message}")


def validate(cfg: ExperimentConfig) -> None:
    """Check value ranges and cross-field rules; raise :class:`ConfigError` naming the key."""
    d, n, m, t, s, e = cfg.data, cfg.noise, cfg.model, cfg.train, cfg.student, cfg.eval
    _require(bool(cfg.name.strip()), "name", "must not be empty")
    _require(d.sample_rate > 0, "data.sample_rate", "must be positive")
    _require(d.max_seconds > 0, "data.max_seconds", "must be positive")
    _require(0 <= d.min_seconds < d.max_seconds, "data.min_seconds", "must be in [0, max_seconds)")
    if d.corpus == "msp_podcast":
        _require(d.root is not None, "data.root", "is required when data.corpus is msp_podcast")
    if d.corpus == "csv":
        _require(d.manifest is not None, "data.manifest", "is required when data.corpus is csv")
    if d.corpus != "synthetic":
        for split in ("train", "dev", "test"):
            _require(
                getattr(n, split) is not None,
                f"noise.{split}",
                "a noise folder is required for a real corpus (the demo pool is only for synthetic)",
            )
    _require(n.minutes > 0, "noise.minutes", "must be positive")
    _require(m.num_layers >= 1, "model.num_layers", "must be at least 1")
    _require(m.head_layers >= 0, "model.head_layers", "must be >= 0")
    _require(m.head_hidden >= 1, "model.head_hidden", "must be positive")
    _require(0 <= m.dropout < 1, "model.dropout", "must be in [0, 1)")
    tiny = m.tiny
    _require(
        len(tiny.conv_stride) == len(tiny.conv_kernel),
        "model.tiny.conv_kernel",
        "must have as many entries as model.tiny.conv_stride",
    )
    _require(tiny.hidden_size % tiny.heads == 0, "model.tiny.heads", "must divide hidden_size")
    for section, key in ((t, "train"), (s, "student")):
        _require(section.epochs >= 1, f"{key}.epochs", "must be at least 1")
        _require(section.lr > 0, f"{key}.lr", "must be positive")
        _require(0 < section.lr_decay <= 1, f"{key}.lr_decay", "must be in (0, 1]")
    _require(t.batch_size >= 1, "train.batch_size", "must be at least 1")
    _require(t.grad_accum >= 1, "train.grad_accum", "must be at least 1")
    _require(t.grad_clip >= 0, "train.grad_clip", "must be >= 0 (0 disables clipping)")
    _require(t.num_workers >= 0, "train.num_workers", "must be >= 0")
    _require(t.log_every >= 1, "train.log_every", "must be at least 1")
    if t.max_batch_seconds is not None:
        _require(t.max_batch_seconds > 0, "train.max_batch_seconds", "must be positive")
    for i, variant in enumerate(s.variants):
        _require(variant in STUDENT_VARIANTS, f"student.variants[{i}]", f"{variant!r} is not one of {list(STUDENT_VARIANTS)}")
    _require(s.lambda_tl >= 0, "student.lambda_tl", "must be >= 0")
    _require(s.lambda_cl >= 0, "student.lambda_cl", "must be >= 0")
    _require(0 < s.margin <= 6, "student.margin", "must be in (0, 6] on the 1..7 label scale")
    _require(s.temperature > 0, "student.temperature", "must be positive")
    _require(e.n_groups >= 2, "eval.n_groups", "must be at least 2 (Welch needs two values)")
    _require(e.top_k >= 1, "eval.top_k", "must be at least 1")
    _require(0 < e.alpha < 1, "eval.alpha", "must be in (0, 1)")
    _require(e.batch_size >= 1, "eval.batch_size", "must be at least 1")
    _validate_tune(cfg.tune)
    _validate_slurm(cfg.slurm, t.engine)
    for condition in e.noisy_roots:
        _require(
            condition in ("snr10", "snr5", "snr0"),
            f"eval.noisy_roots.{condition}",
            "conditions are snr10, snr5, snr0",
        )


def _validate_slurm(slurm: SlurmConfig, engine: str) -> None:
    for name in SLURM_STAGES:
        st, key = slurm.stage(name), f"slurm.{name}"
        _require(st.tasks_per_node is None or st.tasks_per_node >= 1, f"{key}.tasks_per_node", "must be at least 1")
        _require(
            name == "eval" or engine in ("ddp", "deepspeed") or st.tasks_per_node in (None, 1),
            f"{key}.tasks_per_node", f"several tasks need train.engine ddp or deepspeed (train.engine is {engine!r})",
        )
        _require(st.time_min >= 1, f"{key}.time_min", "must be at least 1 minute")
        _require(st.nodes >= 1, f"{key}.nodes", "must be at least 1")
        _require(st.gpus_per_node >= 0, f"{key}.gpus_per_node", "must be >= 0")
        _require(st.cpus_per_task >= 1, f"{key}.cpus_per_task", "must be at least 1")
        _require(st.mem_gb > 0, f"{key}.mem_gb", "must be positive")
        _require(st.array_parallelism >= 1, f"{key}.array_parallelism", "must be at least 1")
        _require(0 <= st.signal_delay_s < st.time_min * 60, f"{key}.signal_delay_s", "must be in [0, time_min * 60)")
        _require(st.max_requeues >= 0, f"{key}.max_requeues", "must be >= 0")


def _validate_tune(tune: TuneConfig) -> None:
    _require(tune.variant in STUDENT_VARIANTS, "tune.variant", f"{tune.variant!r} is not one of {list(STUDENT_VARIANTS)}")
    for key in ("lambda_tl", "lambda_cl"):
        bounds = getattr(tune, key)
        _require(len(bounds) == 2 and 0 < bounds[0] <= bounds[1], f"tune.{key}", "must be [low, high] with 0 < low <= high")
    _require(bool(tune.noise_minutes) and min(tune.noise_minutes) > 0, "tune.noise_minutes", "must be positive minutes")
    _require(tune.num_samples >= 1, "tune.num_samples", "must be at least 1")
    _require(tune.max_t >= 1, "tune.max_t", "must be at least 1 epoch")
    _require(1 <= tune.grace_period <= tune.max_t, "tune.grace_period", "must be in [1, max_t]")
    _require(tune.reduction_factor >= 2, "tune.reduction_factor", "must be at least 2")
    _require(tune.max_concurrent >= 0, "tune.max_concurrent", "must be >= 0 (0: no limit)")
    _require(tune.cpus_per_trial > 0, "tune.cpus_per_trial", "must be positive")
    _require(tune.gpus_per_trial >= 0, "tune.gpus_per_trial", "must be >= 0")
    for i, variant in enumerate(tune.final_variants or []):
        _require(variant in STUDENT_VARIANTS, f"tune.final_variants[{i}]", f"{variant!r} is not one of {list(STUDENT_VARIANTS)}")
