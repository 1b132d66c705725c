"""Table 1 and the plots of the report directory, and rebuilding the whole report from saved files without a model.

Files of ``<workdir>/report/`` (names in :class:`ctsl_hpc.workdir.ReportFiles`):

- ``scores.csv``: CCC, Pearson r and mean bias per group (source of Tables 1 and 1b and the CCC
  plot), see :class:`Scores`.
- ``table1.md`` / ``table1.json``: ``{variant: {condition: {attribute: {"mean", "std", "n", "p":
  {baseline: p}, "r": {"mean", "std"}, "bias": {"mean", "std"}}}}}``; ``mean``/``std``/``n`` are of
  CCC, ``std`` has ddof=1, ``p`` is the one-tailed Welch p-value of "variant > baseline" for each
  baseline listed before the variant (``null`` where undefined).
- ``diagnostics.md``: Pearson r and mean bias per cell (:mod:`ctsl_hpc.evaluate.diagnostics`).
- ``table2.md`` / ``table2.json``: the embedding analysis (:mod:`ctsl_hpc.evaluate.table2`).
- ``predictions/``: the per-utterance predictions of every scored checkpoint
  (:mod:`ctsl_hpc.evaluate.predictions`) and ``pred_vs_true.png``.
- ``ccc_vs_snr.png``; ``projection.npz`` (clean teacher and noisy student embeddings) and
  ``embedding_projection.png``.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ctsl_hpc.atomic_io import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json
from ctsl_hpc.data.corpus import ATTRIBUTES
from ctsl_hpc.evaluate import diagnostics
from ctsl_hpc.evaluate.predictions import read_predictions
from ctsl_hpc.evaluate.protocol import CellStats, significance, table_order
from ctsl_hpc.evaluate.score_table import Scores
from ctsl_hpc.evaluate.table2 import read_table2_json, write_table2
from ctsl_hpc.evaluate.tables import (
    ATTRIBUTE_SHORT,
    CONDITION_LABEL,
    PAPER_CONDITION_ORDER,
    baseline_markers,
    finite_or_none,
    markdown_table,
    md_escape,
)
from ctsl_hpc.workdir import ReportFiles

_STUDENT_KEY = "student:"


# --------------------------------------------------------------------------- Table 1


def table1_json(table: Mapping[str, Mapping[str, Mapping[str, CellStats]]]) -> dict[str, Any]:
    """The JSON form of :func:`significance`'s result (NaN written as null)."""
    return {
        variant: {
            condition: {
                attribute: {
                    "mean": cell.mean,
                    "std": finite_or_none(cell.std),
                    "n": cell.n,
                    "p": {b: finite_or_none(p) for b, p in cell.p.items()},
                    "r": {"mean": finite_or_none(cell.r), "std": finite_or_none(cell.r_std)},
                    "bias": {"mean": finite_or_none(cell.bias), "std": finite_or_none(cell.bias_std)},
                }
                for attribute, cell in cells.items()
            }
            for condition, cells in by_condition.items()
        }
        for variant, by_condition in table.items()
    }


def table1_markdown(
    table: Mapping[str, Mapping[str, Mapping[str, CellStats]]], alpha: float
) -> str:
    """Table 1 in the paper's shape: a row per variant, columns condition (0, 5, 10 dB, clean) x A/D/V.

    Each cell is the mean CCC (.3f), bold when it is the best of its column, followed by one
    marker per baseline listed before the variant that it beats significantly (p <= alpha); a
    legend follows.
    """
    markers = baseline_markers()
    variants = table_order(table)
    columns = [(c, a) for c in PAPER_CONDITION_ORDER for a in ATTRIBUTES]
    best = {}
    for condition, attribute in columns:
        means = [table[v][condition][attribute].mean for v in variants if attribute in table[v].get(condition, {})]
        best[condition, attribute] = max(means) if means else None
    rows = []
    for variant in variants:
        row = [variant]
        for condition, attribute in columns:
            cell = table[variant].get(condition, {}).get(attribute)
            if cell is None:
                row.append("—")
                continue
            text = f"{cell.mean:.3f}"
            if cell.mean == best[condition, attribute]:
                text = f"**{text}**"
            text += "".join(md_escape(symbol) for b, symbol in markers.items() if cell.significant.get(b, False))
            row.append(text)
        rows.append(row)
    header = ["model"] + [f"{CONDITION_LABEL[c]} {ATTRIBUTE_SHORT[a]}" for c, a in columns]
    ns = sorted({cell.n for by_c in table.values() for cells in by_c.values() for cell in cells.values()})
    legend = ", ".join(f"{md_escape(symbol)} vs {b}" for b, symbol in markers.items())
    notes = [
        "",
        f"Mean CCC over the models x test groups of each cell (n = {', '.join(map(str, ns))}; "
        f"mean, std, n and p-values in {ReportFiles.TABLE1_JSON}). A = arousal, D = dominance, V = valence.",
        f"Markers: significantly greater (one-tailed Welch t-test, unequal variances, p <= {alpha:g}) {legend}; "
        "each model is tested only against its baselines, rows above it. **Bold**: best mean of the column. "
        f"Pearson r and mean bias beside CCC: {ReportFiles.DIAGNOSTICS_MD}.",
    ]
    return "\n".join(markdown_table(header, rows) + notes) + "\n"


