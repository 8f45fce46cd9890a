"""The study's storage as this process's trials write it: Optuna's cache of finished trials, plus a write-behind
for the trials this process is running.

Optuna writes a running trial's every parameter, attribute and pruner report with a transaction of its own, and
reads the trial back from the database whenever the trial or its pruner looks at it: a few dozen round trips for a
trial that trains in a tenth of a second (benchmarks row 12). Here a trial this process runs is kept in memory:
what it writes is applied to that copy at once (the trial, its sampler and pruner read it from there) and goes
to the database in one transaction

- when the trial's setup is done (`flush_trial`: the objective calls it once its parameters are drawn, so that
  other workers' samplers see what this trial is trying: the constant liar keeps them apart),
- with its next write once `flush_seconds` have passed since the last, and at its heartbeat (every 30 s by
  default) while it writes nothing, and
- with the trial's state, in the same transaction, so a finished trial is in the database whole. If that last
  write fails, the trial is failed (as far as the database lets) and the error raised.

The transaction checks the trial once and writes each table's rows with one delete and one multi-row insert
(`write_kept`); Optuna's own writes query the trial and the row again for every value. And the study is read
from the database at most every `READ_REUSE_SECONDS` (a quarter of a second): the sampler, the pruner and `ask`
each read it, several times a trial. A trial this process finishes is in the cache finished at once.

Other workers see a running trial's reports and attributes that much later; nothing reads them before the trial
ends (the median rule compares a trial with *completed* ones). A kill -9 loses what the running trial kept since
its last write, and that trial is failed anyway (its heartbeat stops). A value that cannot be stored (an attribute
that is not JSON, a parameter drawn from another distribution than the study's) is refused when it is set, as
Optuna refuses it; a write the database refuses (the trial was failed meanwhile by another worker, which found it
silent) raises at the flush, as Optuna's own write would have at its call.

The kept trial is replaced, never changed in place (copy on write): a trial read from the cache, by this thread or
another (`n_jobs` > 1), stays as it was read. Optuna is pinned: this relies on its cache's internals and on the
RDB storage's per-row `_without_commit` writes.

A trial asked for outside `study.optimize` (ask and tell) gets the same first heartbeat but no heartbeat thread:
with heartbeats on, other workers fail it once the grace period passes, as they would any silent trial.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
import math
import threading
import time
from dataclasses import dataclass, field

import optuna
import sqlalchemy
from optuna.distributions import (
    BaseDistribution,
    check_distribution_compatibility,
    distribution_to_json,
    json_to_distribution,
)
from optuna.storages._cached_storage import _CachedStorage
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import FrozenTrial, TrialState

from training.tracking.trial_record import FLUSH_SECONDS  # a trial's writes go as often as its MLflow record's

JUST_BEATEN_SECONDS = 1.0
# The sampler, the pruner and `ask` each read the study, several times a trial: a read this recent is reused
# (this process's own trials are in the cache as they change). Other workers' trials reach this process's
# constant liar and pruner at most this much later.
READ_REUSE_SECONDS = 0.25


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
        self._read_at: dict[int, float] = {}  # study id -> when it was last read from the database
        self._stale_checked_at: dict[int, float] = {}  # study id -> when silent trials were last looked for

    # trials becoming this process's, and leaving it

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        trial_id = super().create_new_trial(study_id, template_trial)
        with self._lock:
            number = self._trial_id_to_study_id_and_number[trial_id][1]
            trial = self._studies[study_id].trials[number]
        if trial.state == TrialState.RUNNING:
            self._start(trial_id, _Running(study_id, copy.deepcopy(trial)))
        return trial_id

    def set_trial_state_values(self, trial_id: int, state: TrialState, values=None) -> bool:
        try:
            return self._set_state(trial_id, state, values)
        except BaseException:
            self._read_at.clear()  # whatever the database now holds: the next read goes to it
            raise

    def _set_state(self, trial_id: int, state: TrialState, values) -> bool:
        if trial_id not in self._running:
            taken = super().set_trial_state_values(trial_id, state, values)
            self._read_at.clear()  # a trial of another worker, or a waiting one: read again
            if taken and state == TrialState.RUNNING:  # a waiting (enqueued) trial this process took
                with self._lock:
                    study_id = self._trial_id_to_study_id_and_number[trial_id][0]
                self._start(trial_id, _Running(study_id, self._backend.get_trial(trial_id)))
            return taken
        running = self._running[trial_id]
        if not state.is_finished():  # (Optuna only finishes a running trial)
            return super().set_trial_state_values(trial_id, state, values)
        try:
            try:
                finished = self._finish(trial_id, running, state, values)
            except Exception:  # not in the database whole: failed, rather than left RUNNING
                with contextlib.suppress(Exception):
                    super().set_trial_state_values(trial_id, TrialState.FAIL)
                raise
            self._keep_finished(running, state, values, finished)
            return True
        finally:  # from now on read as a finished trial, once more from the database
            self._running.pop(trial_id, None)

    def _finish(self, trial_id: int, running: _Running, state: TrialState, values) -> datetime.datetime:
        """What the trial kept, its values and its state, in one transaction: the database has it whole or not.
        Returns when it finished."""
        backend, finished = self._backend, datetime.datetime.now()
        with running.lock, _create_scoped_session(backend.scoped_session) as session:
            trial = write_kept(backend, session, trial_id, running.writes)
            for objective, value in enumerate(values or []):
                backend._set_trial_value_without_commit(session, trial, objective, value)
            trial.state, trial.datetime_complete = state, finished
        running.writes = []
        return finished

    def _keep_finished(self, running: _Running, state: TrialState, values, finished: datetime.datetime) -> None:
        """The trial as the database now holds it, in the cache: the sampler and pruner see it finished without
        a read (the next read brings the database's own copy)."""
        trial = copy.copy(running.trial)
        trial.state, trial.values, trial.datetime_complete = state, values, finished
        with self._lock:
            self._studies[running.study_id].trials[trial.number] = trial

    def _start(self, trial_id: int, running: _Running) -> None:
        """Keep a trial this process now runs, and give it a heartbeat at once: Optuna's heartbeat thread starts
        only after the trial is asked for, and a trial with no heartbeat is never found stale, so a worker killed
        in between would leave it RUNNING for ever."""
        self._running[trial_id] = running
        if self.get_heartbeat_interval() is not None:
            self._backend.record_heartbeat(trial_id)
            running.beaten_at = time.monotonic()

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """Optuna looks for silent trials before every trial it starts (a query each time); here at most once a
        heartbeat interval, which a trial needs to go silent anyway (the grace period is longer)."""
        now, interval = time.monotonic(), self.get_heartbeat_interval() or 0
        if now - self._stale_checked_at.get(study_id, -math.inf) < interval:
            return []
        self._stale_checked_at[study_id] = now
        return super()._get_stale_trial_ids(study_id)

    def record_heartbeat(self, trial_id: int) -> None:
        running = self._running.get(trial_id)
        if running is not None:
            with contextlib.suppress(Exception):  # the trial's own next write, or its end, raises what failed
                self._flush_if_due(trial_id, running)  # a quiet trial's kept writes, at its heartbeat
            if time.monotonic() - running.beaten_at < JUST_BEATEN_SECONDS:
                return  # the heartbeat thread's first beat, just after the one `_start` gave
        super().record_heartbeat(trial_id)

    # reads: a running trial of this process from memory

    def get_trial(self, trial_id: int) -> FrozenTrial:
        running = self._running.get(trial_id)
        if running is None:
            return super().get_trial(trial_id)
        return copy.deepcopy(running.trial)

    def _read_trials_from_remote_storage(self, study_id: int) -> None:
        now = time.monotonic()
        if now - self._read_at.get(study_id, -math.inf) < READ_REUSE_SECONDS:
            return
        super()._read_trials_from_remote_storage(study_id)
        self._read_at[study_id] = now
        with self._lock:
            trials = self._studies[study_id].trials
            for running in list(self._running.values()):
                read = trials.get(running.trial.number)
                if running.study_id == study_id and read is not None and not read.state.is_finished():
                    trials[running.trial.number] = running.trial  # newer here than in the database
                # finished there (another worker failed it as silent): the database's, and the next write raises

    # writes: a running trial of this process kept, then written in one transaction

    def set_trial_param(
        self, trial_id: int, param_name: str, param_value_internal: float, distribution: BaseDistribution
    ) -> None:
        running = self._running.get(trial_id)
        if running is None:
            return super().set_trial_param(trial_id, param_name, param_value_internal, distribution)
        with self._lock:
            study = self._studies[running.study_id]
            previous = study.param_distribution.get(param_name) or next(
                (t.distributions[param_name] for t in study.trials.values() if param_name in t.distributions), None
            )
            if previous is not None:
                check_distribution_compatibility(previous, distribution)  # raises now, as Optuna's write would
            study.param_distribution.setdefault(param_name, previous or distribution)
        value = distribution.to_external_repr(param_value_internal)
        write = ("param", param_name, param_value_internal, distribution, previous)
        self._keep(trial_id, running, write, params=(param_name, value), distributions=(param_name, distribution))

    def set_trial_user_attr(self, trial_id: int, key: str, value) -> None:
        running = self._running.get(trial_id)
        if running is None:
            return super().set_trial_user_attr(trial_id, key, value)
        json.dumps(value)  # not JSON: refused now, as the database write would
        self._keep(trial_id, running, ("user", key, value), user_attrs=(key, value))

    def set_trial_system_attr(self, trial_id: int, key: str, value) -> None:
        running = self._running.get(trial_id)
        if running is None:
            return super().set_trial_system_attr(trial_id, key, value)
        json.dumps(value)
        self._keep(trial_id, running, ("system", key, value), system_attrs=(key, value))

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        running = self._running.get(trial_id)
        if running is None:
            return super().set_trial_intermediate_value(trial_id, step, intermediate_value)
        self._keep(
            trial_id, running, ("report", step, intermediate_value), intermediate_values=(step, intermediate_value)
        )

    def _keep(self, trial_id: int, running: _Running, write: tuple, **entries: tuple) -> None:
        """A new copy of the kept trial with `entries` (field -> (key, value)) set, in place of the old one (here
        and in the cache), and `write` to do; the writes kept so far go if they are due."""
        with running.lock:
            trial = copy.copy(running.trial)
            for name, (key, value) in entries.items():
                setattr(trial, name, {**getattr(trial, name), key: value})
            running.trial = trial
            running.writes.append(write)
        with self._lock:
            trials = self._studies[running.study_id].trials
            cached = trials.get(trial.number)
            if cached is not None and not cached.state.is_finished():
                trials[trial.number] = trial
        self._flush_if_due(trial_id, running)

    def flush(self, trial_id: int) -> None:
        """Write what a running trial of this process has kept, in one transaction; what a failed write did not
        take stays kept (and the error is raised)."""
        running = self._running.get(trial_id)
        if running is None:
            return
        with running.lock:
            if running.writes:
                with _create_scoped_session(self._backend.scoped_session) as session:
                    write_kept(self._backend, session, trial_id, running.writes)
                running.writes = []
            running.written_at = time.monotonic()

    def _flush_if_due(self, trial_id: int, running: _Running) -> None:
        if time.monotonic() - running.written_at >= self.flush_seconds:
            self.flush(trial_id)


# each kind of kept write: its table, and the column that tells one of a trial's rows from another
TABLES = {
    "param": (models.TrialParamModel, models.TrialParamModel.param_name),
    "report": (models.TrialIntermediateValueModel, models.TrialIntermediateValueModel.step),
    "user": (models.TrialUserAttributeModel, models.TrialUserAttributeModel.key),
    "system": (models.TrialSystemAttributeModel, models.TrialSystemAttributeModel.key),
}


def write_kept(backend: optuna.storages.RDBStorage, session, trial_id: int, writes: list[tuple]) -> models.TrialModel:
    """`writes` in `session`: the trial checked once (it must still be running; returned), then per table one
    delete of the rows being replaced and one multi-row insert (the last write of a key wins). Optuna's own
    per-row writes query the trial and the row again for each: ~3 ms a row, a few dozen rows a trial."""
    trial = models.TrialModel.find_or_raise_by_id(trial_id, session, for_update=True)  # no other worker's write
    backend.check_trial_is_updatable(trial_id, trial.state)  # between this check and the commit
    latest = {(kind, key): rest for kind, key, *rest in writes}
    rows: dict[str, list[dict]] = {kind: [] for kind in TABLES}
    for (kind, key), rest in latest.items():
        if kind == "param":
            value, distribution, previous = rest
            if previous is None:  # the first of its name this process saw: as Optuna does, against the study's
                check_study_distribution(session, trial.study_id, key, distribution)
            row = {"param_name": key, "param_value": value, "distribution_json": distribution_to_json(distribution)}
        elif kind == "report":
            stored, value_type = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(rest[0])
            row = {"step": key, "intermediate_value": stored, "intermediate_value_type": value_type}
        else:
            row = {"key": key, "value_json": json.dumps(rest[0])}
        rows[kind].append({"trial_id": trial_id, **row})
    for kind, items in rows.items():
        if items:
            model, column = TABLES[kind]
            keys = [item[column.key] for item in items]
            replaced = sqlalchemy.delete(model).where(model.trial_id == trial_id, column.in_(keys))
            session.execute(replaced.execution_options(synchronize_session=False))
            session.execute(sqlalchemy.insert(model), items)
    return trial


def check_study_distribution(session, study_id: int, name: str, distribution: BaseDistribution) -> None:
    stored = (
        session.query(models.TrialParamModel.distribution_json)
        .join(models.TrialModel)
        .filter(models.TrialModel.study_id == study_id, models.TrialParamModel.param_name == name)
        .first()
    )
    if stored is not None:
        check_distribution_compatibility(json_to_distribution(stored[0]), distribution)


def flush_trial(trial: optuna.Trial) -> None:
    """Write what `trial` has kept so far (its parameters, once drawn), where its study writes behind."""
    if isinstance(trial.storage, StudyStorage):
        trial.storage.flush(trial._trial_id)
