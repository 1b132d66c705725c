"""Table 2 metrics against a float64 numpy reference, and the models the projection plot shows."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import logsumexp

from ctsl_hpc.data.batching import UtteranceSet
from ctsl_hpc.data.conditions import CONDITIONS
from ctsl_hpc.data.noise import NoisePool
from ctsl_hpc.evaluate.embeddings import INFONCE_BATCH, compare_embeddings, embedding_metrics, infonce_batches
from ctsl_hpc.evaluate.metrics import ccc_numpy
from ctsl_hpc.evaluate.protocol import best_student
from ctsl_hpc.evaluate.scoring import condition_set
from ctsl_hpc.losses import MARGIN_TOLERANCE
from ctsl_hpc.model import load_model
from ctsl_hpc.train.inference import predict
from tests.seeds import fresh_seed

SR = 16000


pytestmark = pytest.mark.usefixtures("one_thread")  # float comparisons, and the 2-core CI machine


def _infonce_reference(
    student: np.ndarray, teacher: np.ndarray, labels: np.ndarray, margin: float, tau: float
) -> tuple[float, int]:
    """Label-margin InfoNCE of one batch (METHOD.md), in float64 numpy, and its number of anchors."""
    q = student / np.linalg.norm(student, axis=1, keepdims=True)
    k = teacher / np.linalg.norm(teacher, axis=1, keepdims=True)
    positive = (q * k).sum(axis=1) / tau
    similarity = q @ q.T / tau
    # the documented tolerance of ctsl_hpc.losses.margin_negatives (exact 0.5 steps on the 1..7 grid count)
    is_negative = (np.abs(labels[:, None, :] - labels[None, :, :]) >= margin - MARGIN_TOLERANCE).all(axis=-1)
    np.fill_diagonal(is_negative, False)
    losses = [
        -(positive[i] - logsumexp(np.concatenate([[positive[i]], similarity[i, is_negative[i]]])))
        for i in range(len(q))
        if is_negative[i].any()
    ]
    return (float(np.mean(losses)) if losses else math.nan), len(losses)


def _reference(teacher: np.ndarray, noisy: np.ndarray, labels: np.ndarray, margin: float, tau: float, batch: int):
    """Table 2's metrics; InfoNCE over the batches that hold an anchor (METHOD.md)."""
    t, s = teacher.astype(np.float64), noisy.astype(np.float64)
    cosine = (t * s).sum(axis=1) / (np.linalg.norm(t, axis=1) * np.linalg.norm(s, axis=1))
    batches = [
        _infonce_reference(s[i : i + batch], t[i : i + batch], labels[i : i + batch], margin, tau)
        for i in range(0, len(t), batch)
    ]
    used = [loss for loss, count in batches if count]
    rmse = math.sqrt(np.mean((t - s) ** 2))
    infonce = float(np.mean(used)) if used else math.nan
    return {"rmse": rmse, "cosine": float(cosine.mean()), "infonce": infonce, "anchors": sum(c for _, c in batches)}


def test_compare_embeddings_matches_a_float64_reference_over_batches_of_32(rng):
    n, dim = int(rng.integers(70, 100)), 24
    teacher = rng.normal(size=(n, dim)).astype(np.float32)
    noisy = (teacher + rng.normal(scale=0.7, size=(n, dim))).astype(np.float32)
    labels = rng.uniform(0, 1, size=(n, 3)).astype(np.float32)
    seed = int(rng.integers(1000))
    got = compare_embeddings(teacher, noisy, labels, margin=0.2, temperature=0.1, seed=seed)
    order = np.concatenate(infonce_batches(n, seed))  # the reference batches the pairs in that order
    want = _reference(teacher[order], noisy[order], labels[order].astype(np.float64), 0.2, 0.1, INFONCE_BATCH)
    assert INFONCE_BATCH == 32
    for name in ("rmse", "cosine", "infonce"):
        assert got[name] == pytest.approx(want[name], rel=1e-9, abs=1e-12), name
    assert got["anchors"] == want["anchors"] > 0
    whole_set = _reference(teacher, noisy, labels.astype(np.float64), 0.2, 0.1, n)
    assert abs(whole_set["infonce"] - got["infonce"]) > 1e-3, "the batch size must matter for this check to bite"


def test_table2_batches_are_a_seeded_permutation_that_uses_every_sample_once(rng):
    n, seed = int(rng.integers(33, 200)), int(rng.integers(1000))
    batches = infonce_batches(n, seed)
    assert sorted(np.concatenate(batches).tolist()) == list(range(n))  # every dev sample once
    assert [len(b) for b in batches[:-1]] == [INFONCE_BATCH] * (len(batches) - 1) and 0 < len(batches[-1]) <= 32
    assert all(np.array_equal(a, b) for a, b in zip(batches, infonce_batches(n, seed), strict=True))  # reproducible
    assert not np.array_equal(np.concatenate(batches), np.arange(n))  # not the corpus order
    assert not np.array_equal(np.concatenate(batches), np.concatenate(infonce_batches(n, seed + 1)))


