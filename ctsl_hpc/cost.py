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
from ctsl_hpc.config import (
    EVAL_STAGE,
    LARGE_ROBUST,
    STUDENTS_STAGE,
    TEACHER_STAGE,
    TUNE_STAGE,
    ExperimentConfig,
    TuneConfig,
)
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


def search_trial_epochs(tc: TuneConfig) -> tuple[int, int, str]:
    """The search's trial-epochs: (at most, expected, under what). Hyperband's count is exact (its brackets
    do not depend on the scores, as Ray Tune's ``HyperBandScheduler`` fills them); ASHA's is synchronous
    successive halving's, which its asynchronous promotion misses by a few epochs either way
    (``benchmarks/tune_replay.py`` measures it).

    Example:
        >>> from ctsl_hpc.config import TuneConfig
        >>> search_trial_epochs(TuneConfig(scheduler="hyperband", num_samples=17, max_t=9, reduction_factor=3))
        (153, 75, "Hyperband's brackets")
        >>> search_trial_epochs(TuneConfig(scheduler="asha", num_samples=27, max_t=9, grace_period=1, reduction_factor=3))
        (243, 63, 'ASHA, as synchronous successive halving')
        >>> search_trial_epochs(TuneConfig(num_samples=27, max_t=9, grace_period=2, reduction_factor=3, brackets=2))
        (243, 123, 'ASHA, as synchronous successive halving over 2 brackets')
    """
    at_most = tc.num_samples * tc.max_t
    if tc.scheduler == "fifo":
        return at_most, at_most, "no early stopping"
    if tc.scheduler == "hyperband":
        return at_most, _hyperband_epochs(tc.num_samples, tc.max_t, tc.reduction_factor), "Hyperband's brackets"
    # Ray's ASHAScheduler draws a trial's bracket with probability proportional to e^(its number of rungs)
    rungs = [_asha_rungs(tc, s) for s in range(tc.brackets)]
    weights = [math.e ** (len(r) - max(map(len, rungs))) for r in rungs]
    per_trial = sum(w * _halving_epochs(r, tc.max_t, tc.reduction_factor) for w, r in zip(weights, rungs, strict=True))
    how = "ASHA, as synchronous successive halving" + (f" over {tc.brackets} brackets" if tc.brackets > 1 else "")
    return at_most, round(tc.num_samples * per_trial / sum(weights)), how


def _asha_rungs(tc: TuneConfig, bracket: int) -> list[int]:
    """The rungs of ASHA's bracket ``bracket`` (0: the first), ascending, as Ray's ``_Bracket`` makes them."""
    count = int(math.log(tc.max_t / tc.grace_period) / math.log(tc.reduction_factor) - bracket + 1)
    return [tc.grace_period * tc.reduction_factor ** (k + bracket) for k in range(count)]


def _halving_epochs(rungs: list[int], max_t: int, eta: int) -> float:
    """Epochs per trial under synchronous successive halving: all reach the first rung, 1/eta of them each next
    one, and 1/eta of those at the last rung go on to max_t."""
    total, trained, alive = 0.0, 0, 1.0
    for rung in [*(r for r in rungs if r < max_t), max_t]:
        total += alive * (rung - trained)
        trained, alive = rung, alive / eta
    return total


def _hyperband_epochs(trials: int, max_t: int, eta: int) -> int:
    """Ray Tune's Hyperband: bands of brackets s = 0, 1, ...; bracket s takes ceil(s_max / (s + 1) * eta^s)
    trials to max_t * eta^-s epochs, keeps ceil(n / eta) of its n at each rung (n counted from its size)."""
    s_max = int(round(math.log(max_t) / math.log(eta))) + 1
    total, left, s = 0, trials, 0
    while left > 0:
        r = int(max_t * eta ** -(s % s_max))
        if r > 0:
            n = math.ceil(s_max / (s % s_max + 1) * eta ** (s % s_max))
            live, trained = min(n, left), 0
            left -= live
            for _ in range(s % s_max + 1):
                total += live * (r - trained)
                trained, n = r, math.ceil(n / eta)
                live, r = min(live, n), min(r * eta, max_t)
        s += 1
    return total


