"""Value ranges and cross-field rules of an experiment configuration.

Type errors are caught while loading (:mod:`ctsl_hpc.config.loading`); this checks what a type
cannot say (positive sizes, known variant and corpus names, per-stage Slurm settings) and raises
:class:`ConfigError` naming the dotted key.
"""

from __future__ import annotations

import re
from pathlib import Path

from ctsl_hpc import variants
from ctsl_hpc.config.files import shipped_file
from ctsl_hpc.config.schema import (
    ONE_NODE_STAGES,
    SLURM_STAGES,
    TRAINING_STAGES,
    ConfigError,
    ExperimentConfig,
    SlurmConfig,
    SlurmStageConfig,
    TrainConfig,
    TuneConfig,
)
from ctsl_hpc.data.conditions import NOISY_CONDITIONS
from ctsl_hpc.data.corpora import corpus_names, corpus_spec
from ctsl_hpc.data.corpus import LABEL_MAX, LABEL_MIN


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message}")


def _require_students(names: list[str], key: str) -> None:
    students = variants.student_names()
    for i, name in enumerate(names):
        where = key if key == "tune.variant" else f"{key}[{i}]"
        _require(name in students, where, f"{name!r} is not one of {list(students)}")


def validate(cfg: ExperimentConfig) -> None:
    """Check value ranges and cross-field rules; raise :class:`ConfigError` naming the key."""
    d, n, m, t, s, e = cfg.data, cfg.noise, cfg.model, cfg.train, cfg.student, cfg.eval
    _require(bool(cfg.name.strip()), "name", "must not be empty")
    _require(re.fullmatch(r"0?[0-7]{3}", cfg.umask) is not None, "umask",
             f"must be an octal mask such as \"027\" or \"022\", got {cfg.umask!r}")
    for key, seed in (("seed", cfg.seed), ("train.seed", t.seed), ("synthetic.seed", cfg.synthetic.seed),
                      ("tune.seed", cfg.tune.seed)):
        _require(seed >= 0, key, f"must be >= 0 (numpy and torch take non-negative seeds), got {seed}")
    _require(d.sample_rate > 0, "data.sample_rate", "must be positive")
    _require(d.max_seconds > 0, "data.max_seconds", "must be positive")
    _require(0 <= d.min_seconds < d.max_seconds, "data.min_seconds", "must be in [0, max_seconds)")
    _require(d.corpus in corpus_names(), "data.corpus", f"{d.corpus!r} is not one of {corpus_names()}")
    corpus = corpus_spec(d.corpus)
    for key in corpus.required:
        _require(getattr(d, key) is not None, f"data.{key}", f"is required when data.corpus is {d.corpus}")
    if not corpus.own_noise:
        for split in ("train", "dev", "test"):
            _require(
                getattr(n, split) is not None,
                f"noise.{split}",
                "a noise folder is required for a real corpus (the demo pool is only for synthetic)",
            )
    folders = {split: Path(getattr(n, split)).resolve() for split in ("train", "dev", "test") if getattr(n, split)}
    for first, second in (("train", "dev"), ("train", "test"), ("dev", "test")):
        if first in folders and folders.get(second) == folders[first]:
            _require(False, f"noise.{second}", f"is the same folder as noise.{first} ({folders[first]}): the noise "
                     "pools must be disjoint")
    _require(n.minutes > 0, "noise.minutes", "must be positive")
    for key in ("train_audio_s_per_gpu_s", "forward_audio_s_per_gpu_s"):
        value = getattr(cfg.cost, key)
        _require(value is None or value > 0, f"cost.{key}", f"must be positive (or null: the package's figure), got {value}")
    _require(m.num_layers >= 1, "model.num_layers", "must be at least 1")
    _require(m.head_layers >= 0, "model.head_layers", "must be >= 0")
    _require(m.head_hidden >= 1, "model.head_hidden", "must be positive")
    _require(0 <= m.dropout < 1, "model.dropout", "must be in [0, 1)")
    _require(0 <= m.layerdrop < 1, "model.layerdrop", "must be in [0, 1)")
    _require(m.layerdrop == 0 or cfg.train.engine == "plain", "model.layerdrop",
             f"needs train.engine plain: under {cfg.train.engine} every rank would drop other layers")
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
    _require_students(s.variants, "student.variants")
    _require(s.lambda_tl >= 0, "student.lambda_tl", "must be >= 0")
    _require(s.lambda_cl >= 0, "student.lambda_cl", "must be >= 0")
    span = LABEL_MAX - LABEL_MIN
    _require(0 < s.margin <= span, "student.margin", f"must be in (0, {span:g}] on the {LABEL_MIN:g}..{LABEL_MAX:g} label scale")
    _require(s.temperature > 0, "student.temperature", "must be positive")
    _require(e.n_groups >= 2, "eval.n_groups", "must be at least 2 (Welch needs two values)")
    _require(e.top_k >= 1, "eval.top_k", "must be at least 1")
    _require(0 < e.alpha < 1, "eval.alpha", "must be in (0, 1)")
    _require(e.batch_size >= 1, "eval.batch_size", "must be at least 1")
    if t.engine == "deepspeed":
        try:
            shipped_file(t.deepspeed_config, ".json", "deepspeed")
        except ConfigError as exc:
            raise ConfigError(f"train.deepspeed_config: {exc}") from None
    _require(len(set(cfg.seeds)) == len(cfg.seeds) and all(s >= 0 for s in cfg.seeds) and len(cfg.seeds) != 1, "seeds",
             f"give two or more distinct seeds >= 0 for replicates (or none for a single run), got {cfg.seeds}")
    _validate_tracking_uri(cfg.tracking.uri)
    _validate_tune(cfg.tune)
    _validate_slurm(cfg.slurm, t)
    for key, roots in (("eval.noisy_roots", e.noisy_roots), ("eval.noisy_dev_roots", e.noisy_dev_roots)):
        for condition in roots:
            _require(condition in NOISY_CONDITIONS, f"{key}.{condition}", f"conditions are {', '.join(NOISY_CONDITIONS)}")


