"""Fresh random seeds for tests, each printed so that a failing draw can be replayed.

A test that draws its inputs at random calls ``fresh_seed("what it seeds")`` (the ``rng`` fixture does);
pytest shows the printed lines when the test fails. ``CTSL_TEST_SEED=N1,N2,... pytest <that test>``
replays them: the seeds in the order they were printed (one for most tests; a module-scoped fixture's
seed, printed by the first test that used it, comes first).
"""

from __future__ import annotations

import os

import numpy as np

REPLAY_VARIABLE = "CTSL_TEST_SEED"
_replayed = 0  # how many of CTSL_TEST_SEED's seeds this process has handed out


def fresh_seed(label: str) -> np.random.SeedSequence:
    """A new seed sequence, or CTSL_TEST_SEED's next seed when it is set; its entropy is printed."""
    global _replayed
    replay = os.environ.get(REPLAY_VARIABLE)
    if replay:
        seeds = [int(seed) for seed in replay.split(",")]
        if _replayed >= len(seeds):
            raise RuntimeError(
                f"{REPLAY_VARIABLE}={replay} holds {len(seeds)} seed(s); this run draws more ({label!r})"
            )
        entropy = seeds[_replayed]
        _replayed += 1
    else:
        entropy = int(np.random.SeedSequence().entropy % 2**32)
    print(f"{label}: rng seed {entropy} (replay: {REPLAY_VARIABLE}=<the seeds printed, in order>)")
    return np.random.SeedSequence(entropy)