def write_table1(
    scores: Scores, out_dir: str | Path, alpha: float = 0.05
) -> tuple[Path, Path, Path]:
    """Compute the statistics of ``scores`` and write ``table1.md``, ``table1.json`` and the second
    table, ``diagnostics.md`` (Pearson r and mean bias), into ``out_dir``."""
    if len(scores) == 0:
        raise ValueError("no scores: Table 1 needs at least one CCC value")
    files = ReportFiles(Path(out_dir))
    table = significance(scores, alpha=alpha)
    ordered = {v: table[v] for v in table_order(table)}
    files.path.mkdir(parents=True, exist_ok=True)
    md = atomic_write_text(files.table1_md, table1_markdown(ordered, alpha))
    diagnostics_md = atomic_write_text(files.diagnostics_md, diagnostics.diagnostics_markdown(ordered))
    return md, atomic_write_json(files.table1_json, table1_json(ordered), sort_keys=False, allow_nan=False), diagnostics_md


def read_table1(path: str | Path) -> dict[str, Any]:
    """A saved ``table1.json`` (its format: :func:`table1_json`)."""
    return read_json(path, "rebuild it: python -m ctsl_hpc.launch report --workdir <the work directory>")


# --------------------------------------------------------------------------- plots


def plot_ccc_vs_snr(scores: Scores, path: str | Path) -> Path:
    """CCC against test condition (0, 5, 10 dB, clean), one panel per attribute, a line per variant.

    Points are the mean over models x groups, error bars their standard deviation (ddof=1).
    """
    if len(scores) == 0:
        raise ValueError("no scores to plot")
    conditions = [c for c in PAPER_CONDITION_ORDER if c in scores.conditions()]
    variants = table_order(scores.variants())
    figure = Figure(figsize=(4.2 * len(ATTRIBUTES), 4.4), layout="constrained")
    axes = figure.subplots(1, len(ATTRIBUTES), sharey=True)
    offsets = np.linspace(-0.12, 0.12, len(variants)) if len(variants) > 1 else np.zeros(1)
    for ax, attribute in zip(axes, ATTRIBUTES, strict=True):
        for offset, variant in zip(offsets, variants, strict=True):
            xs, means, stds = [], [], []
            for x, condition in enumerate(conditions):
                values = scores.values(variant, condition, attribute)
                if values.size:
                    xs.append(x + offset)
                    means.append(values.mean())
                    stds.append(values.std(ddof=1) if values.size > 1 else 0.0)
            ax.errorbar(xs, means, yerr=stds, marker="o", markersize=4, capsize=3, linewidth=1.2, label=variant)
        ax.set_title(attribute)
        ax.set_xticks(range(len(conditions)), [CONDITION_LABEL[c] for c in conditions])
        ax.set_xlabel("test condition (SNR)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("CCC (mean ± std over models x groups)")
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncol=len(variants), fontsize="small")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path


