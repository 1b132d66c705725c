"""Fresh random seeds for tests, each printed so that a failing draw can be replayed.

A test that draws its inputs at random calls ``fresh_seed("what it seeds")``; pytest shows the printed
line when the test fails. ``CTSL_TEST_SEED=<printed seed> pytest <that test>`` replays the draw.
"""

from __future__ import annotations

import os

import numpy as np

REPLAY_VARIABLE = "CTSL_TEST_SEED"


def fresh_seed(label: str) -> np.random.SeedSequence:
    """A new seed sequence, or the replayed one when ``CTSL_TEST_SEED`` is set; its entropy is printed."""
    replay = os.environ.get(REPLAY_VARIABLE)
    entropy = int(replay) if replay else int(np.random.SeedSequence().entropy % 2**32)
    print(f"{label}: rng seed {entropy} (replay: {REPLAY_VARIABLE}={entropy})")
    return np.random.SeedSequence(entropy)
