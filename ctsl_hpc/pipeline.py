"""The stages of one experiment, each a plain function of (config, work directory).

prepare data -> train the teacher -> train each student -> evaluate every model -> report. Every
stage writes its outputs under the work directory and a ``DONE`` marker when finished, so running
it again reuses what is done and resumes what is not. The orchestration layer (local process,
Slurm jobs, Ray trials) calls these functions; nothing here knows which one it runs under.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import torch

from ctsl_hpc.config import ExperimentConfig
from ctsl_hpc.data.audio import WaveformStats, compute_stats
from ctsl_hpc.data.batching import UtteranceSet
from ctsl_hpc.data.corpus import Utterance, load_corpus
from ctsl_hpc.data.noise import NoisePool
from ctsl_hpc.data.synthetic import build_demo_corpus
from ctsl_hpc.evaluate import report
from ctsl_hpc.evaluate.embeddings import embedding_metrics
from ctsl_hpc.evaluate.protocol import Scores, select_checkpoints, test_groups
from ctsl_hpc.evaluate.scoring import score_models
from ctsl_hpc.model import build_model, load_model
from ctsl_hpc.train.embed_cache import cached_teacher, live_teacher, teacher_embeddings
from ctsl_hpc.train.loop import FitResult, MetricsSink, fit
from ctsl_hpc.train.variants import recipe
from ctsl_hpc.workdir import open_workdir

log = logging.getLogger(__name__)

DONE = "DONE"


class RunSink(MetricsSink, Protocol):
    """A tracked run: metrics plus artifacts (MLflow's child run in the tracking layer)."""

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...

    def log_artifacts(self, directory: Path, artifact_path: str | None = None) -> None: ...


SinkFactory = Callable[[str], RunSink | None]


@dataclass
class Workspace:
    """A work directory: everything a resume needs lives here."""

    root: Path
    cfg: ExperimentConfig

    @classmethod
    def open(cls, cfg: ExperimentConfig, root: str | Path | None = None) -> Workspace:
        """Create or reopen the work directory; refuse one made for another experiment."""
        return cls(open_workdir(cfg, root), cfg)

    def stage(self, *parts: str) -> Path:
        path = self.root.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def teacher_dir(self) -> Path:
        return self.stage("teacher")

    def student_dir(self, variant: str) -> Path:
        return self.stage("students", variant.replace("+", "_"))

    @property
    def report_dir(self) -> Path:
        return self.stage("report")

    @cached_property
    def data(self) -> Data:
        return Data(self)


class Data:
    """The corpus, waveform statistics, noise pools and datasets of a workspace (built lazily)."""

    def __init__(self, ws: Workspace):
        self.ws, self.cfg = ws, ws.cfg
        data, noise = self.cfg.data, self.cfg.noise
        self.noise_dirs = {"train": noise.train, "dev": noise.dev, "test": noise.test}
        if data.corpus == "synthetic":
            demo = build_demo_corpus(ws.stage("data", "synthetic"), self.cfg.synthetic)
            data = dataclasses.replace(data, corpus="csv", manifest=str(demo.manifest))
            self.noise_dirs = {"train": demo.noise_train, "dev": demo.noise_dev, "test": demo.noise_test}
        self.splits: dict[str, list[Utterance]] = load_corpus(data)
        self._pools: dict[str, NoisePool] = {}

    def _set(self, split: str, stats: WaveformStats | None, noise: NoisePool | None = None, snr: float | None = None) -> UtteranceSet:
        d = self.cfg.data
        return UtteranceSet(
            self.splits[split],
            sample_rate=d.sample_rate,
            max_seconds=d.max_seconds,
            min_seconds=d.min_seconds,
            stats=stats,
            preload=d.preload,
            noise=noise,
            snr_db=snr,
            snr_mode=self.cfg.noise.snr_mode,
            seed=self.cfg.seed,
            on_bad_audio=d.on_bad_audio,
        )

    @cached_property
    def stats(self) -> WaveformStats | None:
        """Mean/std of the training waveforms (computed once, saved in the work directory)."""
        if not self.cfg.data.normalize:
            return None
        path = self.ws.root / "waveform_stats.json"
        if path.is_file():
            return WaveformStats.load(path)
        raw = self._set("train", None)
        stats = compute_stats(raw.raw_wave(i) for i in range(len(raw)))
        stats.save(path)
        return stats

    def pool(self, split: str) -> NoisePool:
        """The noise pool of ``split`` (read once, capped to ``noise.minutes``)."""
        if split not in self._pools:
            d = self.cfg.data
            self._pools[split] = NoisePool.from_directory(
                self.noise_dirs[split], d.sample_rate, self.cfg.noise.minutes, min_seconds=d.max_seconds
            )
        return self._pools[split]

    def check(self) -> None:
        """Open every noise pool and the waveform statistics: bad input fails before any training."""
        for split in ("train", "dev", "test"):
            self.pool(split)
        _ = self.stats

    def set_pool(self, split: str, pool: NoisePool) -> None:
        """Use ``pool`` for ``split`` instead of reading the folder (a pool shared by tuning trials)."""
        self._pools[split] = pool

    def clean(self, split: str) -> UtteranceSet:
        return self._set(split, self.stats)

    def noisy(self, split: str, snr_db: float) -> UtteranceSet:
        """``split`` mixed with its own noise pool at ``snr_db`` (re-drawn per epoch for train)."""
        return self._set(split, self.stats, self.pool(split), snr_db)


def _finish(run_dir: Path, result: FitResult) -> dict[str, Any]:
    summary = {"best_epoch": result.best.epoch, "dev_scores": result.dev_scores(), "best_dir": result.best.model_dir}
    (run_dir / DONE).write_text(json.dumps(summary, indent=1))
    return summary


def stage_summary(run_dir: Path) -> dict[str, Any] | None:
    """The summary a finished training stage wrote, or None if it has not finished."""
    path = run_dir / DONE
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    summary["dev_scores"] = {int(k): v for k, v in summary["dev_scores"].items()}
    return summary


def train_teacher(ws: Workspace, sink: RunSink | None = None, should_stop: Callable[[], bool] = lambda: False) -> dict[str, Any]:
    """Fine-tune the teacher on clean speech (the ``original`` model); resumable."""
    run_dir = ws.teacher_dir
    done = stage_summary(run_dir)
    if done is not None:
        return done
    cfg = ws.cfg
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model)
    result = fit(
        model, recipe("teacher", cfg), ws.data.clean("train"), ws.data.clean("dev"), cfg.train, run_dir,
        stats=ws.data.stats, sink=sink, should_stop=should_stop,
    )
    return _finish(run_dir, result)


