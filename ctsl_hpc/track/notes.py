"""Run descriptions (markdown on MLflow's run page): the sweep's Table 1 and stages, each model's story.

The sweep's run holds Table 1 and a line per stage (status from the work directory, GPU-hours from
the scheduler's accounting where there is one); a model's run says its variant, its loss weights,
its selected epochs and its 0 dB gain over the original (clean-trained) model. MLflow-free: the
texts are set through :meth:`ctsl_hpc.track.runs.Run.set_description`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ctsl_hpc import variants
from ctsl_hpc.config import ExperimentConfig
from ctsl_hpc.data.conditions import HARDEST
from ctsl_hpc.workdir import ReportFiles, RunDir

GAIN_CONDITION = HARDEST
GPU_HOURS_PREFIX = "gpu_hours/"  # the usage metrics of a scheduler's accounting, per job key


@dataclass(frozen=True)
class Stage:
    """One line of the sweep's stage list."""

    key: str  # teacher, student/RM+TL, eval
    status: str
    gpu_hours: float | None


def training_status(run: RunDir) -> str:
    """``done (best epoch 3, dev CCC 0.412)``, ``stopped after epoch 2`` or ``not started``."""
    summary = run.summary()
    if summary is not None:
        return f"done (best epoch {summary.best_epoch}, dev CCC {summary.dev_scores[summary.best_epoch]:.3f})"
    last, _ = run.progress()
    return "not started" if last is None else f"not finished (last epoch {last})"


def report_status(files: ReportFiles) -> str:
    """``done``, ``report built`` (not yet marked done) or ``not built``."""
    if files.done.is_file():
        return "done"
    return "report built" if files.table1_json.is_file() else "not built"


def stages(
    runs: Mapping[str, RunDir], report: ReportFiles, usage: Mapping[str, float] | None = None
) -> list[Stage]:
    """A :class:`Stage` per training run key and one for ``eval``; GPU-hours from ``usage``
    (``gpu_hours/<key>`` metrics), None where it holds none."""
    usage = usage or {}
    hours = {k.removeprefix(GPU_HOURS_PREFIX): float(v) for k, v in usage.items() if k.startswith(GPU_HOURS_PREFIX)}
    lines = [Stage(key, training_status(run), hours.get(key)) for key, run in runs.items()]
    return [*lines, Stage("eval", report_status(report), hours.get("eval"))]


def sweep_note(title: str, table1_md: str, stage_lines: Sequence[Stage], total_gpu_hours: float | None = None) -> str:
    """The sweep's description: a title, Table 1 (as the report writes it) and the stage table."""
    rows = [
        f"| {s.key} | {s.status} | {'—' if s.gpu_hours is None else f'{s.gpu_hours:.3f}'} |" for s in stage_lines
    ]
    total = "" if total_gpu_hours is None else f"\n\nGPU-hours of the sweep: {total_gpu_hours:.3f}"
    return "\n".join([
        f"# {title}", "", "## Table 1: test CCC", "", table1_md.strip(), "", "## Stages", "",
        "| stage | status | GPU-hours |", "|---|---|---:|", *rows,
    ]) + total + "\n"  # fmt: skip


def zero_db_gain(table1: Mapping[str, Any], variant: str) -> float | None:
    """Mean test CCC over the attributes at 0 dB, ``variant`` minus the original; None if either is missing."""
    def mean(name: str) -> float | None:
        cells = table1.get(name, {}).get(GAIN_CONDITION, {})
        return sum(c["mean"] for c in cells.values()) / len(cells) if cells else None

    ours, original = mean(variant), mean(variants.TEACHER)
    return None if ours is None or original is None else ours - original


def model_note(
    variant: str, cfg: ExperimentConfig, selected: Mapping[int, float], table1: Mapping[str, Any]
) -> str:
    """A model run's description: variant, loss weights, selected epochs (dev CCC), 0 dB gain over original."""
    spec = variants.spec(variant)
    what = "student" if spec.student else "teacher (clean speech)"
    if spec.student:
        what += ", whole model" if spec.train_backbone else ", regression head only"
    weights = ", ".join(f"{t.weight} = {getattr(cfg.student, t.weight):g}" for t in spec.terms)
    epochs = ", ".join(f"{epoch} (dev CCC {score:.3f})" for epoch, score in selected.items())
    gain = zero_db_gain(table1, variant)
    lines = [
        f"**{variant}**: {what}",
        "",
        f"- lambdas: {weights or 'none (CCC loss only)'}",
        f"- selected epochs (top {cfg.eval.top_k}, best first): {epochs}",
    ]
    if spec.student:
        gain_text = "—" if gain is None else f"{gain:+.3f}"
        lines.append(f"- 0 dB gain over original (mean test CCC of A, D, V): {gain_text}")
    return "\n".join(lines) + "\n"