def check_training_ranks(cfg: ExperimentConfig) -> None:
    """The training stages' jobs as Slurm would run them: several nodes need a distributed engine, and
    the global batch must divide by the ranks (nodes x tasks per node). Checked by the Slurm backend
    before it submits the stages (not at load: ``sweep --tune`` trains inside its own allocation, whose
    ``slurm.nodes`` are Ray nodes)."""
    slurm, engine = cfg.slurm, cfg.train.engine
    for name in TRAINING_STAGES:
        st, key = slurm.stage(name), f"slurm.{name}"
        _require(engine in ("ddp", "deepspeed") or st.nodes == 1, f"{key}.nodes",
                 f"several nodes need train.engine ddp or deepspeed (train.engine is {engine!r})")
        per_node = slurm.ranks_per_node(name, engine)
        ranks = st.nodes * per_node
        _require(cfg.train.batch_size % ranks == 0, f"{key}.nodes",
                 f"train.batch_size={cfg.train.batch_size} is the global batch: it must divide by the ranks, nodes x "
                 f"tasks per node = {st.nodes} x {per_node} = {ranks}")


def _validate_slurm(slurm: SlurmConfig, train: TrainConfig) -> None:
    _validate_job_environment(slurm, "slurm")  # the defaults first: an error names the key that was set
    engine = train.engine
    for name in SLURM_STAGES:
        st, key = slurm.stage(name), f"slurm.{name}"

        def where(field: str, name: str = name) -> str:  # the key that was set: the stage's, else the default's
            return f"slurm.{name}.{field}" if getattr(getattr(slurm, name), field) is not None else f"slurm.{field}"

        _require(st.tasks_per_node is None or st.tasks_per_node >= 1, where("tasks_per_node"), "must be at least 1")
        _require(st.nodes >= 1, where("nodes"), "must be at least 1")
        if name in TRAINING_STAGES:
            _require(
                engine in ("ddp", "deepspeed") or st.tasks_per_node in (None, 1),
                where("tasks_per_node"), f"several tasks need train.engine ddp or deepspeed (train.engine is {engine!r})",
            )
        if name in ONE_NODE_STAGES:
            _require(st.nodes == 1, where("nodes"), f"the {name} stage is one process: it runs on 1 node")
        _require(st.time_min >= 1, where("time_min"), "must be at least 1 minute")
        _require(st.gpus_per_node >= 0, where("gpus_per_node"), "must be >= 0")
        _require(st.cpus_per_task >= 1, where("cpus_per_task"), "must be at least 1")
        _require(st.mem_gb > 0, where("mem_gb"), "must be positive")
        _require(st.array_parallelism >= 1, where("array_parallelism"), "must be at least 1")
        _require(0 <= st.signal_delay_s < st.time_min * 60, where("signal_delay_s"), "must be in [0, time_min * 60)")
        _require(st.max_requeues >= 0, where("max_requeues"), "must be >= 0")
        _validate_job_environment(st, key)


