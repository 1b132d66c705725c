"""What a sweep costs before it runs: per stage, utterances, audio hours, epochs, passes and GPU-hours.

The count follows what the stages do: the teacher trains ``train.epochs`` epochs on the clean
training set and scores the development set after each; every student variant trains
``student.epochs`` epochs on the noisy training set (``RH``: the backbone only runs forward) and
scores the noisy development set, with the teacher's clean embeddings computed once (the cache) or
every step (``student.cache_teacher_embeddings: false``); the evaluation scores ``eval.top_k``
checkpoints of every model on the test set, clean once and per noisy condition ``eval.n_groups``
noisy copies (``eval.groups: copies``) or one partitioned copy (``splits``), then Table 2 embeds the
development set per model and condition. Audio is counted as training reads it (cropped to
``data.max_seconds``), from the files' headers: no decoding, no torch. Durations are cached in the
work directory (:attr:`ctsl_hpc.workdir.Workdir.durations`) when it exists; a dry run creates nothing.

GPU-seconds = audio seconds of training passes / the training throughput + audio seconds of
forward passes / the forward throughput, both in audio seconds per GPU-second: ``cost.*`` in the
config, else the figure of :data:`THROUGHPUT` for the model size and precision.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from ctsl_hpc.atomic_io import atomic_write_json
from ctsl_hpc.config import EVAL_STAGE, LARGE_ROBUST, STUDENTS_STAGE, TEACHER_STAGE, ExperimentConfig
from ctsl_hpc.data.conditions import CONDITIONS, NOISY_CONDITIONS
from ctsl_hpc.data.corpora import corpus_spec
from ctsl_hpc.data.corpus import SPLITS, Utterance
from ctsl_hpc.train.recipe import recipe
from ctsl_hpc.variants import TEACHER
from ctsl_hpc.workdir import Workdir


@dataclass(frozen=True)
class Throughput:
    """Audio seconds one GPU processes per second, training and forward only, and where the figures come from."""

    train: float
    forward: float
    source: str


# (layers, width, precision) -> throughput. The 12-layer large-robust figure in bf16 is an estimate
# until benchmarks/gpu_check.sh has run on a GPU: torch counts 67.5 GFLOP per audio second for a
# training step (forward + backward, 6 s utterances) and 20.8 for a forward pass; at an assumed 15 %
# of an H100/H200's 989.4 TFLOP/s dense bf16 peak that is 2200 and 7100 audio s per GPU-second.
THROUGHPUT: dict[tuple[int, int, str], Throughput] = {
    (12, 1024, "bf16"): Throughput(2200.0, 7100.0, "estimate (counted FLOPs at an assumed 15 % MFU on an H100/H200; "
                                                   "benchmarks/gpu_check.sh has not run on a GPU yet)"),
}


@dataclass(frozen=True)
class Passes:
    """A kind of work of a stage: how many utterance passes, over how much audio, training or forward only."""

    what: str
    passes: int
    audio_s: float
    training: bool


@dataclass(frozen=True)
class StageCost:
    stage: str
    passes: list[Passes]

    def gpu_seconds(self, rate: Throughput) -> float:
        """The stage's GPU-seconds at ``rate``.

        Example:
            >>> StageCost("teacher", [Passes("train", 2, 7200.0, True), Passes("dev", 2, 720.0, False)]).gpu_seconds(
            ...     Throughput(train=100.0, forward=360.0, source="example"))
            74.0
        """
        return sum(p.audio_s / (rate.train if p.training else rate.forward) for p in self.passes)


def header_seconds(path: Path) -> float:
    """An audio file's duration from its header (no decoding)."""
    info = sf.info(str(path))
    return info.frames / info.samplerate


def durations(utterances: Sequence[Utterance], cache: Path | None) -> dict[str, float]:
    """Seconds of each file (unreadable ones: 0), through ``cache`` (size and mtime) when given."""
    known = {}
    if cache is not None and cache.is_file():
        try:
            known = json.loads(cache.read_text())
        except (ValueError, UnicodeDecodeError):
            known = {}  # a damaged cache only costs a new read
    seconds, fresh = {}, 0
    for utt in utterances:
        name = str(utt.path)
        try:
            stat = utt.path.stat()
            stamp = [stat.st_size, stat.st_mtime_ns]
            entry = known.get(name)
            if entry is None or entry[:2] != stamp:
                entry, fresh = [*stamp, header_seconds(utt.path)], fresh + 1
                known[name] = entry
            seconds[name] = entry[2]
        except (OSError, RuntimeError):  # missing or unreadable (soundfile raises RuntimeError subclasses)
            seconds[name] = 0.0
    if cache is not None and fresh:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(cache, known)
    return seconds


