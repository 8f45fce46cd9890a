"""The study's pruner: Optuna's median rule, asked only where it can act and reading the finished trials once a
trial rather than once an epoch.

`MedianPruner.prune` reads every completed trial of the study from the storage before it looks at the step,
so asking it every epoch of a short trial cost a database round trip per epoch, most of a small model's
bookkeeping. Here the rule is the same; what changes is when the storage is read: not before the warm-up
steps, and the completed trials once per trial (again after `REFRESH_SECONDS` in a long trial, so that
trials other workers finish meanwhile count).
"""

from __future__ import annotations

import math
import time

import optuna
from optuna.trial import FrozenTrial, TrialState

REFRESH_SECONDS = 30.0
KEPT_TRIALS = 64  # the trials whose read is kept (more than run at once in one process)


class MedianPruner(optuna.pruners.MedianPruner):
    """Optuna's `MedianPruner` (same arguments, same rule), with the study's completed trials read once per trial
    (or per `refresh_seconds`): the same decisions for one worker; beside others, a trial they complete meanwhile
    counts from the next read."""

    def __init__(
        self,
        n_startup_trials: int = 5,
        n_warmup_steps: int = 0,
        interval_steps: int = 1,
        *,
        n_min_trials: int = 1,
        refresh_seconds: float = REFRESH_SECONDS,
    ):
        super().__init__(n_startup_trials, n_warmup_steps, interval_steps, n_min_trials=n_min_trials)
        self.n_warmup_steps, self.refresh_seconds = n_warmup_steps, refresh_seconds
        self._completed: dict[tuple[int, int], tuple[float, list[FrozenTrial]]] = {}  # (study, trial) -> read

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if trial.last_step is None or trial.last_step < self.n_warmup_steps:
            return False  # the rule never prunes here: no need to read the study
        return super().prune(_CompletedTrials(study, self._completed_for(study, trial)), trial)

    def _completed_for(self, study: optuna.Study, trial: FrozenTrial) -> list[FrozenTrial]:
        key = (study.study_name, trial.number)  # trials running in threads of one process each keep their own
        read_at, completed = self._completed.get(key, (-math.inf, []))
        if time.monotonic() - read_at > self.refresh_seconds:
            completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            self._completed[key] = (time.monotonic(), completed)
            for old in list(self._completed)[:-KEPT_TRIALS]:
                del self._completed[old]
        return completed


class _CompletedTrials:
    """The study as the median rule sees it: its direction, and the completed trials read for this trial."""

    def __init__(self, study: optuna.Study, completed: list[FrozenTrial]):
        self._study, self._completed = study, completed

    @property
    def direction(self) -> optuna.study.StudyDirection:
        return self._study.direction

    def get_trials(self, deepcopy: bool = False, states=None) -> list[FrozenTrial]:
        return self._completed
