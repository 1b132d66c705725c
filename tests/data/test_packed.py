"""The packed corpus: the same samples as the files, the same batches from a loader, staging that fits or
says why not, and re-stages only what an earlier start left missing."""

from __future__ import annotations

import functools
import shutil
from collections import namedtuple

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ctsl_hpc.data.audio import read_audio
from ctsl_hpc.data.batching import RandomBatchSampler, UtteranceSet, collate
from ctsl_hpc.data.corpus import load_csv_manifest
from ctsl_hpc.data.noise import NoisePool
from ctsl_hpc.data import packed as packed_module
from ctsl_hpc.data.packed import COMPLETE, PackedCorpus, StagingError, pack, stage, unstage

SR = 16000
MAX_S, MIN_S = 1.5, 0.5


def _pack_corpus(utterances, folder, shard_samples=1 << 28, processes=1):
    read = functools.partial(read_audio, sample_rate=SR, max_seconds=MAX_S, min_seconds=MIN_S)  # picklable
    lengths = {str(u.path): len(read(str(u.path))) for u in utterances}
    return pack(folder, lengths, read, {"what": "test"}, shard_samples=shard_samples, processes=processes)


@pytest.fixture(scope="module")
def utterances(small_corpus):
    return [u for split in load_csv_manifest(small_corpus.manifest).values() for u in split]


def test_the_pack_holds_the_samples_training_decodes_in_a_few_shards(utterances, tmp_path, monkeypatch):
    monkeypatch.setattr(packed_module, "KEYS_PER_CHUNK", len(utterances) // 3)  # a few chunks for two worker processes
    corpus = _pack_corpus(utterances, tmp_path / "packed", shard_samples=5 * SR, processes=2)
    assert 1 < len(corpus.shards) < len(utterances) and corpus.meta == {"what": "test"}
    assert (tmp_path / "packed" / COMPLETE).is_file()
    for utt in utterances:
        np.testing.assert_array_equal(corpus.wave(str(utt.path)), read_audio(utt.path, SR, MAX_S, MIN_S))


@pytest.mark.parametrize("preload", [False, True])
def test_a_loader_reading_the_staged_pack_yields_the_batches_of_one_reading_the_files(
    utterances, small_corpus, tmp_path, preload
):
    staged = stage(_pack_corpus(utterances, tmp_path / "packed").folder, tmp_path / "node-local" / "copy")
    pool = NoisePool.from_directory(small_corpus.noise_train, SR, 1.0, min_seconds=MAX_S)
    common = dict(sample_rate=SR, max_seconds=MAX_S, min_seconds=MIN_S, noise=pool, snr_db=0.0, seed=3, preload=preload)
    in_place, from_pack = UtteranceSet(utterances, **common), UtteranceSet(utterances, **common, store=staged)
    assert np.array_equal(in_place.lengths, from_pack.lengths)
    for dataset in (in_place, from_pack):
        dataset.set_epoch(2)
    loaders = [DataLoader(d, batch_sampler=RandomBatchSampler(d.lengths, 4, seed=1), collate_fn=collate, num_workers=w)
               for d, w in ((in_place, 0), (from_pack, 2))]
    batches = 0
    for a, b in zip(*loaders, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        batches += 1
    assert batches == len(loaders[0])


Usage = namedtuple("Usage", "total used free")


def test_staging_refuses_a_folder_without_the_space_in_one_line(utterances, tmp_path, monkeypatch):
    packed = _pack_corpus(utterances[:4], tmp_path / "packed")
    needed = sum(f.stat().st_size for f in packed.files())
    monkeypatch.setattr(shutil, "disk_usage", lambda _: Usage(10**12, 10**12, needed - 1))
    with pytest.raises(StagingError) as refused:
        stage(packed.folder, tmp_path / "local" / "copy")
    message = str(refused.value)
    assert message.startswith(f"data.stage_dir: {tmp_path / 'local'} has ") and "\n" not in message
    assert "unset data.stage_dir" in message


def test_a_restarted_job_stages_only_what_is_missing_and_its_end_removes_the_copy(utterances, tmp_path, monkeypatch):
    packed = _pack_corpus(utterances, tmp_path / "packed", shard_samples=5 * SR)
    target = tmp_path / "local" / "copy"
    stage(packed.folder, target)
    first, *rest = sorted(target.glob("shard-*.npy"))
    first.unlink()  # a start killed while copying
    (target / COMPLETE).unlink()
    copied = []
    real = shutil.copyfile
    monkeypatch.setattr(shutil, "copyfile", lambda src, dst: copied.append(src.name) or real(src, dst))
    again = stage(packed.folder, target)
    assert copied == [first.name] and isinstance(again, PackedCorpus)
    assert all(np.array_equal(again.wave(k), packed.wave(k)) for k in packed.items)
    unstage(target)
    assert not target.exists()
