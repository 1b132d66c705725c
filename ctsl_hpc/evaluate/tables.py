"""What the report's tables share: the paper's column order, labels and Markdown."""

from __future__ import annotations

import math
from collections.abc import Sequence

from ctsl_hpc.data.conditions import CONDITIONS, label
from ctsl_hpc.data.corpus import ATTRIBUTES
from ctsl_hpc.variants import marked_baselines

PAPER_CONDITION_ORDER: tuple[str, ...] = tuple(reversed(CONDITIONS))  # the paper's columns: 0 dB first, clean last
CONDITION_LABEL = {c: label(c) for c in CONDITIONS}
ATTRIBUTE_SHORT = {a: a[0].upper() for a in ATTRIBUTES}  # A, D, V


def finite_or_none(value: float) -> float | None:
    """``value`` as a float, or None (JSON null) where it is NaN or infinite."""
    return float(value) if math.isfinite(value) else None


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """The lines of a Markdown table: the first column left-aligned, the others right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


MARKER_SYMBOLS: tuple[str, ...] = ("*", "†", "‡", "§", "¶")


def baseline_markers() -> dict[str, str]:
    """A symbol per marked baseline (:func:`ctsl_hpc.variants.marked_baselines`), in the paper's order."""
    baselines = marked_baselines()
    if len(baselines) > len(MARKER_SYMBOLS):
        raise ValueError(f"at most {len(MARKER_SYMBOLS)} baselines can be marked, got {list(baselines)}")
    return dict(zip(baselines, MARKER_SYMBOLS, strict=False))


def md_escape(marker: str) -> str:
    """A marker as Markdown writes it (``*`` escaped)."""
    return "\\*" if marker == "*" else marker
