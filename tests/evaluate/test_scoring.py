"""score_models: which cells are scored in copies/splits mode, resuming, the metrics themselves and the saved predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ctsl_hpc.data.batching import UtteranceSet
from ctsl_hpc.data.conditions import CONDITIONS, SNR_OF
from ctsl_hpc.data.corpus import ATTRIBUTES
from ctsl_hpc.data.noise import NoisePool, noisy_copy
from ctsl_hpc.evaluate.metrics import bias_numpy, ccc_numpy, pearson_numpy
from ctsl_hpc.evaluate.predictions import read_predictions
from ctsl_hpc.evaluate.protocol import GroupSpec, test_groups
from ctsl_hpc.evaluate.score_table import Scores
from ctsl_hpc.evaluate.scoring import score_models
from ctsl_hpc.model import WEIGHTS_FILE, load_model
from ctsl_hpc.workdir import ReportFiles
from tests.seeds import fresh_seed

SR = 16000
N_GROUPS = 2
N_UTTERANCES = 24


pytestmark = pytest.mark.usefixtures("one_thread")  # float comparisons, and the 2-core CI machine


@pytest.fixture(scope="module")
def test_set(normalised_set) -> UtteranceSet:
    return normalised_set(N_UTTERANCES)


@pytest.fixture(scope="module")
def pool(small_corpus) -> NoisePool:
    return NoisePool.from_directory(small_corpus.noise_test, SR, minutes=0.5)



@pytest.fixture
def models(tmp_path, tiny_model) -> dict[str, dict[int, Path]]:
    seeds = fresh_seed("tiny model weights").generate_state(3)
    return {
        "original": {4: tiny_model(tmp_path / "orig", int(seeds[0]))},
        "RM": {2: tiny_model(tmp_path / "rm2", int(seeds[1])), 5: tiny_model(tmp_path / "rm5", int(seeds[2]))},
    }


def _random_groups(test_set, mode: str) -> list[GroupSpec]:
    return test_groups(len(test_set), N_GROUPS, mode, seed=int(fresh_seed("test groups").entropy % 2**31))


def _score(models, test_set, pool, mode, scores=None, real_noisy=None) -> Scores:
    groups = _random_groups(test_set, mode)
    return score_models(models, test_set, pool, groups, mode, "rms", 8, real_noisy, scores)


def _cells(scores: Scores) -> dict[tuple[str, int, str], list[int]]:
    cells: dict[tuple[str, int, str], set[int]] = {}
    for r in scores.rows:
        cells.setdefault((r.variant, r.model_epoch, r.condition), set()).add(r.group)
    return {k: sorted(v) for k, v in cells.items()}


def test_copies_mode_scores_clean_once_and_every_noisy_copy(models, test_set, pool):
    scores = _score(models, test_set, pool, "copies")
    assert len(scores) == 3 * (1 + 3 * N_GROUPS) * len(ATTRIBUTES)
    cells = _cells(scores)
    assert set(cells) == {(v, e, c) for v, eps in models.items() for e in eps for c in CONDITIONS}
    for (_, _, condition), groups in cells.items():
        assert groups == ([0] if condition == "clean" else list(range(N_GROUPS)))
    noisy = scores.values("RM", "snr0", "arousal")
    assert len(set(noisy.tolist())) == noisy.size, "each noisy copy is a different draw"


def test_splits_mode_scores_every_group_of_every_condition(models, test_set, pool):
    scores = _score(models, test_set, pool, "splits")
    assert len(scores) == 3 * len(CONDITIONS) * N_GROUPS * len(ATTRIBUTES)
    assert all(groups == list(range(N_GROUPS)) for groups in _cells(scores).values())


@torch.no_grad()
def _alone(model, wave: np.ndarray) -> np.ndarray:
    return model(torch.from_numpy(wave)[None], torch.ones(1, len(wave), dtype=torch.bool)).pred[0].numpy()


@pytest.mark.parametrize("mode", ["copies", "splits"])
def test_scores_are_the_ccc_of_each_groups_predictions(models, test_set, pool, mode):
    """Reference: each utterance mixed with its test copy's noise and run alone through the model."""
    groups = _random_groups(test_set, mode)
    epoch, model_dir = next(iter(models["RM"].items()))
    scores = score_models({"RM": {epoch: model_dir}}, test_set, pool, groups, mode, "rms", 8)
    model, _, _ = load_model(model_dir)
    labels, stats = test_set.labels, test_set.stats
    clean = np.stack([_alone(model, stats.normalise(test_set.raw_wave(i))) for i in range(len(test_set))])
    scored_groups = {"clean": groups[:1] if mode == "copies" else groups, "snr5": groups}
    for condition, specs in scored_groups.items():
        for spec in specs:
            if condition == "clean":
                pred = clean
            else:
                snr = SNR_OF[condition]
                raw = [test_set.raw_wave(i) for i in range(len(test_set))]
                noisy = [noisy_copy(wave, pool, snr, spec.noise_seed, 0, i) for i, wave in enumerate(raw)]
                pred = np.stack([_alone(model, stats.normalise(wave)) for wave in noisy])
            pred_17, labels_17 = 1 + 6 * pred[spec.indices], 1 + 6 * labels[spec.indices]
            rows = [r for r in scores.rows if r.condition == condition and r.group == spec.group]
            for metric, want in (("ccc", ccc_numpy), ("r", pearson_numpy), ("bias", bias_numpy)):
                got = [getattr(r, metric) for r in rows]
                np.testing.assert_allclose(got, want(pred_17, labels_17), rtol=1e-3, atol=1e-4,
                                           err_msg=f"{metric}, {condition} group {spec.group}")  # fmt: skip
    assert len({r.ccc for r in scores.rows}) == len(scores), "every group's CCC differs: a mix-up would show"