def train_student(
    ws: Workspace, variant: str, sink: RunSink | None = None, should_stop: Callable[[], bool] = lambda: False
) -> dict[str, Any]:
    """Adapt a copy of the teacher to noisy speech as ``variant`` prescribes; resumable."""
    run_dir = ws.student_dir(variant)
    done = stage_summary(run_dir)
    if done is not None:
        return done
    cfg = ws.cfg
    teacher_summary = stage_summary(ws.teacher_dir)
    if teacher_summary is None:
        raise RuntimeError(f"train the teacher first: {ws.teacher_dir} has no {DONE} marker")
    teacher_dir = Path(teacher_summary["best_dir"])
    rec = recipe(variant, cfg)
    student, _, _ = load_model(teacher_dir)
    train_set = ws.data.noisy("train", cfg.student.snr_db)
    embed = None
    if rec.needs_teacher:
        teacher, _, _ = load_model(teacher_dir)
        if cfg.student.cache_teacher_embeddings:
            table = teacher_embeddings(teacher, teacher_dir, ws.data.clean("train"), ws.stage("cache"), cfg.eval.batch_size)
            embed = cached_teacher(table)
        else:
            embed = live_teacher(teacher.to(next(student.parameters()).device))
    result = fit(
        student, rec, train_set, ws.data.noisy("dev", cfg.student.snr_db), cfg.train, run_dir,
        stats=ws.data.stats, teacher_embed=embed, sink=sink, should_stop=should_stop,
    )
    return _finish(run_dir, result)


