"""ResumableASHA: a search restored mid-way (Tune brings its scheduler back as created) makes the decisions
the uninterrupted search made, where Ray's own ASHA, restored the same way, forgets its rungs."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import numpy as np
from ray.tune.schedulers import ASHAScheduler

from ctsl_hpc.tune.schedulers import ResumableASHA

SETTINGS = {"time_attr": "epoch", "max_t": 9, "grace_period": 1, "reduction_factor": 3}


def _fresh(scheduler):
    made = pickle.loads(pickle.dumps(scheduler))  # what Tuner.restore brings back: the scheduler as created
    made.set_search_properties("score", "max")
    return made


def _search(make, values: np.ndarray, restore_at: int | None = None) -> dict[tuple[int, int], str]:
    """Trials one at a time, each reporting epochs until stopped; at report ``restore_at`` the driver dies,
    the scheduler is restored as created and the running trial resumes from the epoch before its last report.
    {(trial, epoch): decision}; a report made again keeps the decision made last."""
    created = make()
    scheduler = _fresh(created)
    trials = [SimpleNamespace(trial_id=f"t{i}") for i in range(len(values))]
    decisions, reports = {}, 0
    for i, trial in enumerate(trials):
        scheduler.on_trial_add(None, trial)
        epoch = 1
        while True:
            result = {"epoch": epoch, "score": float(values[i, epoch - 1])}
            action = scheduler.on_trial_result(None, trial, result)
            reports += 1
            if reports == restore_at:
                scheduler = _fresh(created)
                for seen in trials[: i + 1]:
                    scheduler.on_trial_add(None, seen)  # Tune adds every restored trial again
                epoch = max(epoch - 1, 1)  # the trial's checkpoint is one report older
                continue
            decisions[i, epoch] = action
            if action == "STOP" or epoch == SETTINGS["max_t"]:
                scheduler.on_trial_complete(None, trial, result)
                break
            epoch += 1
    return decisions


def test_a_restored_resumable_asha_decides_as_the_uninterrupted_one(tmp_path, rng):
    values = rng.uniform(size=(12, SETTINGS["max_t"])).cumsum(axis=1)
    straight = _search(lambda: ResumableASHA(tmp_path / "a.jsonl", **SETTINGS), values)
    assert set(straight.values()) == {"CONTINUE", "STOP"}
    for n, restore_at in enumerate(rng.choice(np.arange(3, len(straight)), size=4, replace=False)):
        restored = _search(lambda n=n: ResumableASHA(tmp_path / f"b{n}.jsonl", **SETTINGS), values, int(restore_at))
        assert restored == straight, f"restored after report {restore_at}"


def test_rays_asha_restored_as_created_forgets_its_rungs(rng):
    values = np.tile(np.arange(12, 0, -1.0)[:, None], (1, SETTINGS["max_t"]))  # each trial worse than the last
    straight = _search(lambda: ASHAScheduler(**SETTINGS), values)
    restored = _search(lambda: ASHAScheduler(**SETTINGS), values, restore_at=len(straight) - 2)
    assert restored != straight  # why ResumableASHA exists
