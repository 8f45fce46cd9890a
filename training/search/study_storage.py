"""The study's storage as this process's trials write it: Optuna's cache of finished trials, plus a write-behind
for the trials this process is running.

Optuna writes a running trial's every parameter, attribute and pruner report with a transaction of its own, and
reads the trial back from the database whenever the trial or its pruner looks at it: a few dozen round trips for a
trial that trains in a tenth of a second (benchmarks row 12). Here a trial this process runs is kept in memory:
what it writes is applied to that copy at once (the trial, its sampler and pruner read it from there) and goes
to the database in one transaction

- when the trial's setup is done (`flush_trial`: the objective calls it once its parameters are drawn, so that
  other workers' samplers see what this trial is trying: the constant liar keeps them apart),
- at least every `flush_seconds` after a write, and
- before the trial's state is written, so a finished trial is in the database whole.

Other workers see a running trial's reports and attributes at most `flush_seconds` late; nothing reads them before
the trial ends (the median rule compares a trial with *completed* ones). A kill -9 loses at most `flush_seconds`
of the running trial's writes, and that trial is failed anyway (its heartbeat stops). A write the database refuses
(the trial was failed meanwhile by another worker, which found it silent) raises at the flush, as Optuna's own
write would have at its call. Optuna is pinned: this relies on the RDB storage's per-row `_without_commit` writes.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from dataclasses import dataclass, field

import optuna
from optuna.distributions import BaseDistribution, check_distribution_compatibility
from optuna.storages._cached_storage import _CachedStorage
from optuna.storages._rdb.models import TrialSystemAttributeModel, TrialUserAttributeModel
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import FrozenTrial, TrialState

from training.tracking.trial_record import FLUSH_SECONDS  # a trial's writes go as often as its MLflow record's

JUST_BEATEN_SECONDS = 1.0


@dataclass
class _Running:
    """A trial this process runs: its current state, and the writes the database has not had yet."""

    study_id: int
    trial: FrozenTrial
    writes: list[tuple] = field(default_factory=list)
    written_at: float = field(default_factory=time.monotonic)
    beaten_at: float = -math.inf
    lock: threading.Lock = field(default_factory=threading.Lock)


class StudyStorage(_CachedStorage):
    """`optuna.storages.RDBStorage` under Optuna's cache, with this process's running trials written behind."""

    def __init__(self, backend: optuna.storages.RDBStorage, flush_seconds: float = FLUSH_SECONDS):
        super().__init__(backend)
        self.flush_seconds = flush_seconds
        self._running: dict[int, _Running] = {}  # trial id -> a trial this process runs

    # trials becoming this process's

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        trial_id = super().create_new_trial(study_id, template_trial)
        with self._lock:
            number = self._trial_id_to_study_id_and_number[trial_id][1]
            trial = self._studies[study_id].trials[number]
        if trial.state == TrialState.RUNNING:
            self._start(trial_id, _Running(study_id, copy.deepcopy(trial)))
        return trial_id

    def set_trial_state_values(self, trial_id: int, state: TrialState, values=None) -> bool:
        if trial_id in self._running:
            try:
                self.flush(trial_id)  # its parameters, attributes and reports before its state
                return super().set_trial_state_values(trial_id, state, values)
            finally:
                if state.is_finished():  # from now on read as a finished trial, once, from the database
                    self._running.pop(trial_id, None)
        taken = super().set_trial_state_values(trial_id, state, values)
        if taken and state == TrialState.RUNNING:  # a waiting (enqueued) trial this process took
            with self._lock:
                study_id = self._trial_id_to_study_id_and_number[trial_id][0]
            self._start(trial_id, _Running(study_id, self._backend.get_trial(trial_id)))
        return taken

    def _start(self, trial_id: int, running: _Running) -> None:
        """Keep a trial this process now runs, and give it a heartbeat at once: Optuna's heartbeat thread starts
        only after the trial is asked for, and a trial with no heartbeat is never found stale, so a worker killed
        in between would leave it RUNNING for ever."""
        self._running[trial_id] = running
        if self.get_heartbeat_interval() is not None:
            self._backend.record_heartbeat(trial_id)
            running.beaten_at = time.monotonic()

    def record_heartbeat(self, trial_id: int) -> None:
        running = self._running.get(trial_id)
        if running is not None and time.monotonic() - running.beaten_at < JUST_BEATEN_SECONDS:
            return  # the heartbeat thread's first beat, just after the one `_start` gave
        super().record_heartbeat(trial_id)

    # reads: a running trial of this process from memory

    def get_trial(self, trial_id: int) -> FrozenTrial:
        running = self._running.get(trial_id)
        if running is None:
            return super().get_trial(trial_id)
        with running.lock:
            return copy.deepcopy(running.trial)

    def _read_trials_from_remote_storage(self, study_id: int) -> None:
        super()._read_trials_from_remote_storage(study_id)
        with self._lock:
            trials = self._studies[study_id].trials
            for running in list(self._running.values()):
                if running.study_id == study_id:  # newer here than in the database
                    trials[running.trial.number] = running.trial

    # writes: a running trial of this process kept, then written in one transaction

    def set_trial_param(
        self, trial_id: int, param_name: str, param_value_internal: float, distribution: BaseDistribution
    ) -> None:
        running = self._running.get(trial_id)
        if running is None:
            return super().set_trial_param(trial_id, param_name, param_value_internal, distribution)
        with self._lock:
            study_id = self._trial_id_to_study_id_and_number[trial_id][0]
            study = self._studies[study_id]
            previous = study.param_distribution.get(param_name) or next(
                (t.distributions[param_name] for t in study.trials.values() if param_name in t.distributions), None
            )
            if previous is not None:
                check_distribution_compatibility(previous, distribution)  # raises now, as Optuna's write would
            study.param_distribution.setdefault(param_name, previous or distribution)
        with running.lock:
            running.trial.params[param_name] = distribution.to_external_repr(param_value_internal)
            running.trial.distributions[param_name] = distribution
            running.writes.append(("param", param_name, param_value_internal, distribution, previous))
        self._flush_if_due(trial_id, running)

    def set_trial_user_attr(self, trial_id: int, key: str, value) -> None:
        running = self._running.get(trial_id)
        if running is None:
            return super().set_trial_user_attr(trial_id, key, value)
        with running.lock:
            running.trial.user_attrs[key] = value
            running.writes.append(("user", key, value))
        self._flush_if_due(trial_id, running)

    def set_trial_system_attr(self, trial_id: int, key: str, value) -> None:
        running = self._running.get(trial_id)
        if running is None:
            return super().set_trial_system_attr(trial_id, key, value)
        with running.lock:
            running.trial.system_attrs[key] = value
            running.writes.append(("system", key, value))
        self._flush_if_due(trial_id, running)

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        running = self._running.get(trial_id)
        if running is None:
            return super().set_trial_intermediate_value(trial_id, step, intermediate_value)
        with running.lock:
            running.trial.intermediate_values[step] = intermediate_value
            running.writes.append(("report", step, intermediate_value))
        self._flush_if_due(trial_id, running)

    def flush(self, trial_id: int) -> None:
        """Write what a running trial of this process has kept, in one transaction; what a failed write did not
        take stays kept (and the error is raised)."""
        running = self._running.get(trial_id)
        if running is None:
            return
        backend = self._backend
        with running.lock:
            if running.writes:
                with _create_scoped_session(backend.scoped_session, True) as session:
                    for kind, *args in running.writes:
                        if kind == "param":
                            backend._set_trial_param_without_commit(session, trial_id, *args)
                        elif kind == "report":
                            backend._set_trial_intermediate_value_without_commit(session, trial_id, *args)
                        else:
                            model = TrialUserAttributeModel if kind == "user" else TrialSystemAttributeModel
                            backend._set_trial_attr_without_commit(session, model, trial_id, *args)
                running.writes = []
            running.written_at = time.monotonic()

    def _flush_if_due(self, trial_id: int, running: _Running) -> None:
        if time.monotonic() - running.written_at >= self.flush_seconds:
            self.flush(trial_id)


def flush_trial(trial: optuna.Trial) -> None:
    """Write what `trial` has kept so far (its parameters, once drawn), where its study writes behind."""
    if isinstance(trial.storage, StudyStorage):
        trial.storage.flush(trial._trial_id)
