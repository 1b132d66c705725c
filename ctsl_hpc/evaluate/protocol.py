"""The paper's evaluation protocol: checkpoint selection, test groups, the scores table, Welch tests.

Model-independent: the pipeline feeds CCC values in, this module keeps them in
``<report>/scores.csv`` and turns them into per-cell statistics with one-tailed Welch t-tests.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from scipy import stats

from ctsl_hpc.evaluate.metrics import ATTRIBUTES, CONDITIONS
from ctsl_hpc.records import atomic_write_csv

GroupMode = Literal["copies", "splits"]
BASELINES: tuple[str, ...] = ("original", "RH", "RM")
SCORE_COLUMNS: tuple[str, ...] = ("variant", "model_epoch", "condition", "group", "attribute", "ccc")


# --------------------------------------------------------------------------- checkpoint selection


def select_checkpoints(dev_scores: Mapping[int, float], k: int = 3) -> list[int]:
    """The ``k`` best development epochs, no two of them consecutive, best first.

    Greedy by score: epochs are visited from the highest score down (ties: the earlier epoch
    first) and an epoch is taken unless ``epoch - 1`` or ``epoch + 1`` was already taken. Stops at
    ``k`` epochs; returns fewer when the greedy pass runs out of admissible epochs.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if not dev_scores:
        raise ValueError("dev_scores is empty: no epoch to select")
    for epoch, score in dev_scores.items():
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)):
            raise ValueError(f"dev_scores keys must be integer epochs, got {epoch!r}")
        if not math.isfinite(float(score)):
            raise ValueError(f"development score of epoch {epoch} is not finite: {score!r}")
    ranked = sorted(dev_scores, key=lambda e: (-float(dev_scores[e]), int(e)))
    chosen: list[int] = []
    for epoch in ranked:
        if len(chosen) == k:
            break
        if all(abs(int(epoch) - c) != 1 for c in chosen):
            chosen.append(int(epoch))
    return chosen


# --------------------------------------------------------------------------- Welch t-test


