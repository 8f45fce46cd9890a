"""An Optuna storage over `optuna.storages.RDBStorage` that reads the study sparingly: the study's trials cached, a
finished one never read again, and a read of the study reused for `READ_REUSE_SECONDS`.

It is a public `optuna.storages.BaseStorage` delegating to the database; the few private calls it needs (a trial
created and returned in one transaction, only the new and unfinished trials read, the heartbeat hook) are in
`training/tracking/optuna_private.py`. `study_storage.py` builds the write-behind of running trials on it.

The sampler, the pruner and `ask` each read the study, several times a trial: a read this recent is reused (this
process's own trials are in the cache as they change), so other workers' trials reach this process's constant liar
and pruner at most that much later. Silent workers' trials are looked for once a heartbeat interval (Optuna looks
before every trial it starts, a query each time); a trial needs that long to go silent anyway.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from training.tracking import optuna_private
from training.tracking.optuna_private import Heartbeat

READ_REUSE_SECONDS = 0.25


@dataclass
class CachedStudy:
    """What is known here of one study: its trials by number as last read, and what to read again."""

    trials: dict[int, FrozenTrial] = field(default_factory=dict)
    unfinished_ids: set[int] = field(default_factory=set)  # read again each time
    last_finished_id: int = -1  # and every trial above it
    read_at: float = -math.inf
    stale_checked_at: float = -math.inf
    distributions: dict[str, BaseDistribution] = field(default_factory=dict)  # drawn here, or checked
    directions: list[StudyDirection] | None = None
    name: str | None = None


class StudyCache(optuna.storages.BaseStorage, Heartbeat):
    """`backend` with the study's trials cached and its reads reused."""

    def __init__(self, backend: optuna.storages.RDBStorage):
        self._backend = backend
        self._lock = threading.Lock()
        self._studies: dict[int, CachedStudy] = {}
        self._places: dict[int, tuple[int, int]] = {}  # trial id -> (study id, number), trials read or created here
        self._ids: dict[tuple[int, int], int] = {}  # the other way round

    def _study(self, study_id: int) -> CachedStudy:
        return self._studies.setdefault(study_id, CachedStudy())

    def _add(self, study_id: int, trial: FrozenTrial) -> None:
        """`trial` in the cache (the lock held)."""
        trial_id = optuna_private.trial_id(trial)
        self._places[trial_id] = (study_id, trial.number)
        self._ids[(study_id, trial.number)] = trial_id
        self._study(study_id).trials[trial.number] = self._newer_here(trial_id, trial)

    def _newer_here(self, trial_id: int, read: FrozenTrial) -> FrozenTrial:
        """The copy of a trial to keep in place of `read`: a subclass's own, if newer."""
        return read

    def forget_reads(self) -> None:
        """The next read of any study goes to the database (it has changed in ways the cache does not know)."""
        with self._lock:
            for study in self._studies.values():
                study.read_at = -math.inf

    # studies

    def create_new_study(self, directions: Sequence[StudyDirection], study_name: str | None = None) -> int:
        study_id = self._backend.create_new_study(directions=directions, study_name=study_name)
        with self._lock:
            self._studies[study_id] = CachedStudy(directions=list(directions), name=study_name)
        return study_id

    def delete_study(self, study_id: int) -> None:
        with self._lock:
            for trial_id, (of_study, number) in list(self._places.items()):
                if of_study == study_id:
                    del self._places[trial_id], self._ids[(of_study, number)]
            self._studies.pop(study_id, None)
        self._backend.delete_study(study_id)

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self._backend.set_study_user_attr(study_id, key, value)

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self._backend.set_study_system_attr(study_id, key, value)

    def get_study_id_from_name(self, study_name: str) -> int:
        return self._backend.get_study_id_from_name(study_name)

    def get_study_name_from_id(self, study_id: int) -> str:
        return self._remembered(study_id, "name", self._backend.get_study_name_from_id)

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        return self._remembered(study_id, "directions", self._backend.get_study_directions)

    def _remembered(self, study_id: int, what: str, read: Callable[[int], Any]) -> Any:
        """What never changes of a study (its name, its directions): read from the database once."""
        with self._lock:
            known = getattr(self._study(study_id), what)
        if known is None:
            known = read(study_id)
            with self._lock:
                setattr(self._study(study_id), what, known)
        return known

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self._backend.get_study_user_attrs(study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self._backend.get_study_system_attrs(study_id)

    def get_all_studies(self) -> list[optuna.study.FrozenStudy]:
        return self._backend.get_all_studies()

    # trials

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        trial = optuna_private.create_trial(self._backend, study_id, template_trial)
        with self._lock:
            self._add(study_id, trial)
        return optuna_private.trial_id(trial)

    def set_trial_param(
        self, trial_id: int, param_name: str, param_value_internal: float, distribution: BaseDistribution
    ) -> None:
        self._backend.set_trial_param(trial_id, param_name, param_value_internal, distribution)

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        with self._lock:
            trial_id = self._ids.get((study_id, trial_number))
        if trial_id is None:
            return self._backend.get_trial_id_from_study_id_trial_number(study_id, trial_number)
        return trial_id

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        return self._backend.set_trial_state_values(trial_id, state=state, values=values)

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        self._backend.set_trial_intermediate_value(trial_id, step, intermediate_value)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._backend.set_trial_user_attr(trial_id, key=key, value=value)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._backend.set_trial_system_attr(trial_id, key=key, value=value)

    def get_trial(self, trial_id: int) -> FrozenTrial:
        """A finished trial from the cache (it no longer changes), any other from the database."""
        with self._lock:
            place = self._places.get(trial_id)
            trial = None if place is None else self._studies[place[0]].trials[place[1]]
        if trial is not None and trial.state.is_finished():
            return trial
        return self._backend.get_trial(trial_id)

    def get_all_trials(
        self, study_id: int, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        self._read(study_id)
        with self._lock:
            trials = self._study(study_id).trials.values()
            trials = sorted((t for t in trials if states is None or t.state in states), key=lambda t: t.number)
        return copy.deepcopy(trials) if deepcopy else trials

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        """The best of the trials the database holds now (a conclusion decides on it), not of a reused read."""
        self._read(study_id, reuse=False)
        return super().get_best_trial(study_id)

    def _read(self, study_id: int, reuse: bool = True) -> None:
        """The study's new and unfinished trials from the database, unless it was read less than
        `READ_REUSE_SECONDS` ago (and `reuse`)."""
        with self._lock:
            study, now = self._study(study_id), time.monotonic()
            if reuse and now - study.read_at < READ_REUSE_SECONDS:
                return
            read = optuna_private.read_trials(self._backend, study_id, study.unfinished_ids, study.last_finished_id)
            for trial in read:
                self._add(study_id, trial)
                trial_id = optuna_private.trial_id(trial)
                if trial.state.is_finished():
                    study.unfinished_ids.discard(trial_id)
                    study.last_finished_id = max(study.last_finished_id, trial_id)
                else:
                    study.unfinished_ids.add(trial_id)
            study.read_at = now

    # heartbeats

    def record_heartbeat(self, trial_id: int) -> None:
        self._backend.record_heartbeat(trial_id)

    def stale_trial_ids(self, study_id: int) -> list[int]:
        now, interval = time.monotonic(), self.get_heartbeat_interval() or 0
        with self._lock:
            study = self._study(study_id)
            if now - study.stale_checked_at < interval:
                return []
            study.stale_checked_at = now
        return optuna_private.stale_trial_ids(self._backend, study_id)

    def get_heartbeat_interval(self) -> int | None:
        return self._backend.get_heartbeat_interval()

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self._backend.get_heartbeat_stale_trial_callback()
