"""What the report's tables share: the paper's column order, labels, Markdown and JSON writing."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ctsl_hpc.atomic_io import atomic_write_text

PAPER_CONDITION_ORDER: tuple[str, ...] = ("snr0", "snr5", "snr10", "clean")
CONDITION_LABEL = {"snr0": "0 dB", "snr5": "5 dB", "snr10": "10 dB", "clean": "clean"}
ATTRIBUTE_SHORT = {"arousal": "A", "dominance": "D", "valence": "V"}


def finite_or_none(value: float) -> float | None:
    """``value`` as a float, or None (JSON null) where it is NaN or infinite."""
    return float(value) if math.isfinite(value) else None


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` atomically, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, text)


def write_json(path: Path, data: Any) -> Path:
    """Write ``data`` as indented JSON (NaN is refused: pass it through :func:`finite_or_none`)."""
    return write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def read_json(path: Path) -> Any:
    """Read a JSON file; invalid JSON raises ValueError naming the file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """The lines of a Markdown table: the first column left-aligned, the others right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]
