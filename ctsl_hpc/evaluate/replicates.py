"""Table 1 and Table 2 over replicate seeds: each seed's sweep is a replicate, the seed the unit of replication.

The paper's Welch tests run within each seed, on that seed's own scores (pooling k x 90 values of
k seeds would overstate the confidence). A cell of the combined Table 1 holds the mean over the
seeds of the seed's mean CCC, the spread between seeds (their sample standard deviation) and, per
baseline, in how many seeds the variant beats it significantly: ``*3/3`` reads "greater than
``original`` in 3 of the 3 seeds". Table 2 is averaged over the seeds (each seed's stays in its
``seed-<s>/report``).

Example:
    >>> import math
    >>> cells = [CellStats(0.40, 0.1, 6, {"original": 0.01}, {"original": True}),
    ...          CellStats(0.44, 0.1, 6, {"original": 0.20}, {"original": False})]
    >>> seeds = combine_cells(cells)
    >>> round(seeds.mean, 6), round(seeds.spread, 6), seeds.significant
    (0.42, 0.028284, {'original': 1})
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ctsl_hpc.atomic_io import atomic_write_json, atomic_write_text
from ctsl_hpc.data.conditions import CONDITIONS
from ctsl_hpc.data.corpus import ATTRIBUTES
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


@dataclass(frozen=True)
class SeedCell:
    """One cell of the combined Table 1: over ``seeds`` seeds, the mean of their means and their spread (sample
    standard deviation, NaN for one seed); ``significant[b]``: in how many seeds the variant beats ``b``."""

    mean: float
    spread: float
    seeds: int
    significant: dict[str, int] = field(default_factory=dict)
    per_seed: tuple[float, ...] = ()


def combine_cells(cells: Sequence[CellStats]) -> SeedCell:
    """The seeds' cells of one variant x condition x attribute as one :class:`SeedCell`."""
    means = np.array([c.mean for c in cells], dtype=float)
    spread = float(np.std(means, ddof=1)) if len(means) >= 2 else math.nan
    baselines = dict.fromkeys(b for c in cells for b in c.significant)
    counts = {b: sum(bool(c.significant.get(b, False)) for c in cells) for b in baselines}
    return SeedCell(float(means.mean()), spread, len(cells), counts, tuple(float(m) for m in means))


def combined_table1(per_seed: Mapping[int, Scores], alpha: float) -> dict[str, dict[str, dict[str, SeedCell]]]:
    """Each seed's Table 1 from its own scores (:func:`significance`), combined cell by cell."""
    tables = {seed: significance(scores, alpha=alpha) for seed, scores in per_seed.items()}
    variants = table_order(v for table in tables.values() for v in table)
    out: dict[str, dict[str, dict[str, SeedCell]]] = {}
    for variant in variants:
        for condition in CONDITIONS:
            for attribute in ATTRIBUTES:
                cells = [t[variant][condition][attribute] for t in tables.values()
                         if attribute in t.get(variant, {}).get(condition, {})]
                if cells:
                    out.setdefault(variant, {}).setdefault(condition, {})[attribute] = combine_cells(cells)
    return out


def combined_json(table: Mapping[str, Mapping[str, Mapping[str, SeedCell]]]) -> dict[str, Any]:
    """The JSON form of :func:`combined_table1` (NaN written as null)."""
    return {variant: {condition: {attribute: {
        "mean": cell.mean, "spread": finite_or_none(cell.spread), "seeds": cell.seeds, "per_seed": list(cell.per_seed),
        "significant_in_seeds": cell.significant,
    } for attribute, cell in cells.items()} for condition, cells in by_condition.items()}
        for variant, by_condition in table.items()}


def combined_markdown(table: Mapping[str, Mapping[str, Mapping[str, SeedCell]]], alpha: float, seeds: Sequence[int]
                      ) -> str:
    """The combined Table 1: mean over seeds ± their spread, a marker with the seeds it holds in (``*2/3``)."""
    markers = baseline_markers()
    columns = [(c, a) for c in PAPER_CONDITION_ORDER for a in ATTRIBUTES]
    rows = []
    for variant in table_order(table):
        row = [variant]
        for condition, attribute in columns:
            cell = table[variant].get(condition, {}).get(attribute)
            if cell is None:
                row.append("—")
                continue
            text = f"{cell.mean:.3f}" + ("" if math.isnan(cell.spread) else f" ±{cell.spread:.3f}")
            text += "".join(f"{md_escape(symbol)}{cell.significant[b]}/{cell.seeds}" for b, symbol in markers.items()
                            if cell.significant.get(b))
            row.append(text)
        rows.append(row)
    header = ["model"] + [f"{CONDITION_LABEL[c]} {ATTRIBUTE_SHORT[a]}" for c, a in columns]
    legend = ", ".join(f"{md_escape(symbol)} vs {b}" for b, symbol in markers.items())
    notes = [
        "",
        f"Mean over {len(seeds)} seeds ({', '.join(map(str, seeds))}) of each seed's mean CCC, ± the standard deviation "
        "between the seeds. A = arousal, D = dominance, V = valence.",
        f"Markers: significantly greater (one-tailed Welch t-test within each seed, p <= {alpha:g}) {legend}, with the "
        "number of seeds in which it holds (*2/3: in 2 of the 3 seeds); each model is tested only against its "
        "baselines. Each seed's own table: seed-<s>/report/table1.md.",
    ]
    return "\n".join(markdown_table(header, rows) + notes) + "\n"


def averaged_table2(tables: Sequence[Mapping[str, Mapping[str, Mapping[str, Any]]]]) -> dict[str, dict[str, dict]]:
    """Table 2's metrics averaged over the seeds (a metric missing or null in a seed is left out of its mean)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for variant in dict.fromkeys(v for t in tables for v in t):
        for condition in dict.fromkeys(c for t in tables for c in t.get(variant, {})):
            metrics = [t[variant][condition] for t in tables if condition in t.get(variant, {})]
            averaged: dict[str, Any] = {}
            for name in dict.fromkeys(k for m in metrics for k in m):
                values = [float(m[name]) for m in metrics if m.get(name) is not None and math.isfinite(float(m[name]))]
                mean = float(np.mean(values)) if values else math.nan
                averaged[name] = int(round(mean)) if name == "anchors" and values else mean
            out.setdefault(variant, {})[condition] = averaged
    return out


def write_combined(seed_reports: Mapping[int, Path], out_dir: Path, alpha: float) -> list[Path]:
    """The combined Table 1 (``table1.md``, ``table1.json``) and the averaged Table 2 of ``seed_reports``
    ({seed: its report folder}) in ``out_dir``."""
    files = ReportFiles(Path(out_dir))
    files.path.mkdir(parents=True, exist_ok=True)
    scores = {seed: Scores.read_csv(ReportFiles(path).scores_csv) for seed, path in seed_reports.items()}
    table = combined_table1(scores, alpha)
    seeds = sorted(seed_reports)
    written = [atomic_write_text(files.table1_md, combined_markdown(table, alpha, seeds)),
               atomic_write_json(files.table1_json, {"seeds": seeds, "table": combined_json(table)}, sort_keys=False,
                                 allow_nan=False)]
    tables2 = [read_table2_json(ReportFiles(p).table2_json) for p in seed_reports.values()
               if ReportFiles(p).table2_json.is_file()]
    if tables2:
        written.extend(write_table2(averaged_table2(tables2), files.path))
    return written

