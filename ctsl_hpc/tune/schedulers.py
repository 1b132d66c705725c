"""The search's trial schedulers (``tune.scheduler``), ASHA with rungs that survive a restore.

Tune does not save its scheduler: ``TuneController.__getstate__`` leaves ``_scheduler_alg`` out of the
experiment state, and ``Tuner.restore`` brings the scheduler back as it was created. A restored ASHA
has forgotten every result its rungs held, so it lets trials go on that the uninterrupted search
stopped, and stops others. :class:`ResumableASHA` keeps a journal of its decisions (one JSON line per
result: trial, epoch, value, decision) and replays it into its rungs on its first call after a restore;
a result that a restored trial reports again (it resumes from a checkpoint older than its last report)
gets the decision already made. Written by hand: neither Tune nor its schedulers offer this.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandScheduler

from ctsl_hpc.config import TuneConfig
from ctsl_hpc.tune.space import TIME_ATTR


class ResumableASHA(ASHAScheduler):
    """:class:`~ray.tune.schedulers.ASHAScheduler` whose rungs are rebuilt from ``journal`` after a restore."""

    def __init__(self, journal: str | Path, **asha: Any) -> None:
        super().__init__(**asha)
        self._journal = str(journal)
        self._decisions: dict[tuple[str, int], str] = {}  # (trial, epoch): CONTINUE or STOP
        self._bracket_of: dict[str, int] = {}
        self._replayed = False

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles the scheduler as created: the journal is its memory
        return {**self.__dict__, "_decisions": {}, "_bracket_of": {}, "_replayed": False}

    def _replay(self) -> None:
        if self._replayed:
            return
        self._replayed = True
        if not os.path.exists(self._journal):
            return
        for line in Path(self._journal).read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # a line torn by a crash: its decision is made again
                continue
            trial = entry["trial"]
            if "bracket" in entry:
                self._bracket_of[trial] = entry["bracket"]
                continue
            final_epoch = "action" in entry and entry["t"] >= self._max_t and self._stop_last_trials
            if not final_epoch:  # as ASHA's own on_trial_result / on_trial_complete record it
                bracket = self._brackets[self._bracket_of.get(trial, 0)]
                bracket.on_result(SimpleNamespace(trial_id=trial), entry["t"], self._metric_op * entry["value"])
            if "action" in entry:
                self._decisions[trial, entry["t"]] = entry["action"]

    def _write(self, entry: dict[str, Any]) -> None:
        os.makedirs(os.path.dirname(self._journal), exist_ok=True)
        with open(self._journal, "a") as handle:
            handle.write(json.dumps(entry) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def on_trial_add(self, tune_controller, trial) -> None:
        self._replay()
        super().on_trial_add(tune_controller, trial)  # checks metric and mode, draws a bracket
        known = self._bracket_of.get(trial.trial_id)
        if known is not None:  # a restored trial: the bracket it was in
            self._trial_info[trial.trial_id] = self._brackets[known]
            return
        self._bracket_of[trial.trial_id] = self._brackets.index(self._trial_info[trial.trial_id])
        self._write({"trial": trial.trial_id, "bracket": self._bracket_of[trial.trial_id]})

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        self._replay()
        if self._time_attr not in result or self._metric not in result:
            return super().on_trial_result(tune_controller, trial, result)
        made = self._decisions.get((trial.trial_id, result[self._time_attr]))
        if made is not None:  # reported again after a restore
            return made
        action = super().on_trial_result(tune_controller, trial, result)
        self._decisions[trial.trial_id, result[self._time_attr]] = action
        self._write({"trial": trial.trial_id, "t": result[self._time_attr], "value": result[self._metric],
                     "action": action})  # fmt: skip
        return action

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self._replay()
        super().on_trial_complete(tune_controller, trial, result)
        if result and self._time_attr in result and self._metric in result:
            self._write({"trial": trial.trial_id, "t": result[self._time_attr], "value": result[self._metric]})


def make_scheduler(tc: TuneConfig, journal: Path, early_stopping: bool = True):
    """``tune.scheduler``: ASHA (asynchronous successive halving; its decisions journaled in ``journal``),
    Hyperband (synchronous brackets), or FIFO; FIFO too when ``early_stopping`` is false."""
    if not early_stopping or tc.scheduler == "fifo":
        return FIFOScheduler()
    if tc.scheduler == "hyperband":
        return HyperBandScheduler(time_attr=TIME_ATTR, max_t=tc.max_t, reduction_factor=tc.reduction_factor)
    return ResumableASHA(journal, time_attr=TIME_ATTR, max_t=tc.max_t, grace_period=tc.grace_period,
                         reduction_factor=tc.reduction_factor, brackets=tc.brackets)