def model_size(cfg: ExperimentConfig) -> tuple[int, int | None, str]:
    """(layers, width, precision) of the configured model; width None when the backbone is not known here."""
    m = cfg.model
    precision = "fp32" if cfg.train.precision == "fp32" else "bf16"
    if m.backbone == "tiny":
        return min(m.num_layers, m.tiny.num_layers), m.tiny.hidden_size, precision
    config = Path(m.backbone) / "config.json"
    if config.is_file():
        return m.num_layers, int(json.loads(config.read_text())["hidden_size"]), precision
    return m.num_layers, 1024 if m.backbone == LARGE_ROBUST else None, precision


def throughput(cfg: ExperimentConfig) -> Throughput | None:
    """The config's figures (``cost.*``) where set, else the package's for the model size and precision."""
    known, c = THROUGHPUT.get(model_size(cfg)), cfg.cost
    train = c.train_audio_s_per_gpu_s or (known.train if known else None)
    forward = c.forward_audio_s_per_gpu_s or (known.forward if known else None)
    if train is None or forward is None:
        return None
    own = [key for key in ("train_audio_s_per_gpu_s", "forward_audio_s_per_gpu_s") if getattr(c, key) is not None]
    if not own:
        return Throughput(train, forward, known.source)
    return Throughput(train, forward, " and ".join(f"cost.{key}" for key in own) + " from the config"
                      + (f"; the package's figure otherwise, an {known.source}" if len(own) < 2 else ""))


def test_passes_per_model(cfg: ExperimentConfig) -> int:
    """Passes over the test set per scored checkpoint: clean once; per noisy condition one per copy
    (``copies``) or one (``splits``, and a real noisy recording set).

    Example:
        >>> from ctsl_hpc.config import load_config
        >>> test_passes_per_model(load_config("paper", ["eval.groups=copies"]))  # 30 copies
        91
        >>> test_passes_per_model(load_config("paper", []))  # eval.groups: splits, the paper's
        4
    """
    e = cfg.eval
    return 1 + sum(1 if c in e.noisy_roots or e.groups == "splits" else e.n_groups for c in NOISY_CONDITIONS)


test_passes_per_model.__test__ = False  # type: ignore[attr-defined]  # a library function, not a pytest test


def stage_costs(cfg: ExperimentConfig, n: dict[str, int], audio: dict[str, float]) -> list[StageCost]:
    """The passes of each stage for ``n`` utterances and ``audio`` seconds per split."""
    t, s, e = cfg.train, cfg.student, cfg.eval
    teacher = StageCost(TEACHER_STAGE, [Passes(f"{t.epochs} epochs x train", t.epochs * n["train"], t.epochs * audio["train"], True),
                                    Passes(f"{t.epochs} epochs x dev", t.epochs * n["dev"], t.epochs * audio["dev"], False)])
    students: list[Passes] = []
    needs_teacher = [v for v in s.variants if recipe(v, cfg).needs_teacher]
    if needs_teacher and s.cache_teacher_embeddings:
        students.append(Passes("teacher embeddings of train, once (cache)", n["train"], audio["train"], False))
    for variant in s.variants:
        trains = recipe(variant, cfg).train_backbone
        students.append(Passes(f"{variant}: {s.epochs} epochs x train" + ("" if trains else " (forward: head only)"),
                               s.epochs * n["train"], s.epochs * audio["train"], trains))
        students.append(Passes(f"{variant}: {s.epochs} epochs x dev", s.epochs * n["dev"], s.epochs * audio["dev"], False))
        if variant in needs_teacher and not s.cache_teacher_embeddings:
            students.append(Passes(f"{variant}: live teacher, {s.epochs} epochs x train", s.epochs * n["train"],
                                   s.epochs * audio["train"], False))
    models = {TEACHER: t.epochs, **dict.fromkeys(s.variants, s.epochs)}
    checkpoints = sum(min(e.top_k, math.ceil(epochs / 2)) for epochs in models.values())  # non-consecutive epochs
    per_model = test_passes_per_model(cfg)
    evaluation = StageCost(EVAL_STAGE, [
        Passes(f"{checkpoints} checkpoints x {per_model} test passes ({e.groups}, n_groups {e.n_groups})",
               checkpoints * per_model * n["test"], checkpoints * per_model * audio["test"], False),
        Passes(f"Table 2: {len(models)} models x {len(CONDITIONS)} conditions + the teacher's clean x dev",
               (len(models) * len(CONDITIONS) + 1) * n["dev"], (len(models) * len(CONDITIONS) + 1) * audio["dev"], False),
    ])
    return [teacher, StageCost(STUDENTS_STAGE, students), evaluation]