def test_resumed_scoring_keeps_present_cells_and_skips_finished_models(models, test_set, pool):
    first = _score({"original": models["original"]}, test_set, pool, "copies")
    before = {r.key(): r.ccc for r in first.rows}
    (models["original"][4] / WEIGHTS_FILE).unlink()  # a finished model must not even be loaded again
    partial = Scores(first.rows)
    for group in range(N_GROUPS):
        partial.add("RM", 2, "snr10", group, [0.123, 0.456, 0.789])
    resumed = _score(models, test_set, pool, "copies", scores=partial)
    assert resumed is partial
    assert {k: v for k, v in ((r.key(), r.ccc) for r in resumed.rows) if k[0] == "original"} == before
    kept = [r.ccc for r in resumed.rows if (r.variant, r.model_epoch, r.condition) == ("RM", 2, "snr10")]
    assert kept == [0.123, 0.456, 0.789] * N_GROUPS
    cells = _cells(resumed)
    assert cells[("RM", 2, "snr0")] == list(range(N_GROUPS)) and cells[("RM", 2, "clean")] == [0]
    assert len(resumed) == 3 * (1 + 3 * N_GROUPS) * len(ATTRIBUTES)


def test_a_real_noisy_recording_set_is_scored_once_in_copies_mode(models, test_set, pool):
    """A shipped noisy test set is one fixed recording: like clean, one group is enough."""
    only = {"original": models["original"]}
    scores = _score(only, test_set, pool, "copies", real_noisy={"snr0": test_set})
    cells = _cells(scores)
    assert cells[("original", 4, "snr0")] == [0] and cells[("original", 4, "snr5")] == list(range(N_GROUPS))
    np.testing.assert_array_equal(
        scores.values("original", "snr0", "arousal"), scores.values("original", "clean", "arousal")
    )


def test_saved_predictions_hold_one_partition_for_every_condition_and_rebuild_every_score(models, test_set, pool, tmp_path):
    """splits: the groups are disjoint, cover the test set and are the same in every condition (paired)."""
    files = ReportFiles(tmp_path / "report")
    groups = _random_groups(test_set, "splits")
    scores = score_models(models, test_set, pool, groups, "splits", "rms", 8, save_to=files)
    saved = read_predictions(files)
    assert {v: sorted(e) for v, e in saved.items()} == {v: sorted(e) for v, e in models.items()}
    for variant, by_epoch in saved.items():
        for epoch, predictions in by_epoch.items():
            np.testing.assert_allclose(predictions.labels, 1 + 6 * test_set.labels, rtol=1e-6)
            for condition in CONDITIONS:
                parts = [predictions.groups[condition, g][0] for g in range(N_GROUPS)]
                assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(test_set)))  # disjoint, covering
                for g, part in enumerate(parts):
                    np.testing.assert_array_equal(part, groups[g].indices)
                    pred = predictions.groups[condition, g][1]
                    labels = predictions.labels[part]
                    for metric, function in (("ccc", ccc_numpy), ("r", pearson_numpy), ("bias", bias_numpy)):
                        got = [getattr(r, metric) for r in scores.rows if r.key()[:4] == (variant, epoch, condition, g)]
                        np.testing.assert_allclose(got, function(pred, labels), rtol=1e-12, atol=1e-12)
    clean, noisy = saved["RM"][2].pooled("clean"), saved["RM"][2].pooled("snr0")
    assert clean[0].shape == noisy[0].shape == (len(test_set), 3) and not np.allclose(clean[0], noisy[0])