def _sample(name: str, values: Sequence[float] | np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size < 2:
        raise ValueError(f"{name} must be a 1-D sample of at least 2 values, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def welch_greater(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> tuple[float, float]:
    r"""One-tailed Welch t-test of H1: mean(a) > mean(b), unequal variances (``scipy.stats.ttest_ind``).

    .. math:: t = \frac{\bar a - \bar b}{\sqrt{s_a^2 / n_a + s_b^2 / n_b}}

    Args:
        a: the candidate's values (e.g. a variant's CCCs over checkpoints x test groups), >= 2 finite.
        b: the baseline's values, >= 2 finite.

    Returns:
        (t, p) with p in [0, 1]; significant at p <= alpha. When both samples have zero variance
        the test is undefined: t is +-inf (p 0 or 1) if the means differ, NaN (p NaN) if equal.

    Example:
        >>> t, p = welch_greater([0.50, 0.52, 0.54], [0.40, 0.41, 0.42])
        >>> round(t, 3), p < 0.01
        (8.521, True)
        >>> round(welch_greater([0.40, 0.41, 0.42], [0.50, 0.52, 0.54])[1], 4)  # the other way: no
        0.9982
    """
    x, y = _sample("a", a), _sample("b", b)
    result = stats.ttest_ind(x, y, equal_var=False, alternative="greater")
    return float(result.statistic), float(result.pvalue)


# --------------------------------------------------------------------------- test groups


@dataclass(frozen=True, eq=False)
class GroupSpec:
    """One test group: which test utterances it holds and which seed draws its noise."""

    group: int
    indices: np.ndarray = field(repr=False)
    noise_seed: int


def _derived_seed(*entropy: int) -> int:
    return int(np.random.SeedSequence(list(entropy)).generate_state(1)[0])


def test_groups(n_utterances: int, n_groups: int = 30, mode: GroupMode = "copies", seed: int = 0) -> list[GroupSpec]:
    """The test groups of the protocol.

    ``copies``: every group is the whole test set, each with its own noise seed (the authors'
    code). ``splits``: a seeded partition of the test set into ``n_groups`` disjoint groups of
    near-equal size (the paper's text) sharing one noise draw (one noise seed); each group needs at
    least 2 utterances for a CCC. Indices are sorted within each group.
    """
    if n_groups < 1:
        raise ValueError(f"eval.n_groups must be >= 1, got {n_groups}")
    if n_utterances < 2:
        raise ValueError(f"the test set needs at least 2 utterances for a CCC, got {n_utterances}")
    if mode == "copies":
        everything = np.arange(n_utterances)
        return [GroupSpec(g, everything, _derived_seed(seed, g)) for g in range(n_groups)]
    if mode == "splits":
        if n_utterances < 2 * n_groups:
            raise ValueError(
                f"eval.groups=splits needs at least 2 test utterances per group: "
                f"{n_utterances} utterances for {n_groups} groups"
            )
        order = np.random.default_rng(seed).permutation(n_utterances)
        shared = _derived_seed(seed)
        return [GroupSpec(g, np.sort(part), shared) for g, part in enumerate(np.array_split(order, n_groups))]
    raise ValueError(f"eval.groups must be 'copies' or 'splits', got {mode!r}")


test_groups.__test__ = False  # type: ignore[attr-defined]  # a library function, not a pytest test


def groups_for_condition(condition: str, groups: list[GroupSpec], mode: GroupMode) -> list[GroupSpec]:
    """The groups worth scoring under ``condition``.

    In ``copies`` mode the clean condition adds no noise, so all copies are the same test set and
    would give identical CCCs; scoring them repeatedly adds no information and inflates the sample
    size of the Welch tests. This keeps only the first group there, and every group otherwise.
    """
    if condition not in CONDITIONS:
        raise ValueError(f"unknown condition {condition!r}; expected one of {CONDITIONS}")
    if mode == "copies" and condition == "clean":
        return groups[:1]
    return list(groups)


# --------------------------------------------------------------------------- scores table


@dataclass(frozen=True)
class ScoreRow:
    """One CCC value: a model (variant, epoch) scored on one group of one condition."""

    variant: str
    model_epoch: int
    condition: str
    group: int
    attribute: str
    ccc: float

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


class Scores:
    """The long-format table of CCC values behind Table 1 (``<report>/scores.csv``)."""

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

    def add(self, variant: str, model_epoch: int, condition: str, group: int, ccc: Sequence[float]) -> None:
        """Add the CCC vector (one value per attribute, in ATTRIBUTES order) of one model on one group."""
        values = np.asarray(ccc, dtype=np.float64)
        if values.shape != (len(ATTRIBUTES),):
            raise ValueError(f"ccc must hold one value per attribute {ATTRIBUTES}, got shape {values.shape}")
        for attribute, value in zip(ATTRIBUTES, values, strict=True):
            self.add_row(ScoreRow(variant, int(model_epoch), condition, int(group), attribute, float(value)))

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

    def values(self, variant: str, condition: str, attribute: str) -> np.ndarray:
        """All CCC values (over models and groups) of one cell, in insertion order."""
        return np.array(
            [
                r.ccc
                for r in self._rows.values()
                if r.variant == variant and r.condition == condition and r.attribute == attribute
            ],
            dtype=np.float64,
        )

    def write_csv(self, path: str | Path) -> Path:
        """Write the table to ``path`` atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = ([r.variant, r.model_epoch, r.condition, r.group, r.attribute, repr(r.ccc)] for r in self._rows.values())
        return atomic_write_csv(path, SCORE_COLUMNS, rows)

    @classmethod
    def read_csv(cls, path: str | Path) -> Scores:
        """Read a table written by :meth:`write_csv`; errors name the file and line."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"scores file not found: {path}")
        scores = cls()
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None or tuple(h.strip() for h in header) != SCORE_COLUMNS:
                raise ValueError(f"{path}: header must be {','.join(SCORE_COLUMNS)}, got {header}")
            for line, fields in enumerate(reader, start=2):
                if not fields:
                    continue
                if len(fields) != len(SCORE_COLUMNS):
                    raise ValueError(f"{path}:{line}: expected {len(SCORE_COLUMNS)} fields, got {len(fields)}")
                variant, epoch, condition, group, attribute, ccc = (f.strip() for f in fields)
                try:
                    row = ScoreRow(variant, int(epoch), condition, int(group), attribute, float(ccc))
                    scores.add_row(row)
                except ValueError as error:
                    raise ValueError(f"{path}:{line}: {error}") from error
        return scores


# --------------------------------------------------------------------------- significance


@dataclass(frozen=True)
class CellStats:
    """Statistics of one Table 1 cell (variant x condition x attribute).

    ``std`` is the sample standard deviation (ddof=1; NaN for n < 2); ``p`` maps each baseline
    to the one-tailed Welch p-value of "this variant > baseline" (NaN where the test is
    undefined); ``significant`` maps each baseline to ``p <= alpha`` (False for NaN).
    """

    mean: float
    std: float
    n: int
    p: dict[str, float]
    significant: dict[str, bool]


def significance(
    scores: Scores, baselines: Sequence[str] = BASELINES, alpha: float = 0.05
) -> dict[str, dict[str, dict[str, CellStats]]]:
    """Mean, std, n and Welch p-values against each baseline, per variant x condition x attribute.

    A variant is not compared with itself, nor with a baseline absent from ``scores`` (for that
    condition). A comparison where either side has fewer than 2 values gets p = NaN.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"eval.alpha must be in (0, 1), got {alpha}")
    table: dict[str, dict[str, dict[str, CellStats]]] = {}
    for variant in scores.variants():
        for condition in scores.conditions():
            for attribute in ATTRIBUTES:
                values = scores.values(variant, condition, attribute)
                if values.size == 0:
                    continue
                p_values: dict[str, float] = {}
                for baseline in baselines:
                    reference = scores.values(baseline, condition, attribute)
                    if baseline == variant or reference.size == 0:
                        continue
                    enough = values.size >= 2 and reference.size >= 2
                    p_values[baseline] = welch_greater(values, reference)[1] if enough else math.nan
                std = float(np.std(values, ddof=1)) if values.size >= 2 else math.nan
                cell = CellStats(
                    mean=float(np.mean(values)),
                    std=std,
                    n=int(values.size),
                    p=p_values,
                    significant={b: bool(p <= alpha) for b, p in p_values.items()},
                )
                table.setdefault(variant, {}).setdefault(condition, {})[attribute] = cell
    return table
