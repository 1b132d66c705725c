"""UtteranceSet, collate and the batch samplers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ctsl_hpc.data.audio import AudioError, WaveformStats, read_audio
from ctsl_hpc.data.batching import LengthBucketSampler, RandomBatchSampler, UtteranceSet, collate, padding_waste
from ctsl_hpc.data.corpus import Utterance
from ctsl_hpc.data.noise import NoisePool, mix, noise_rng, noisy_copy

pytestmark = pytest.mark.usefixtures("one_thread")  # float comparisons, and the 2-core CI machine


@pytest.fixture
def utterances(tmp_path, rng, speech, write_wav) -> list[Utterance]:
    utts = []
    for i in range(12):
        path = write_wav(tmp_path / f"u{i}.wav", speech(float(rng.uniform(0.6, 2.0))))
        utts.append(Utterance(path, tuple(float(x) for x in rng.uniform(1, 7, 3)), "train", None))
    return utts


@pytest.fixture
def pool(rng) -> NoisePool:
    return NoisePool.from_arrays([rng.standard_normal(16000 * 20).astype(np.float32)], 16000)


def _noisy_set(utterances, pool, **kwargs) -> UtteranceSet:
    stats = WaveformStats(mean=0.001, std=0.05)
    return UtteranceSet(utterances, 16000, max_seconds=1.5, stats=stats, noise=pool, snr_db=0.0, seed=11, **kwargs)


def test_items_hold_normalised_clean_and_noisy_waves_and_scaled_labels(utterances, pool):
    data = _noisy_set(utterances, pool)
    data.set_epoch(3)
    stats = data.stats
    for index in (0, 5, 11):
        item = data[index]
        raw = read_audio(utterances[index].path, 16000, max_seconds=1.5)
        expected_noisy = mix(raw, pool.segment(noise_rng(11, 3, index), raw.size), 0.0)
        np.testing.assert_allclose(item["clean"], stats.normalise(raw), rtol=1e-6)
        np.testing.assert_allclose(item["noisy"], stats.normalise(expected_noisy), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(item["labels"], (np.array(utterances[index].labels) - 1) / 6, rtol=1e-6)
        assert item["index"] == index and item["clean"].dtype == np.float32


def test_preloaded_and_lazy_sets_give_identical_items(utterances, pool):
    lazy, eager = _noisy_set(utterances, pool), _noisy_set(utterances, pool, preload=True)
    np.testing.assert_array_equal(lazy.lengths, eager.lengths)
    for index in range(len(utterances)):
        for key in ("clean", "noisy", "labels"):
            np.testing.assert_array_equal(lazy[index][key], eager[index][key])


def _batches(data: UtteranceSet, workers: int, epochs: list[int], persistent: bool) -> list[list[dict]]:
    sampler = LengthBucketSampler(data.lengths, batch_size=4, seed=5)
    loader = DataLoader(
        data, batch_sampler=sampler, collate_fn=collate, num_workers=workers, persistent_workers=persistent
    )
    out = []
    for epoch in epochs:
        data.set_epoch(epoch)
        sampler.set_epoch(epoch)
        out.append(list(loader))
    return out


def test_noisy_batches_do_not_depend_on_worker_count_and_change_with_epoch(utterances, pool):
    data = _noisy_set(utterances, pool, preload=True)
    in_process = _batches(data, 0, [0, 1], persistent=False)
    with_workers = _batches(data, 2, [0, 1], persistent=True)  # persistent workers must see set_epoch
    for epoch in range(2):
        for a, b in zip(in_process[epoch], with_workers[epoch], strict=True):
            assert torch.equal(a["index"], b["index"])
            assert torch.equal(a["noisy"], b["noisy"]) and torch.equal(a["clean"], b["clean"])
    by_index = [
        {int(i): row for b in batches for i, row in zip(b["index"], b["noisy"], strict=True)} for batches in in_process
    ]
    assert all(not torch.equal(by_index[0][i], by_index[1][i]) for i in range(len(utterances)))


def test_fixed_test_copies_ignore_the_epoch_and_match_noisy_copy(utterances, pool):
    data = _noisy_set(utterances, pool, copy_index=4)
    first = data[2]["noisy"]
    data.set_epoch(9)
    np.testing.assert_array_equal(data[2]["noisy"], first)
    raw = read_audio(utterances[2].path, 16000, max_seconds=1.5)
    np.testing.assert_array_equal(first, data.stats.normalise(noisy_copy(raw, pool, 0.0, 11, 4, 2)))


def test_bad_audio_is_an_error_or_skipped_and_counted(utterances, tmp_path, speech, write_wav):
    silent = write_wav(tmp_path / "silent.wav", np.zeros(16000, dtype=np.float32))
    short = write_wav(tmp_path / "short.wav", speech(0.2))
    bad = [Utterance(silent, (1.0, 1.0, 1.0), "train"), Utterance(short, (1.0, 1.0, 1.0), "train")]
    mixed = utterances[:3] + bad + utterances[3:5]
    with pytest.raises(AudioError, match="silent.wav"):
        UtteranceSet(mixed, 16000, min_seconds=0.5, preload=True)
    with pytest.raises(AudioError, match="short.wav"):
        UtteranceSet(mixed, 16000, min_seconds=0.5)  # lazy: header checks only, the silent clip passes
    kept = UtteranceSet(mixed, 16000, min_seconds=0.5, preload=True, on_bad_audio="skip")
    assert len(kept) == 5 and [s[0] for s in kept.skipped] == [str(silent), str(short)]
    assert [u.path for u in kept.utterances] == [u.path for u in utterances[:5]]


def test_collate_pads_to_the_longest_with_a_mask(utterances, pool):
    data = _noisy_set(utterances, pool)
    items = [data[i] for i in (0, 3, 7)]
    batch = collate(items)
    lengths = [len(it["clean"]) for it in items]
    assert batch["clean"].shape == batch["noisy"].shape == (3, max(lengths))
    assert batch["mask"].dtype == torch.bool and batch["mask"].sum(1).tolist() == lengths
    for row, it in enumerate(items):
        assert torch.equal(batch["clean"][row, : lengths[row]], torch.from_numpy(it["clean"]))
        assert not batch["clean"][row, lengths[row] :].any() and not batch["noisy"][row, lengths[row] :].any()
    assert batch["index"].tolist() == [0, 3, 7] and batch["labels"].shape == (3, 3)
    clean_only = collate([UtteranceSet(utterances, 16000)[i] for i in (1, 2)])
    assert "noisy" not in clean_only


def _msp_like_lengths(rng: np.random.Generator, n: int) -> np.ndarray:
    return (rng.uniform(2.75, 11.0, size=n) * 16000).astype(np.int64)


@pytest.mark.parametrize("sampler_cls", [LengthBucketSampler, RandomBatchSampler])
def test_sampler_is_deterministic_per_epoch_and_covers_every_utterance_once(rng, sampler_cls):
    lengths = _msp_like_lengths(rng, int(rng.integers(200, 600)))
    sampler = sampler_cls(lengths, batch_size=16, seed=3)
    again = sampler_cls(lengths, batch_size=16, seed=3)
    plans = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        again.set_epoch(epoch)
        plan = list(sampler)
        assert plan == list(again) and len(plan) == len(sampler)
        assert sorted(i for b in plan for i in b) == list(range(len(lengths)))
        plans.append(plan)
    assert plans[0] != plans[1] != plans[2]
    memberships = [{frozenset(b) for b in plan} for plan in plans]
    assert memberships[0] != memberships[1]  # batch contents change between epochs, not just their order
    other_seed = sampler_cls(lengths, batch_size=16, seed=4)
    assert list(other_seed) != plans[0]


@pytest.mark.parametrize("sampler_cls", [LengthBucketSampler, RandomBatchSampler])
@pytest.mark.parametrize("budget", [None, 16000 * 60])
def test_ranks_get_disjoint_equal_numbers_of_batches(rng, sampler_cls, budget):
    lengths = _msp_like_lengths(rng, int(rng.integers(300, 700)))
    replicas = int(rng.integers(2, 5))
    plans = []
    for rank in range(replicas):
        sampler = sampler_cls(lengths, 8, seed=1, num_replicas=replicas, rank=rank, max_batch_samples=budget)
        sampler.set_epoch(2)
        plans.append(list(sampler))
    assert len({len(p) for p in plans}) == 1
    seen = [i for plan in plans for b in plan for i in b]
    assert len(seen) == len(set(seen))
    single = sampler_cls(lengths, 8, seed=1, max_batch_samples=budget)
    single.set_epoch(2)
    assert len(single) - len(plans[0]) * replicas < replicas  # at most R-1 batches dropped


def test_token_budget_bounds_padded_batch_size(rng):
    lengths = _msp_like_lengths(rng, 500)
    budget = int(16000 * rng.uniform(40, 120))
    for sampler_cls in (LengthBucketSampler, RandomBatchSampler):
        sampler = sampler_cls(lengths, batch_size=1, seed=0, max_batch_samples=budget)
        for batch in sampler:
            assert len(batch) * lengths[batch].max() <= budget
    bucketed = LengthBucketSampler(lengths, batch_size=1, seed=0, max_batch_samples=budget)
    assert len(bucketed) < len(RandomBatchSampler(lengths, batch_size=1, seed=0, max_batch_samples=budget))


def test_length_buckets_keep_padding_waste_low_on_an_msp_like_mix(rng):
    lengths = _msp_like_lengths(rng, 2000)
    bucketed = LengthBucketSampler(lengths, batch_size=16, seed=0)
    naive = RandomBatchSampler(lengths, batch_size=16, seed=0)
    for epoch in range(3):
        bucketed.set_epoch(epoch)
        naive.set_epoch(epoch)
        assert padding_waste(list(bucketed), lengths) <= 0.05
        assert padding_waste(list(naive), lengths) >= 0.2
    assert padding_waste([[0, 1]], np.array([10, 30])) == pytest.approx(20 / 60)


def test_resuming_inside_an_epoch_yields_the_remaining_batches(rng):
    lengths = _msp_like_lengths(rng, 300)
    full = LengthBucketSampler(lengths, batch_size=8, seed=9, num_replicas=2, rank=1)
    full.set_epoch(4)
    plan = list(full)
    k = int(rng.integers(1, len(plan)))
    resumed = LengthBucketSampler(lengths, batch_size=8, seed=9, num_replicas=2, rank=1)
    resumed.set_epoch(4, start_batch=k)
    assert list(resumed) == plan[k:]
    resumed.set_epoch(5)
    full.set_epoch(5)
    assert list(resumed) == list(full)
