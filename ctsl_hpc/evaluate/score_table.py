"""The table of per-group metrics behind Table 1 (``<report>/scores.csv``): CCC, Pearson r and mean bias.

One row per (variant, model epoch, condition, group, attribute). Written atomically; read back with
errors naming the file and line. Files written before r and bias were kept are read with both NaN.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctsl_hpc.atomic_io import atomic_write_csv
from ctsl_hpc.data.conditions import CONDITIONS
from ctsl_hpc.data.corpus import ATTRIBUTES

SCORE_KEYS: tuple[str, ...] = ("variant", "model_epoch", "condition", "group", "attribute")
METRICS: tuple[str, ...] = ("ccc", "r", "bias")
DIAGNOSTICS: tuple[str, ...] = METRICS[1:]  # beside CCC (which alone is tested)
SCORE_COLUMNS: tuple[str, ...] = SCORE_KEYS + METRICS
LEGACY_SCORE_COLUMNS: tuple[str, ...] = SCORE_KEYS + ("ccc",)


@dataclass(frozen=True)
class ScoreRow:
    """The metrics of one attribute: a model (variant, epoch) scored on one group of one condition.

    ``r`` is Pearson's r (NaN where undefined: constant predictions or labels), ``bias`` the mean of
    prediction minus label on the 1..7 scale (NaN: not recorded, in an older scores file).
    """

    variant: str
    model_epoch: int
    condition: str
    group: int
    attribute: str
    ccc: float
    r: float = math.nan
    bias: float = math.nan

    def key(self) -> tuple[str, int, str, int, str]:
        return (self.variant, self.model_epoch, self.condition, self.group, self.attribute)


def _check_row(row: ScoreRow) -> None:
    if not row.variant or not row.variant.strip():
        raise ValueError("variant must be a non-empty name")
    if row.condition not in CONDITIONS:
        raise ValueError(f"unknown condition {row.condition!r}; expected one of {CONDITIONS}")
    if row.attribute not in ATTRIBUTES:
        raise ValueError(f"unknown attribute {row.attribute!r}; expected one of {ATTRIBUTES}")
    if row.model_epoch < 0 or row.group < 0:
        raise ValueError(f"model_epoch and group must be >= 0, got {row.model_epoch} and {row.group}")
    if not math.isfinite(row.ccc):
        raise ValueError(f"CCC of {row.key()} is not finite: {row.ccc!r}")
    if not (math.isnan(row.r) or -1.0 - 1e-9 <= row.r <= 1.0 + 1e-9):
        raise ValueError(f"r of {row.key()} is outside [-1, 1]: {row.r!r}")
    if math.isinf(row.bias):
        raise ValueError(f"bias of {row.key()} is not finite: {row.bias!r}")


class Scores:
    """The long-format table of per-group metrics behind Table 1 (``<report>/scores.csv``)."""

    def __init__(self, rows: Iterable[ScoreRow] = ()) -> None:
        self._rows: dict[tuple[str, int, str, int, str], ScoreRow] = {}
        for row in rows:
            self.add_row(row)

    def add_row(self, row: ScoreRow) -> None:
        """Add one value; a second value for the same (variant, epoch, condition, group, attribute) is an error."""
        _check_row(row)
        if row.key() in self._rows:
            raise ValueError(f"duplicate score for {row.key()}")
        self._rows[row.key()] = row

    def add(
        self, variant: str, model_epoch: int, condition: str, group: int, ccc: Sequence[float],
        r: Sequence[float] | None = None, bias: Sequence[float] | None = None,
    ) -> None:
        """Add the metric vectors (one value per attribute, in ATTRIBUTES order) of one model on one group;
        ``r`` and ``bias`` default to NaN (not recorded)."""
        columns = {}
        for name, given in zip(METRICS, (ccc, r, bias), strict=True):
            values = np.full(len(ATTRIBUTES), math.nan) if given is None else np.asarray(given, dtype=np.float64)
            if values.shape != (len(ATTRIBUTES),):
                raise ValueError(f"{name} must hold one value per attribute {ATTRIBUTES}, got shape {values.shape}")
            columns[name] = values
        for k, attribute in enumerate(ATTRIBUTES):
            self.add_row(ScoreRow(variant, int(model_epoch), condition, int(group), attribute,
                                  *(float(columns[name][k]) for name in METRICS)))  # fmt: skip

    @property
    def rows(self) -> tuple[ScoreRow, ...]:
        return tuple(self._rows.values())

    def __len__(self) -> int:
        return len(self._rows)

    def variants(self) -> list[str]:
        """Variants in order of first appearance."""
        return list(dict.fromkeys(row.variant for row in self._rows.values()))

    def conditions(self) -> list[str]:
        """Conditions present, in CONDITIONS order."""
        present = {row.condition for row in self._rows.values()}
        return [c for c in CONDITIONS if c in present]

    def values(self, variant: str, condition: str, attribute: str, metric: str = "ccc") -> np.ndarray:
        """All values of ``metric`` (ccc, r or bias) over the models and groups of one cell, in insertion order."""
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")
        return np.array(
            [
                getattr(r, metric)
                for r in self._rows.values()
                if r.variant == variant and r.condition == condition and r.attribute == attribute
            ],
            dtype=np.float64,
        )

    def write_csv(self, path: str | Path) -> Path:
        """Write the table to ``path`` atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = (
            [r.variant, r.model_epoch, r.condition, r.group, r.attribute, *map(repr, (r.ccc, r.r, r.bias))]
            for r in self._rows.values()
        )
        return atomic_write_csv(path, SCORE_COLUMNS, rows)

    @classmethod
    def read_csv(cls, path: str | Path) -> Scores:
        """Read a table written by :meth:`write_csv` (or an older one without r and bias); errors name the file and line."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"scores file not found: {path}")
        scores = cls()
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            columns = tuple(h.strip() for h in header or ())
            if columns not in (SCORE_COLUMNS, LEGACY_SCORE_COLUMNS):
                raise ValueError(f"{path}: header must be {','.join(SCORE_COLUMNS)}, got {header}")
            for line, fields in enumerate(reader, start=2):
                if not fields:
                    continue
                if len(fields) != len(columns):
                    raise ValueError(f"{path}:{line}: expected {len(columns)} fields, got {len(fields)}")
                variant, epoch, condition, group, attribute, *metrics = (f.strip() for f in fields)
                try:
                    row = ScoreRow(variant, int(epoch), condition, int(group), attribute, *map(float, metrics))
                    scores.add_row(row)
                except ValueError as error:
                    raise ValueError(f"{path}:{line}: {error}") from error
        return scores
