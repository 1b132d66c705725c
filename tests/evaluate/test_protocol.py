"""Checkpoint selection, Welch tests, test groups, the scores table, per-cell significance and the marker rule."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from ctsl_hpc.data.conditions import CONDITIONS
from ctsl_hpc.data.corpus import ATTRIBUTES
from ctsl_hpc.evaluate import protocol
from ctsl_hpc.evaluate.protocol import select_checkpoints, significance, table_order, welch_greater
from ctsl_hpc.evaluate.score_table import ScoreRow, Scores

# ----------------------------------------------------------------------------- select_checkpoints


@pytest.mark.parametrize(
    ("scores", "k", "expected"),
    [
        ({0: 0.1, 1: 0.5, 2: 0.4, 3: 0.45, 4: 0.2}, 3, [1, 3]),
        ({0: 0.1, 1: 0.5, 2: 0.4, 3: 0.45, 4: 0.2, 5: 0.3}, 3, [1, 3, 5]),
        ({1: 0.9, 2: 0.8, 3: 0.7, 4: 0.6, 5: 0.5, 6: 0.4}, 3, [1, 3, 5]),
        ({0: 0.3, 1: 0.3, 2: 0.3, 3: 0.3}, 2, [0, 2]),  # ties: earlier epoch first
        ({7: 0.2}, 3, [7]),
        ({2: 0.5, 3: 0.9}, 3, [3]),  # the only other epoch is adjacent
        ({0: 0.1, 5: 0.4, 9: 0.3, 6: 0.35}, 2, [5, 9]),  # gaps in the epoch numbers are allowed
        ({0: 0.1, 1: 0.5, 2: 0.4, 3: 0.45}, 1, [1]),
    ],
)
def test_select_checkpoints_hand_cases(scores: dict[int, float], k: int, expected: list[int]) -> None:
    assert select_checkpoints(scores, k) == expected


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.integers(0, 40), st.floats(-1, 1, allow_nan=False), min_size=1, max_size=30),
    st.integers(1, 6),
)
def test_select_checkpoints_properties(scores: dict[int, float], k: int) -> None:
    chosen = select_checkpoints(scores, k)
    assert 1 <= len(chosen) <= k
    assert len(set(chosen)) == len(chosen) and set(chosen) <= set(scores)
    assert all(abs(a - b) != 1 for a in chosen for b in chosen)
    assert chosen[0] == max(scores, key=lambda e: (scores[e], -e))  # the best epoch is always kept
    ranks = [(-scores[e], e) for e in chosen]
    assert ranks == sorted(ranks)  # best first
    for epoch in set(scores) - set(chosen):
        blocked = any(abs(epoch - c) == 1 and (-scores[c], c) < (-scores[epoch], epoch) for c in chosen)
        outranked = len(chosen) == k and ranks[-1] < (-scores[epoch], epoch)
        assert blocked or outranked, f"epoch {epoch} was admissible and good enough but skipped"


@pytest.mark.parametrize(
    ("scores", "k", "message"),
    [({}, 3, "empty"), ({0: 0.1}, 0, "positive"), ({0: math.nan}, 3, "epoch 0"), ({"a": 0.1}, 3, "integer")],
)
def test_select_checkpoints_rejects_bad_input(scores: dict, k: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        select_checkpoints(scores, k)


# ----------------------------------------------------------------------------- welch_greater


def _welch_reference(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Welch t and Welch-Satterthwaite df written out in float64, p from the t survival function."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    na, nb = len(a), len(b)
    va, vb = a.var(ddof=1) / na, b.var(ddof=1) / nb
    t = (a.mean() - b.mean()) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1))
    return t, float(stats.t.sf(t, df))


@pytest.mark.parametrize("trial", range(5))
def test_welch_greater_matches_scipy_and_float64_reference(trial: int, rng: np.random.Generator) -> None:
    na, nb = rng.integers(2, 100, size=2)
    a = rng.normal(rng.uniform(0.2, 0.5), rng.uniform(0.01, 0.1), size=na)
    b = rng.normal(rng.uniform(0.2, 0.5), rng.uniform(0.01, 0.1), size=nb)
    t, p = welch_greater(a, b)
    scipy_result = stats.ttest_ind(a, b, equal_var=False, alternative="greater")
    assert (t, p) == pytest.approx((scipy_result.statistic, scipy_result.pvalue), rel=1e-12, abs=1e-15)
    ref_t, ref_p = _welch_reference(a, b)
    assert t == pytest.approx(ref_t, rel=1e-9)
    assert p == pytest.approx(ref_p, rel=1e-7, abs=1e-14)


def test_welch_greater_is_one_tailed(rng: np.random.Generator) -> None:
    high, low = rng.normal(0.6, 0.02, size=90), rng.normal(0.4, 0.02, size=90)
    t_up, p_up = welch_greater(high, low)
    t_down, p_down = welch_greater(low, high)
    assert t_up > 0 and p_up < 1e-6
    assert t_down == pytest.approx(-t_up) and p_down > 1 - 1e-6


@pytest.mark.parametrize(("a", "b"), [([0.1], [0.1, 0.2]), ([0.1, 0.2], [[0.1, 0.2]]), ([0.1, math.inf], [0.1, 0.2])])
def test_welch_greater_rejects_bad_samples(a: list, b: list) -> None:
    with pytest.raises(ValueError):
        welch_greater(a, b)


# ----------------------------------------------------------------------------- test groups


def test_copies_are_the_whole_set_with_distinct_reproducible_seeds() -> None:
    groups = protocol.test_groups(17, n_groups=30, mode="copies", seed=3)
    assert [g.group for g in groups] == list(range(30))
    assert all(np.array_equal(g.indices, np.arange(17)) for g in groups)
    assert len({g.noise_seed for g in groups}) == 30
    again = protocol.test_groups(17, n_groups=30, mode="copies", seed=3)
    assert [g.noise_seed for g in again] == [g.noise_seed for g in groups]
    other = protocol.test_groups(17, n_groups=30, mode="copies", seed=4)
    assert {g.noise_seed for g in other}.isdisjoint({g.noise_seed for g in groups})


@settings(max_examples=50, deadline=None)
@given(st.integers(2, 12), st.integers(0, 200), st.integers(0, 2**31))
def test_splits_partition_the_test_set_reproducibly(n_groups: int, extra: int, seed: int) -> None:
    n = 2 * n_groups + extra
    groups = protocol.test_groups(n, n_groups=n_groups, mode="splits", seed=seed)
    joined = np.concatenate([g.indices for g in groups])
    assert len(groups) == n_groups
    assert np.array_equal(np.sort(joined), np.arange(n))  # disjoint and covering
    sizes = [len(g.indices) for g in groups]
    assert min(sizes) >= 2 and max(sizes) - min(sizes) <= 1
    assert len({g.noise_seed for g in groups}) == 1  # one noise draw shared by all groups
    again = protocol.test_groups(n, n_groups=n_groups, mode="splits", seed=seed)
    assert all(np.array_equal(x.indices, y.indices) for x, y in zip(groups, again, strict=True))


def test_splits_differ_between_seeds() -> None:
    a = protocol.test_groups(300, n_groups=30, mode="splits", seed=0)
    b = protocol.test_groups(300, n_groups=30, mode="splits", seed=1)
    assert any(not np.array_equal(x.indices, y.indices) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize(
    ("n", "n_groups", "mode", "message"),
    [(59, 30, "splits", "2 test utterances per group"), (1, 30, "copies", "at least 2"), (10, 3, "halves", "copies")],
)
def test_test_groups_rejects_bad_settings(n: int, n_groups: int, mode: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        protocol.test_groups(n, n_groups=n_groups, mode=mode, seed=0)  # type: ignore[arg-type]


def test_clean_copies_are_scored_once_other_conditions_on_every_group() -> None:
    copies = protocol.test_groups(10, n_groups=30, mode="copies", seed=0)
    splits = protocol.test_groups(100, n_groups=30, mode="splits", seed=0)
    assert len(protocol.groups_for_condition("clean", copies, "copies")) == 1
    assert len(protocol.groups_for_condition("snr0", copies, "copies")) == 30
    assert len(protocol.groups_for_condition("clean", splits, "splits")) == 30


# ----------------------------------------------------------------------------- scores table


def _random_scores(rng: np.random.Generator, variants: tuple[str, ...], epochs: int = 3, groups: int = 4) -> Scores:
    scores = Scores()
    for v, variant in enumerate(variants):
        for epoch in range(epochs):
            for condition in CONDITIONS:
                for group in range(groups):
                    ccc = 0.3 + 0.05 * v + rng.normal(0, 0.02, 3)
                    scores.add(variant, 2 * epoch + 1, condition, group, ccc, rng.uniform(-1, 1, 3), rng.normal(0, 1, 3))
    return scores


def test_scores_csv_round_trip_is_exact(tmp_path: Path, rng: np.random.Generator) -> None:
    scores = _random_scores(rng, ("original", "RH", "RM+TL"))
    path = scores.write_csv(tmp_path / "report" / "scores.csv")
    loaded = Scores.read_csv(path)
    assert loaded.rows == scores.rows
    assert loaded.variants() == ["original", "RH", "RM+TL"]
    assert loaded.conditions() == list(CONDITIONS)
    assert len(loaded) == 3 * 3 * 4 * 4 * 3
    assert path.read_text().splitlines()[0] == "variant,model_epoch,condition,group,attribute,ccc,r,bias"


def test_scores_keep_r_and_bias_and_read_an_older_file_without_them(tmp_path: Path, rng: np.random.Generator) -> None:
    scores = Scores()
    r, bias = rng.uniform(-1, 1, 3), rng.normal(0, 2, 3)
    scores.add("RM", 1, "snr5", 0, [0.1, 0.2, 0.3], r=r, bias=bias)
    loaded = Scores.read_csv(scores.write_csv(tmp_path / "scores.csv"))
    np.testing.assert_array_equal([loaded.values("RM", "snr5", a, "r")[0] for a in ATTRIBUTES], r)
    np.testing.assert_array_equal([loaded.values("RM", "snr5", a, "bias")[0] for a in ATTRIBUTES], bias)
    old = tmp_path / "old.csv"
    old.write_text("variant,model_epoch,condition,group,attribute,ccc\nRM,1,snr5,0,arousal,0.25\n")
    row = Scores.read_csv(old).rows[0]
    assert row.ccc == 0.25 and math.isnan(row.r) and math.isnan(row.bias)
    with pytest.raises(ValueError, match="outside"):
        scores.add("RM", 2, "snr5", 0, [0.1, 0.2, 0.3], r=[0.1, 1.5, 0.0])


def test_scores_values_collects_models_and_groups_of_one_cell() -> None:
    scores = Scores()
    scores.add("RM", 1, "snr5", 0, [0.1, 0.2, 0.3])
    scores.add("RM", 4, "snr5", 1, [0.4, 0.5, 0.6])
    scores.add("RM", 4, "snr0", 1, [0.7, 0.8, 0.9])
    np.testing.assert_array_equal(scores.values("RM", "snr5", "dominance"), [0.2, 0.5])
    assert scores.values("RH", "snr5", "dominance").size == 0


def test_scores_reject_duplicates_and_unknown_names() -> None:
    scores = Scores()
    scores.add("RM", 1, "snr5", 0, [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="duplicate"):
        scores.add("RM", 1, "snr5", 0, [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="condition"):
        scores.add("RM", 1, "snr3", 0, [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="attribute"):
        scores.add_row(ScoreRow("RM", 1, "snr5", 0, "happiness", 0.1))
    with pytest.raises(ValueError, match="not finite"):
        scores.add("RM", 2, "snr5", 0, [0.1, math.nan, 0.3])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("variant,epoch,condition,group,attribute,ccc\n", "header"),
        ("variant,model_epoch,condition,group,attribute,ccc\nRM,1,snr5,0,arousal\n", ":2: expected 6 fields"),
        (
            "variant,model_epoch,condition,group,attribute,ccc\nRM,1,snr5,0,arousal,0.1\nRM,x,snr5,0,arousal,0.1\n",
            ":3:",
        ),
        ("variant,model_epoch,condition,group,attribute,ccc\nRM,1,loud,0,arousal,0.1\n", ":2: unknown condition"),
    ],
)
def test_read_csv_errors_name_file_and_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "scores.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        Scores.read_csv(path)
    assert str(path) in str(info.value)


def test_read_csv_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        Scores.read_csv(tmp_path / "nowhere.csv")


# ----------------------------------------------------------------------------- significance


def test_significance_statistics_and_p_values_per_cell(rng: np.random.Generator) -> None:
    variants = ("original", "RH", "RM", "RM+TL")
    scores = _random_scores(rng, variants)
    table = significance(scores, alpha=0.05)
    assert list(table) == list(variants)
    for variant in variants:
        assert list(table[variant]) == list(CONDITIONS)
        for condition in CONDITIONS:
            assert list(table[variant][condition]) == list(ATTRIBUTES)
            for attribute in ATTRIBUTES:
                cell = table[variant][condition][attribute]
                values = scores.values(variant, condition, attribute)
                assert cell.n == 12
                assert cell.mean == pytest.approx(values.mean())
                assert cell.std == pytest.approx(values.std(ddof=1))
                marked = {"original"} if variant in ("RH", "RM") else {"original", "RH", "RM"}  # the paper's markers
                assert set(cell.p) == marked & set(variants[: variants.index(variant)])
                for baseline, p in cell.p.items():
                    expected = stats.ttest_ind(
                        values, scores.values(baseline, condition, attribute), equal_var=False, alternative="greater"
                    ).pvalue
                    assert p == pytest.approx(expected, rel=1e-12)
                    assert cell.significant[baseline] == (p <= 0.05)
    # RM+TL was drawn 0.15 above original with sd 0.02: clearly significant
    assert table["RM+TL"]["snr0"]["arousal"].significant["original"]


def test_each_model_is_tested_only_against_the_baselines_listed_before_it(rng: np.random.Generator) -> None:
    """The paper's markers: none on original, only * on RH and RM, all three below (whatever the scores)."""
    level = {"MINE": 0.8, "RM+TL+CL": 0.4, "RM+CL": 0.3, "RM+TL": 0.7, "RM": 0.2, "RH": 0.1, "original": 0.6}
    scores = Scores()
    for variant, centre in level.items():  # inserted in reverse: the rule follows the table order
        for epoch, group in ((1, 0), (1, 1), (3, 0), (3, 1)):
            scores.add(variant, epoch, "snr0", group, centre + rng.normal(0, 0.01, 3))
    table = significance(scores)
    listed = ["original", "RH", "RM", "RM+TL", "RM+CL", "RM+TL+CL", "MINE"]
    assert list(table) == table_order(scores.variants()) == listed
    for row, variant in enumerate(listed):
        expected = {"original", "RH", "RM"} & set(listed[:row]) if row > 2 else {"original"} & set(listed[:row])
        for cell in table[variant]["snr0"].values():
            assert set(cell.p) == expected and set(cell.significant) == expected
            assert cell.significant == {b: level[variant] > level[b] for b in expected}
    assert all(table["original"]["snr0"][a].p == {} for a in ATTRIBUTES)  # above RH and RM, yet no marker