def _check_embeddings(
    teacher_clean: np.ndarray, students: Mapping[str, np.ndarray]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    teacher = np.asarray(teacher_clean, dtype=np.float64)
    if teacher.ndim != 2 or teacher.shape[0] < 1:
        raise ValueError(f"teacher_clean must be a non-empty [N, D] array, got shape {teacher.shape}")
    if not students:
        raise ValueError("no student embeddings to project")
    checked = {}
    for name, values in students.items():
        array = np.asarray(values, dtype=np.float64)
        if array.ndim != 2 or array.shape[1] != teacher.shape[1] or array.shape[0] < 1:
            raise ValueError(f"embeddings of {name!r} must be [N, {teacher.shape[1]}], got shape {array.shape}")
        checked[name] = array
    for name, array in {"teacher_clean": teacher, **checked}.items():
        if not np.all(np.isfinite(array)):
            raise ValueError(f"embeddings of {name!r} contain NaN or infinite values")
    return teacher, checked


def _subsample(array: np.ndarray, max_points: int, rng: np.random.Generator) -> np.ndarray:
    if array.shape[0] <= max_points:
        return array
    return array[np.sort(rng.choice(array.shape[0], size=max_points, replace=False))]


def plot_embedding_projection(
    teacher_clean: np.ndarray,
    students: Mapping[str, np.ndarray],
    path: str | Path,
    max_points: int = 2000,
    seed: int = 0,
) -> Path:
    """Scatter of clean teacher and noisy student embeddings on the first two principal components.

    PCA (numpy SVD) is fitted on the union of the plotted points; each set is subsampled to at most
    ``max_points`` rows with a seeded generator.
    """
    teacher, checked = _check_embeddings(teacher_clean, students)
    rng = np.random.default_rng(seed)
    sets = {"teacher (clean)": _subsample(teacher, max_points, rng)}
    sets.update({f"{name} (noisy)": _subsample(values, max_points, rng) for name, values in checked.items()})
    union = np.concatenate(list(sets.values()))
    centre = union.mean(axis=0)
    _, singular, components = np.linalg.svd(union - centre, full_matrices=False)
    n_components = min(2, components.shape[0])
    basis = components[:n_components].T
    variance = singular**2
    explained = variance[:n_components] / variance.sum() if variance.sum() > 0 else np.zeros(n_components)
    figure = Figure(figsize=(6.0, 5.2), layout="constrained")
    ax = figure.subplots()
    for label, values in sets.items():
        projected = (values - centre) @ basis
        ys = projected[:, 1] if n_components > 1 else np.zeros(len(projected))
        colour = "black" if label.startswith("teacher") else None
        ax.scatter(projected[:, 0], ys, s=8, alpha=0.5, label=label, color=colour, edgecolors="none")
    ax.set_xlabel(f"PC1 ({100 * explained[0]:.1f}% of variance)")
    ax.set_ylabel(f"PC2 ({100 * explained[1]:.1f}% of variance)" if n_components > 1 else "PC2")
    ax.set_title("Clean teacher vs noisy student embeddings (PCA)")
    ax.legend(fontsize="small", markerscale=2)
    ax.grid(alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path


def save_projection(teacher_clean: np.ndarray, students: Mapping[str, np.ndarray], path: str | Path) -> Path:
    """Save the embeddings behind :func:`plot_embedding_projection` (``projection.npz``)."""
    teacher, checked = _check_embeddings(teacher_clean, students)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"teacher_clean": teacher.astype(np.float32)}
    arrays.update({_STUDENT_KEY + name: values.astype(np.float32) for name, values in checked.items()})
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return atomic_write_bytes(path, buffer.getvalue())


def load_projection(path: str | Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Read a file written by :func:`save_projection`: (teacher_clean, {student name: embeddings})."""
    path = Path(path)
    with np.load(path, allow_pickle=False) as data:
        if "teacher_clean" not in data.files:
            raise ValueError(f"{path}: no 'teacher_clean' array")
        students = {k[len(_STUDENT_KEY) :]: data[k] for k in data.files if k.startswith(_STUDENT_KEY)}
        return data["teacher_clean"], students


# --------------------------------------------------------------------------- the whole report


def build_report(report_dir: str | Path, alpha: float = 0.05) -> list[Path]:
    """Rebuild every table and plot of ``report_dir`` from its saved files; returns the files written.

    Needs ``scores.csv``; re-renders Table 2 when ``table2.json`` exists, the projection plot when
    ``projection.npz`` exists and the predicted-against-true plot when ``predictions/`` holds files.
    """
    files = ReportFiles(Path(report_dir))
    scores = Scores.read_csv(files.scores_csv)
    written = [*write_table1(scores, files.path, alpha=alpha)]
    written.append(plot_ccc_vs_snr(scores, files.ccc_plot))
    predictions = read_predictions(files)
    if predictions:
        shown = diagnostics.plotted_models(significance(scores, alpha=alpha), predictions)
        written.append(diagnostics.plot_predictions(predictions, shown, files.prediction_plot))
    if files.table2_json.is_file():
        written.extend(write_table2(read_table2_json(files.table2_json), files.path))
    if files.projection_npz.is_file():
        teacher, students = load_projection(files.projection_npz)
        written.append(plot_embedding_projection(teacher, students, files.projection_plot))
    return written
