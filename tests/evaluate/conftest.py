"""Fixtures of the evaluation tests: a few utterances of the small corpus as the models read them."""

from __future__ import annotations

import pytest

from ctsl_hpc.data.audio import compute_stats
from ctsl_hpc.data.batching import UtteranceSet
from ctsl_hpc.data.corpus import load_csv_manifest

SAMPLE_RATE = 16000


@pytest.fixture(scope="session")
def normalised_set(small_corpus):
    """``normalised_set(n)``: the small corpus's first ``n`` utterances (all splits), cropped to 1.5 s and
    normalised with their own statistics."""

    def make(n: int) -> UtteranceSet:
        utterances = [u for split in load_csv_manifest(small_corpus.manifest).values() for u in split][:n]
        raw = UtteranceSet(utterances, SAMPLE_RATE, max_seconds=1.5, preload=True)
        stats = compute_stats(raw.raw_wave(i) for i in range(len(raw)))
        return UtteranceSet(utterances, SAMPLE_RATE, max_seconds=1.5, stats=stats, preload=True)

    return make