def _validate_job_environment(st: SlurmConfig | SlurmStageConfig, key: str) -> None:
    """Setup lines, the interpreter, exported variables and the container: one line each, well formed."""
    for i, line in enumerate(st.setup):
        _require("\n" not in line and "\r" not in line, f"{key}.setup[{i}]", "must be one line (one shell line per entry)")
    _require(st.python is None or (st.python.strip() and "\n" not in st.python), f"{key}.python",
             "must be a one-line command such as 'python3' or '/shared/venv/bin/python'")
    for name, value in st.env.items():
        _require(name.isidentifier() and name.isascii(), f"{key}.env.{name}", "is not a shell variable name")
        _require("\n" not in str(value), f"{key}.env.{name}", "must be one line")
    container = st.container
    if container.runtime is not None:
        _require(bool(container.image), f"{key}.container.image", f"is required with container.runtime {container.runtime}")


# what MLflow's tracking stores answer to (mlflow.tracking._tracking_service.utils), and file paths
TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "file", "databricks", "databricks-uc", "uc")


def _validate_tracking_uri(uri: str | None) -> None:
    """A tracking store MLflow knows (``scheme://...``) or a folder path (absolute, or ``./`` relative)."""
    if uri is None:
        return
    scheme = uri.split("://", 1)[0].split("+", 1)[0] if "://" in uri else None
    if scheme is not None:
        _require(scheme in TRACKING_SCHEMES, "tracking.uri",
                 f"the scheme {scheme!r} is not one MLflow knows ({', '.join(TRACKING_SCHEMES)})")
        return
    _require(uri.startswith(("/", "./", "../", "~")) or "${env:" in uri, "tracking.uri",
             f"{uri!r} is neither a URI (http://host:5000, sqlite:///path/mlflow.db, ...) nor a path (/abs or ./relative)")


def _validate_tune(tune: TuneConfig) -> None:
    _require_students([tune.variant], "tune.variant")
    for key in ("lambda_tl", "lambda_cl"):
        bounds = getattr(tune, key)
        _require(len(bounds) == 2 and 0 < bounds[0] <= bounds[1], f"tune.{key}", "must be [low, high] with 0 < low <= high")
    _require(bool(tune.noise_minutes) and min(tune.noise_minutes) > 0, "tune.noise_minutes", "must be positive minutes")
    _require(tune.num_samples >= 1, "tune.num_samples", "must be at least 1")
    _require(tune.max_t >= 1, "tune.max_t", "must be at least 1 epoch")
    _require(1 <= tune.grace_period <= tune.max_t, "tune.grace_period", "must be in [1, max_t]")
    _require(tune.reduction_factor >= 2, "tune.reduction_factor", "must be at least 2")
    _require(tune.brackets >= 1 and tune.grace_period * tune.reduction_factor ** (tune.brackets - 1) <= tune.max_t,
             "tune.brackets", "must be at least 1, with the last bracket's first rung (grace_period x "
             "reduction_factor^(brackets - 1)) at most max_t")
    _require(tune.max_concurrent >= 0, "tune.max_concurrent", "must be >= 0 (0: no limit)")
    _require(tune.cpus_per_trial > 0, "tune.cpus_per_trial", "must be positive")
    _require(tune.gpus_per_trial >= 0, "tune.gpus_per_trial", "must be >= 0")
    _require(tune.max_failures >= 0, "tune.max_failures", "must be >= 0")
    _require_students(tune.final_variants or [], "tune.final_variants")