def selected_models(ws: Workspace, variants: list[str]) -> dict[str, dict[int, Path]]:
    """Per variant, the ``eval.top_k`` best non-consecutive development epochs and their weights."""
    chosen: dict[str, dict[int, Path]] = {}
    for variant in variants:
        run_dir = ws.teacher_dir if variant == "original" else ws.student_dir(variant)
        summary = stage_summary(run_dir)
        if summary is None:
            raise RuntimeError(f"{variant} has not finished training ({run_dir} has no {DONE} marker)")
        epochs = select_checkpoints(summary["dev_scores"], ws.cfg.eval.top_k)
        chosen[variant] = {e: run_dir / "epochs" / f"epoch-{e:03d}" for e in epochs}
    return chosen


def _real_noisy_sets(ws: Workspace) -> dict[str, UtteranceSet]:
    sets = {}
    for condition, folder in ws.cfg.eval.noisy_roots.items():
        utts = [Utterance(Path(folder) / u.path.name, u.labels, u.split, u.speaker) for u in ws.data.splits["test"]]
        for utt in utts:
            if not utt.path.is_file():
                raise FileNotFoundError(f"eval.noisy_roots.{condition}: {utt.path} does not exist")
        d = ws.cfg.data
        sets[condition] = UtteranceSet(utts, d.sample_rate, d.max_seconds, d.min_seconds, ws.data.stats, d.preload)
    return sets


def evaluate(ws: Workspace, variants: list[str], sink_for: SinkFactory = lambda _: None) -> Path:
    """Score every variant's selected models, embed the development set, write the report."""
    cfg = ws.cfg
    models = selected_models(ws, variants)
    scores_path = ws.report_dir / report.SCORES_CSV
    scores = Scores.read_csv(scores_path) if scores_path.is_file() else Scores()
    test_set = ws.data.clean("test")
    groups = test_groups(len(test_set), cfg.eval.n_groups, cfg.eval.groups, cfg.seed)
    for variant in variants:  # one variant at a time, saved after each: a resumed evaluation skips it
        score_models(
            {variant: models[variant]}, test_set, ws.data.pool("test"), groups, cfg.eval.groups,
            cfg.noise.snr_mode, cfg.eval.batch_size, _real_noisy_sets(ws), scores,
        )
        scores.write_csv(scores_path)
    best = {v: next(iter(m.values())) for v, m in models.items()}
    emb, projection = embedding_metrics(
        best, ws.data.clean("dev"), ws.data.pool("dev"), cfg.noise.snr_mode, cfg.student.margin / 6,
        cfg.student.temperature, cfg.eval.batch_size,
    )
    report.write_table2(emb, ws.report_dir)
    report.save_projection(*projection, ws.report_dir / report.PROJECTION_NPZ)
    report.build_report(ws.report_dir, alpha=cfg.eval.alpha)
    _log_evaluation(ws, variants, sink_for)
    return ws.report_dir


def _log_evaluation(ws: Workspace, variants: list[str], sink_for: SinkFactory) -> None:
    """Send each variant's mean test CCC and embedding metrics to its tracked run."""
    table1 = json.loads((ws.report_dir / report.TABLE1_JSON).read_text())
    table2 = report.read_table2_json(ws.report_dir / report.TABLE2_JSON)
    for variant in variants:
        sink = sink_for("teacher" if variant == "original" else f"student/{variant}")
        if sink is None:
            continue
        epoch = max(stage_summary(ws.teacher_dir if variant == "original" else ws.student_dir(variant))["dev_scores"])
        metrics = {
            f"ccc/{c}/{a}": cell["mean"] for c, attrs in table1[variant].items() for a, cell in attrs.items()
        }
        metrics.update({f"emb/{c}/{k}": v for c, values in table2.get(variant, {}).items() for k, v in values.items()})
        sink.log_metrics(metrics, step=epoch)
