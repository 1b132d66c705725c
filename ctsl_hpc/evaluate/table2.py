"""Table 2 of the report: RMSE, cosine similarity and InfoNCE of each model's noisy embeddings.

``table2.json``: ``{variant: {condition: {"rmse", "cosine", "infonce", "anchors"}}}``; ``infonce``
is null when no anchor had a valid negative; ``anchors`` (the anchors the InfoNCE averaged over) is
absent from files written before it was kept. The JSON is the saved source; ``build_report``
re-renders the Markdown from it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from ctsl_hpc.atomic_io import atomic_write_json, atomic_write_text, read_json
from ctsl_hpc.data.conditions import CONDITIONS
from ctsl_hpc.evaluate.protocol import table_order
from ctsl_hpc.evaluate.tables import CONDITION_LABEL, PAPER_CONDITION_ORDER, finite_or_none, markdown_table
from ctsl_hpc.workdir import ReportFiles

EMBEDDING_METRICS: dict[str, str] = {"rmse": "min", "cosine": "max", "infonce": "min"}
EMBEDDING_LABEL = {"rmse": "RMSE", "cosine": "cos", "infonce": "InfoNCE"}
ANCHORS = "anchors"

EmbeddingTable = Mapping[str, Mapping[str, Mapping[str, float | int | None]]]


def _number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def _check_emb_metrics(emb_metrics: EmbeddingTable, source: str) -> None:
    if not emb_metrics:
        raise ValueError(f"{source}: no embedding metrics")
    for variant, by_condition in emb_metrics.items():
        for condition, values in by_condition.items():
            where = f"{source}: {variant}/{condition}"
            if condition not in CONDITIONS:
                raise ValueError(f"{where}: unknown condition; expected one of {CONDITIONS}")
            if not set(EMBEDDING_METRICS) <= set(values) <= {*EMBEDDING_METRICS, ANCHORS}:
                raise ValueError(f"{where}: expected keys {sorted(EMBEDDING_METRICS)} and {ANCHORS!r}, got {sorted(values)}")
            anchors = values.get(ANCHORS)
            if anchors is not None and not (isinstance(anchors, int) and not isinstance(anchors, bool) and anchors >= 0):
                raise ValueError(f"{where}/{ANCHORS}: expected a count >= 0, got {anchors!r}")
            for name in EMBEDDING_METRICS:
                value = values[name]
                if name == "infonce" and (value is None or (_number(value) and math.isnan(value))) and anchors == 0:
                    continue  # no anchor: no InfoNCE
                if not _number(value) or not math.isfinite(value):
                    raise ValueError(f"{where}/{name}: expected a finite number, got {value!r}")


def _text(value: float | None, best: float | None) -> str:
    if value is None or math.isnan(value):
        return "—"
    return f"**{value:.3f}**" if value == best else f"{value:.3f}"


def table2_markdown(emb_metrics: EmbeddingTable) -> str:
    """Table 2: a row per variant, columns condition x (RMSE, cosine, InfoNCE), best per column bold."""
    variants = table_order(emb_metrics)
    present = {c for by_c in emb_metrics.values() for c in by_c}
    columns = [(c, m) for c in PAPER_CONDITION_ORDER if c in present for m in EMBEDDING_METRICS]
    best = {}
    for condition, metric in columns:
        values = [emb_metrics[v][condition][metric] for v in variants if condition in emb_metrics[v]]
        values = [x for x in values if x is not None and not math.isnan(x)]
        best[condition, metric] = (min if EMBEDDING_METRICS[metric] == "min" else max)(values) if values else None
    rows = []
    for variant in variants:
        row = [variant]
        for condition, metric in columns:
            cell = emb_metrics[variant].get(condition)
            row.append("—" if cell is None else _text(cell[metric], best[condition, metric]))
        rows.append(row)
    header = ["model"] + [f"{CONDITION_LABEL[c]} {EMBEDDING_LABEL[m]}" for c, m in columns]
    counts = sorted({int(x[ANCHORS]) for by_c in emb_metrics.values() for x in by_c.values() if ANCHORS in x})
    anchors = f" InfoNCE anchors (utterances with a valid negative in their batch): {', '.join(map(str, counts))}." if counts else ""
    notes = [
        "",
        "Development set. RMSE and cosine similarity between the teacher's clean embeddings and each "
        "model's noisy embeddings; InfoNCE over batches of 32 clean/noisy pairs, averaged over the batches "
        f"that hold an anchor (batches without one are skipped).{anchors} "
        "**Bold**: best of the column (lowest RMSE and InfoNCE, highest cosine).",
    ]
    return "\n".join(markdown_table(header, rows) + notes) + "\n"


def write_table2(emb_metrics: EmbeddingTable, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``table2.md`` and ``table2.json`` (NaN InfoNCE written as null)."""
    _check_emb_metrics(emb_metrics, "embedding metrics")
    files = ReportFiles(Path(out_dir))
    ordered: dict[str, dict[str, dict[str, float | int | None]]] = {}
    for v in table_order(emb_metrics):
        ordered[v] = {}
        for c in CONDITIONS:
            if c not in emb_metrics[v]:
                continue
            cell = emb_metrics[v][c]
            ordered[v][c] = {m: None if cell[m] is None else finite_or_none(float(cell[m])) for m in EMBEDDING_METRICS}
            if ANCHORS in cell:
                ordered[v][c][ANCHORS] = int(cell[ANCHORS])
    files.path.mkdir(parents=True, exist_ok=True)
    md = atomic_write_text(files.table2_md, table2_markdown(ordered))
    return md, atomic_write_json(files.table2_json, ordered, sort_keys=False, allow_nan=False)


def read_table2_json(path: str | Path) -> dict[str, dict[str, dict[str, float | int | None]]]:
    """Read and check a ``table2.json``."""
    path = Path(path)
    data = read_json(path, "rebuild it: run the evaluation again (its scores are kept)")
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError(f"{path}: expected {{variant: {{condition: {{metric: value}}}}}}")
    _check_emb_metrics(data, str(path))
    return data