def sweep_cost(cfg: ExperimentConfig, workdir: Workdir) -> tuple[dict[str, int], dict[str, float], list[StageCost]] | str:
    """(utterances per split, audio seconds per split, stage costs), or why the corpus cannot be counted yet."""
    try:
        corpus = corpus_spec(cfg.data.corpus).existing(cfg, workdir.synthetic_data)
    except (OSError, ValueError) as exc:
        return f"the corpus cannot be read here ({exc})"
    if corpus is None:
        return f"the {cfg.data.corpus} corpus is built by the first run"
    cache = workdir.durations if workdir.root.is_dir() else None
    everything = [u for split in SPLITS for u in corpus.splits[split]]
    seconds = durations(everything, cache)
    cap = cfg.data.max_seconds
    n = {split: len(corpus.splits[split]) for split in SPLITS}
    audio = {split: sum(min(seconds[str(u.path)], cap) for u in corpus.splits[split]) for split in SPLITS}
    return n, audio, stage_costs(cfg, n, audio)


def cost_lines(cfg: ExperimentConfig, workdir: Workdir) -> dict[str, list[str]]:
    """The dry run's cost lines: ``inputs`` and ``total``, and one entry per stage (teacher, students, eval)."""
    counted = sweep_cost(cfg, workdir)
    if isinstance(counted, str):
        return {"inputs": [f"cost: not estimated: {counted}"]}
    n, audio, stages = counted
    rate = throughput(cfg)
    cached = f"cached in {workdir.durations}" if workdir.root.is_dir() else "not cached: the work directory does not exist yet"
    lines = {"inputs": [
        "cost: " + ", ".join(f"{split} {n[split]} utterances {_hours(audio[split])} h" for split in SPLITS)
        + f" (durations from the audio headers, cropped at data.max_seconds={cfg.data.max_seconds:g}; {cached})",
    ]}
    layers, width, precision = model_size(cfg)
    lines["inputs"].append(
        f"cost: throughput {rate.train:g} (training) and {rate.forward:g} (forward) audio s per GPU-second for "
        f"{layers} layers x {width} in {precision}: {rate.source}" if rate else
        f"cost: no throughput figure for {layers} layers x {width or '?'} in {precision}: set cost.train_audio_s_per_gpu_s "
        "and cost.forward_audio_s_per_gpu_s for GPU-hours"
    )
    total = 0.0
    for stage in stages:
        for p in stage.passes:
            kind = "forward+backward" if p.training else "forward"
            lines.setdefault(stage.stage, []).append(f"  cost: {p.what}: {p.passes} {kind} passes, {_hours(p.audio_s)} h of audio")
        if rate:
            seconds = stage.gpu_seconds(rate)
            total += seconds
            lines[stage.stage].append(f"  cost: {_hours(seconds)} GPU-hours" + (" (estimate)" if "estimate" in rate.source else ""))
    if rate:
        lines["total"] = [f"cost of the whole sweep: {_hours(total)} GPU-hours"
                          + (" (estimate)" if "estimate" in rate.source else "")]
    return lines


def _hours(seconds: float) -> str:
    """Hours, to 3 significant digits below 100 and to the hour above.

    Example:
        >>> _hours(36.0), _hours(5400.0), _hours(1_234_567.0)
        ('0.01', '1.5', '343')
    """
    hours = seconds / 3600
    return f"{hours:.0f}" if hours >= 100 else f"{hours:.3g}"
