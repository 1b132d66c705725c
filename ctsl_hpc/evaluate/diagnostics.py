"""What CCC hides: Pearson r and mean bias per Table 1 cell, and predicted against true values.

A model whose CCC collapses while its r stays up ranks the utterances well but predicts them
shifted (bias) or squeezed; one whose r collapses too has lost the information. The second Markdown
table (``diagnostics.md``) shows both per variant, condition and attribute; the plot
(``pred_vs_true.png``) shows the predictions of ``original`` and the best student at 0 dB against
the labels, clean and at 0 dB.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ctsl_hpc.data.conditions import CLEAN, HARDEST
from ctsl_hpc.data.corpus import ATTRIBUTES, LABEL_MAX, LABEL_MIN
from ctsl_hpc.evaluate.metrics import bias_numpy, pearson_numpy
from ctsl_hpc.evaluate.predictions import ModelPredictions
from ctsl_hpc.evaluate.protocol import CellStats, best_student, table_order
from ctsl_hpc.evaluate.tables import ATTRIBUTE_SHORT, CONDITION_LABEL, PAPER_CONDITION_ORDER, markdown_table
from ctsl_hpc.variants import TEACHER

PLOTTED_CONDITIONS: tuple[str, ...] = (CLEAN, HARDEST)

Table = Mapping[str, Mapping[str, Mapping[str, CellStats]]]


def _pair(r: float, bias: float) -> str:
    r_text = "—" if math.isnan(r) else f"{r:.3f}"
    bias_text = "—" if math.isnan(bias) else f"{bias:+.2f}"
    return f"{r_text} / {bias_text}"


def diagnostics_markdown(table: Table) -> str:
    """The second table: a row per variant, columns condition (0, 5, 10 dB, clean) x A/D/V, cells ``r / bias``."""
    variants = table_order(table)
    columns = [(c, a) for c in PAPER_CONDITION_ORDER for a in ATTRIBUTES]
    rows = []
    for variant in variants:
        row = [variant]
        for condition, attribute in columns:
            cell = table[variant].get(condition, {}).get(attribute)
            row.append("—" if cell is None else _pair(cell.r, cell.bias))
        rows.append(row)
    header = ["model"] + [f"{CONDITION_LABEL[c]} {ATTRIBUTE_SHORT[a]}" for c, a in columns]
    notes = [
        "",
        "Each cell: Pearson r / mean bias (prediction minus label, on the 1..7 label scale), each computed per "
        "test group like CCC and averaged over the cell's models x groups (standard deviations in table1.json). "
        "A CCC far below r means shifted or squeezed predictions, not lost information. "
        "— : not recorded (an older scores.csv) or undefined (constant predictions).",
    ]
    return "\n".join(markdown_table(header, rows) + notes) + "\n"


def plotted_models(table: Table, predictions: Mapping[str, Mapping[int, ModelPredictions]]) -> list[str]:
    """``original`` and the student with the highest mean 0 dB test CCC (over A/D/V), those with predictions."""
    at_0db = {
        v: float(np.mean([cell.mean for cell in table[v][HARDEST].values()]))
        for v in table
        if HARDEST in table[v] and v in predictions
    }
    best = best_student(at_0db)
    return [v for v in (TEACHER, best) if v is not None and v in predictions]


def plot_predictions(
    predictions: Mapping[str, Mapping[int, ModelPredictions]],
    shown: Sequence[str],
    path: str | Path,
    max_points: int = 1500,
    seed: int = 0,
) -> Path:
    """Predicted against true values, a row per condition (clean, 0 dB), a column per attribute.

    Each shown variant's points pool its scored checkpoints and test groups (subsampled to
    ``max_points`` with a seeded generator); the legend gives r and bias over all of them.
    """
    if not shown:
        raise ValueError(f"no model to plot: the report has no predictions of {TEACHER!r} or a student")
    rng = np.random.default_rng(seed)
    figure = Figure(figsize=(4.0 * len(ATTRIBUTES), 3.9 * len(PLOTTED_CONDITIONS)), layout="constrained")
    axes = figure.subplots(len(PLOTTED_CONDITIONS), len(ATTRIBUTES), squeeze=False)
    low, high = LABEL_MIN, LABEL_MAX
    for row, condition in enumerate(PLOTTED_CONDITIONS):
        pooled = {}
        for variant in shown:
            parts = [m.pooled(condition) for m in predictions[variant].values()]
            pooled[variant] = (np.concatenate([p for p, _ in parts]), np.concatenate([y for _, y in parts]))
        for k, attribute in enumerate(ATTRIBUTES):
            ax = axes[row][k]
            ax.plot([low, high], [low, high], color="grey", linewidth=1, linestyle="--")
            for variant, (pred, labels) in pooled.items():
                if pred.shape[0] == 0:
                    continue
                r, bias = pearson_numpy(pred, labels)[k], bias_numpy(pred, labels)[k]
                keep = rng.permutation(pred.shape[0])[:max_points]
                ax.scatter(labels[keep, k], pred[keep, k], s=7, alpha=0.45, edgecolors="none",
                           label=f"{variant} (r {r:.2f}, bias {bias:+.2f})")  # fmt: skip
            ax.set_xlim(low, high)
            ax.set_ylim(low, high)
            ax.set_title(f"{attribute}, {CONDITION_LABEL[condition]}")
            ax.set_xlabel("label (1..7)")
            ax.set_ylabel("prediction")
            ax.grid(alpha=0.3)
            ax.legend(fontsize="x-small", markerscale=2, loc="upper left")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path