def _training(variants: Sequence[str], epochs: int, cfg: ExperimentConfig, n: dict[str, int], audio: dict[str, float],
              label: str = "") -> list[Passes]:
    """The passes of students ``variants`` trained ``epochs`` epochs (the cache of the teacher's embeddings once)."""
    s = cfg.student
    passes: list[Passes] = []
    needs_teacher = [v for v in variants if recipe(v, cfg).needs_teacher]
    if needs_teacher and s.cache_teacher_embeddings:
        passes.append(Passes("teacher embeddings of train, once (cache)", n["train"], audio["train"], False))
    for variant in variants:
        trains = recipe(variant, cfg).train_backbone
        passes.append(Passes(f"{label}{variant}: {epochs} epochs x train" + ("" if trains else " (forward: head only)"),
                             epochs * n["train"], epochs * audio["train"], trains))
        passes.append(Passes(f"{label}{variant}: {epochs} epochs x dev", epochs * n["dev"], epochs * audio["dev"], False))
        if variant in needs_teacher and not s.cache_teacher_embeddings:
            passes.append(Passes(f"{label}{variant}: live teacher, {epochs} epochs x train", epochs * n["train"],
                                 epochs * audio["train"], False))
    return passes


def stage_costs(cfg: ExperimentConfig, n: dict[str, int], audio: dict[str, float], search: bool = False
                ) -> list[StageCost]:
    """The passes of each stage for ``n`` utterances and ``audio`` seconds per split (``search``: the Ray Tune
    search's graph, its expected trial-epochs, then the final students)."""
    t, s, e, tc = cfg.train, cfg.student, cfg.eval, cfg.tune
    teacher = StageCost(TEACHER_STAGE, [Passes(f"{t.epochs} epochs x train", t.epochs * n["train"], t.epochs * audio["train"], True),
                                    Passes(f"{t.epochs} epochs x dev", t.epochs * n["dev"], t.epochs * audio["dev"], False)])
    stages = [teacher]
    variants = list(tc.final_variants or s.variants) if search else list(s.variants)
    if search:
        at_most, expected, how = search_trial_epochs(tc)
        label = f"{tc.num_samples} trials, expected under {how} (at most {at_most} trial-epochs), "
        stages.append(StageCost(TUNE_STAGE, _training([tc.variant], expected, cfg, n, audio, label)))
    stages.append(StageCost(STUDENTS_STAGE, _training(variants, s.epochs, cfg, n, audio, "final " if search else "")))
    models = {TEACHER: t.epochs, **dict.fromkeys(variants, s.epochs)}
    checkpoints = sum(min(e.top_k, math.ceil(epochs / 2)) for epochs in models.values())  # non-consecutive epochs
    per_model = test_passes_per_model(cfg)
    stages.append(StageCost(EVAL_STAGE, [
        Passes(f"{checkpoints} checkpoints x {per_model} test passes ({e.groups}, n_groups {e.n_groups})",
               checkpoints * per_model * n["test"], checkpoints * per_model * audio["test"], False),
        Passes(f"Table 2: {len(models)} models x {len(CONDITIONS)} conditions + the teacher's clean x dev",
               (len(models) * len(CONDITIONS) + 1) * n["dev"], (len(models) * len(CONDITIONS) + 1) * audio["dev"], False),
    ]))
    k = len(cfg.seeds)
    if k > 1:  # replicates: every stage once per seed
        stages = [StageCost(st.stage, [Passes(f"{p.what}, x {k} seeds", p.passes * k, p.audio_s * k, p.training)
                                       for p in st.passes]) for st in stages]
    return stages


def sweep_cost(cfg: ExperimentConfig, workdir: Workdir, search: bool = False
               ) -> tuple[dict[str, int], dict[str, float], list[StageCost]] | str:
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
    return n, audio, stage_costs(cfg, n, audio, search)


def cost_lines(cfg: ExperimentConfig, workdir: Workdir, search: bool = False) -> dict[str, list[str]]:
    """The dry run's cost lines: ``inputs`` and ``total``, and one entry per stage (teacher, tune, students, eval)."""
    counted = sweep_cost(cfg, workdir, search)
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