def test_cells_average_r_and_bias_over_their_finite_values(rng: np.random.Generator) -> None:
    scores, r, bias = Scores(), rng.uniform(-1, 1, (4, 3)), rng.normal(0, 1, (4, 3))
    r[2, 1] = math.nan  # undefined r (constant predictions) is left out
    for group in range(4):
        scores.add("RM", 1, "snr0", group, rng.uniform(0, 1, 3), r=r[group], bias=bias[group])
    cells = significance(scores)["RM"]["snr0"]
    for k, attribute in enumerate(ATTRIBUTES):
        finite = r[:, k][np.isfinite(r[:, k])]
        assert cells[attribute].r == pytest.approx(finite.mean()) and cells[attribute].r_std == pytest.approx(finite.std(ddof=1))
        assert cells[attribute].bias == pytest.approx(bias[:, k].mean())
        assert cells[attribute].bias_std == pytest.approx(bias[:, k].std(ddof=1))


def test_significance_skips_absent_baselines_and_marks_undefined_tests_nan() -> None:
    scores = Scores()
    scores.add("original", 1, "snr0", 0, [0.1, 0.2, 0.3])
    scores.add("RM", 1, "snr0", 0, [0.2, 0.3, 0.4])
    scores.add("RM", 3, "snr0", 0, [0.3, 0.3, 0.5])
    table = significance(scores)
    cell = table["RM"]["snr0"]["valence"]
    assert set(cell.p) == {"original"} and math.isnan(cell.p["original"])  # original has n = 1
    assert cell.significant == {"original": False}
    assert math.isnan(table["original"]["snr0"]["valence"].std)


def test_significance_rejects_bad_alpha() -> None:
    with pytest.raises(ValueError, match="alpha"):
        significance(Scores(), alpha=1.5)