def test_infonce_skips_batches_without_an_anchor_and_counts_the_anchors_it_used(rng):
    n_batches, dim, margin = 4, 16, 0.2
    n = INFONCE_BATCH * n_batches
    teacher = rng.normal(size=(n, dim))
    noisy = teacher + rng.normal(scale=0.8, size=(n, dim))
    labels = rng.uniform(0, 1, size=(n, 3))
    seed = int(rng.integers(1000))
    batches = infonce_batches(n, seed)
    empty = int(rng.integers(n_batches))  # one batch whose labels all lie within the margin: no anchor there
    labels[batches[empty]] = rng.uniform(0.45, 0.55, size=(INFONCE_BATCH, 3))
    got = compare_embeddings(teacher, noisy, labels, margin, temperature=0.1, seed=seed)
    per_batch = [_infonce_reference(noisy[b], teacher[b], labels[b], margin, 0.1) for b in batches]
    assert per_batch[empty][1] == 0 and all(count > 0 for b, (_, count) in enumerate(per_batch) if b != empty)
    expected = np.mean([loss for b, (loss, _) in enumerate(per_batch) if b != empty])
    assert got["infonce"] == pytest.approx(expected, rel=1e-9)
    assert got["anchors"] == sum(count for _, count in per_batch)
    averaged_in_as_zero = np.mean([0.0 if b == empty else loss for b, (loss, _) in enumerate(per_batch)])
    assert abs(got["infonce"] - averaged_in_as_zero) > 1e-3
    none = compare_embeddings(teacher[:40], noisy[:40], np.full((40, 3), 0.5), margin, temperature=0.1)
    assert none["anchors"] == 0 and math.isnan(none["infonce"])


def test_identical_embeddings_have_zero_rmse_and_unit_cosine(rng):
    emb = rng.normal(size=(40, 16))
    labels = rng.uniform(0, 1, size=(40, 3))
    got = compare_embeddings(emb, emb.copy(), labels, margin=0.2, temperature=0.1, seed=3)
    assert got["rmse"] == 0.0
    assert got["cosine"] == pytest.approx(1.0, abs=1e-12)
    order = np.concatenate(infonce_batches(40, 3))
    assert got["infonce"] == pytest.approx(_reference(emb[order], emb[order], labels[order], 0.2, 0.1, 32)["infonce"],
                                           rel=1e-9)


def test_best_student_is_the_highest_non_original_with_nan_last_and_ties_first():
    assert best_student({"original": 0.9, "RH": 0.2, "RM": 0.4, "RM+TL": 0.4}) == "RM"
    assert best_student({"original": 0.1, "RM": math.nan, "RH": -0.3}) == "RH"
    assert best_student({"original": 0.5}) is None


# --------------------------------------------------------------------------- with real models


@pytest.fixture(scope="module")
def dev_set(normalised_set) -> UtteranceSet:
    return normalised_set(20)


@pytest.fixture(scope="module")
def dev_pool(small_corpus) -> NoisePool:
    return NoisePool.from_directory(small_corpus.noise_dev, SR, minutes=0.5)



def test_embedding_metrics_per_model_and_condition_and_the_projected_models(tmp_path, dev_set, dev_pool, tiny_model):
    seeds = fresh_seed("tiny model weights").generate_state(4)
    variants = ["original", "RH", "RM", "RM+TL"]
    models = {v: tiny_model(tmp_path / v, int(s)) for v, s in zip(variants, seeds, strict=True)}
    margin, tau = 0.5 / 6, 0.1
    table, (teacher_clean, projected) = embedding_metrics(models, dev_set, dev_pool, "rms", margin, tau, 8, seed=5)

    assert list(table) == list(models) and all(list(by_c) == list(CONDITIONS) for by_c in table.values())
    assert table["original"]["clean"]["rmse"] == pytest.approx(0.0, abs=1e-6)
    assert table["original"]["clean"]["cosine"] == pytest.approx(1.0, abs=1e-6)
    teacher, _, _ = load_model(models["original"])
    np.testing.assert_allclose(teacher_clean, predict(teacher, dev_set, 4)[1], atol=1e-5)

    ccc_0db = {}
    for variant, model_dir in models.items():
        model, _, _ = load_model(model_dir)
        view = condition_set(dev_set, "snr0", 5, dev_pool, "rms")
        pred, emb = predict(model, view, 4, use_noisy=True)
        ccc_0db[variant] = float(ccc_numpy(pred, dev_set.labels).mean())
        order = np.concatenate(infonce_batches(len(emb), 5))
        want = _reference(teacher_clean[order], emb[order], dev_set.labels[order].astype(np.float64), margin, tau, 32)
        for name, value in want.items():
            assert table[variant]["snr0"][name] == pytest.approx(value, rel=1e-4, abs=1e-5), (variant, name)
        if variant in projected:
            np.testing.assert_allclose(projected[variant], emb, atol=1e-5)
    best = max((v for v in models if v != "original"), key=ccc_0db.get)
    assert list(projected) == ["original", best]
