"""The paper's evaluation protocol: checkpoint selection, test groups, the scores table, Welch tests.

Model-independent: the pipeline feeds per-group metrics in (:class:`ctsl_hpc.evaluate.score_table.Scores`),
this module turns them into per-cell statistics with one-tailed Welch t-tests of CCC against each
model's baselines (:attr:`ctsl_hpc.variants.VariantSpec.baselines`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy import stats

from ctsl_hpc import variants as variant_table
from ctsl_hpc.data.conditions import CLEAN, CONDITIONS
from ctsl_hpc.data.corpus import ATTRIBUTES
from ctsl_hpc.evaluate.score_table import Scores

GroupMode = Literal["copies", "splits"]


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


def test_groups(n_utterances: int, n_groups: int = 30, mode: GroupMode = "splits", seed: int = 0) -> list[GroupSpec]:
    """The test groups of the protocol.

    ``splits`` (the paper's): a seeded partition of the test set into ``n_groups`` disjoint groups of
    near-equal size sharing one noise draw (one noise seed); each group needs at least 2 utterances for
    a CCC. ``copies``: every group is the whole test set, each with its own noise seed: ``n_groups``
    independently contaminated copies (the authors' code scores the clean test set once, with no
    groups; the copies are this package's, for small synthetic sets). Indices are sorted within each group.
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
    if mode == "copies" and condition == CLEAN:
        return groups[:1]
    return list(groups)


# --------------------------------------------------------------------------- significance


def best_student(mean_ccc: Mapping[str, float]) -> str | None:
    """The variant other than ``original`` with the highest mean CCC (NaN ranks last; ties: first).

    None when there is no student. The projection plot ranks by 0 dB development CCC, the
    predictions plot by 0 dB test CCC (Table 1).
    """
    students = [v for v in mean_ccc if v != variant_table.TEACHER]
    if not students:
        return None
    return max(students, key=lambda v: -np.inf if np.isnan(mean_ccc[v]) else mean_ccc[v])


def baselines_of(variant: str) -> tuple[str, ...]:
    """The models Table 1 tests ``variant`` against: its spec's baselines; a name the variant table does not
    know (scores from elsewhere) is tested against every marked baseline, like an added variant."""
    try:
        return variant_table.spec(variant).baselines
    except ValueError:
        return variant_table.marked_baselines()


def table_order(names: Iterable[str]) -> list[str]:
    """The rows of Table 1: the registered variants in their order (the paper's first), then any other
    names in their given order."""
    names = list(dict.fromkeys(names))
    known = variant_table.names()
    return [v for v in known if v in names] + [v for v in names if v not in known]


@dataclass(frozen=True)
class CellStats:
    """Statistics of one Table 1 cell (variant x condition x attribute).

    ``std`` is the sample standard deviation (ddof=1; NaN for n < 2); ``p`` maps each baseline listed
    before the variant to the one-tailed Welch p-value of "this variant > baseline" (NaN where the
    test is undefined); ``significant`` maps it to ``p <= alpha`` (False for NaN). ``r`` and ``bias``
    are the means of Pearson r and of the mean bias over the cell's groups (NaN values left out; NaN
    when none is left), ``r_std`` and ``bias_std`` their standard deviations (ddof=1).
    """

    mean: float
    std: float
    n: int
    p: dict[str, float]
    significant: dict[str, bool]
    r: float = math.nan
    r_std: float = math.nan
    bias: float = math.nan
    bias_std: float = math.nan


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    mean = float(np.mean(finite)) if finite.size else math.nan
    return mean, float(np.std(finite, ddof=1)) if finite.size >= 2 else math.nan


def significance(scores: Scores, alpha: float = 0.05) -> dict[str, dict[str, dict[str, CellStats]]]:
    """Mean, std, n and Welch p-values of CCC, and the mean r and bias, per variant x condition x attribute.

    As in the paper, a variant is tested only against its baselines (:func:`baselines_of`: ``original``
    against none, ``RH`` against ``original``, ``RM`` against both, every later row against all three),
    and only where the baseline has scores for that condition. A comparison where either side has fewer
    than 2 values gets p = NaN.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"eval.alpha must be in (0, 1), got {alpha}")
    table: dict[str, dict[str, dict[str, CellStats]]] = {}
    present = scores.variants()
    for variant in table_order(present):
        earlier = [b for b in baselines_of(variant) if b in present]
        for condition in scores.conditions():
            for attribute in ATTRIBUTES:
                values = scores.values(variant, condition, attribute)
                if values.size == 0:
                    continue
                p_values: dict[str, float] = {}
                for baseline in earlier:
                    reference = scores.values(baseline, condition, attribute)
                    if reference.size == 0:
                        continue
                    enough = values.size >= 2 and reference.size >= 2
                    p_values[baseline] = welch_greater(values, reference)[1] if enough else math.nan
                std = float(np.std(values, ddof=1)) if values.size >= 2 else math.nan
                r, r_std = _mean_std(scores.values(variant, condition, attribute, "r"))
                bias, bias_std = _mean_std(scores.values(variant, condition, attribute, "bias"))
                cell = CellStats(
                    mean=float(np.mean(values)),
                    std=std,
                    n=int(values.size),
                    p=p_values,
                    significant={b: bool(p <= alpha) for b, p in p_values.items()},
                    r=r, r_std=r_std, bias=bias, bias_std=bias_std,
                )  # fmt: skip
                table.setdefault(variant, {}).setdefault(condition, {})[attribute] = cell
    return table
