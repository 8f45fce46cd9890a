"""The study's storage as this process's trials write it: the study cached (study_cache.py), plus a write-behind
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

The writes are small frozen classes (`SetParam`, `Report`, `SetUserAttr`, `SetSystemAttr`: trial_writes.py), each
changing the kept trial and writing its row; the transaction checks the trial once and writes each table's rows
with one delete and one multi-row insert (`write_kept`); Optuna's own writes query the trial and the row again for
every value. Under it, `StudyCache` (study_cache.py) reads the study from the database at most every
`READ_REUSE_SECONDS` (a quarter of a second): the sampler, the pruner and `ask` each read it, several times a trial.
A trial this process finishes is in the cache finished at once.

Other workers see a running trial's reports and attributes that much later; nothing reads them before the trial
ends (the median rule compares a trial with *completed* ones). A kill -9 loses what the running trial kept since
its last write, and that trial is failed anyway (its heartbeat stops). A value that cannot be stored (an attribute
that is not JSON, a parameter drawn from another distribution than the study's) is refused when it is set, as
Optuna refuses it; a write the database refuses (the trial was failed meanwhile by another worker, which found it
silent) raises at the flush, as Optuna's own write would have at its call.

The kept trial is replaced, never changed in place (copy on write): a trial read from the cache, by this thread or
another (`n_jobs` > 1), stays as it was read. This is a public `optuna.storages.BaseStorage` over the public
`RDBStorage`; the one transaction per trial needs Optuna's table models and session, which only
training/tracking/optuna_private.py touches (its test names the Optuna version that broke one).

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
from collections.abc import Sequence
from dataclasses import dataclass, field

import optuna
from optuna.distributions import BaseDistribution, check_distribution_compatibility
from optuna.trial import FrozenTrial, TrialState

from training.search.study_cache import READ_REUSE_SECONDS, StudyCache
from training.search.trial_writes import Report, SetParam, SetSystemAttr, SetUserAttr, Write, applied, write_kept
from training.tracking import optuna_private
from training.tracking.trial_record import FLUSH_SECONDS  # a trial's writes go as often as its MLflow record's

__all__ = ["READ_REUSE_SECONDS", "StudyStorage", "flush_trial", "write_kept"]

JUST_BEATEN_SECONDS = 1.0


@dataclass
class _Running:
    """A trial this process runs: its current state, and the writes the database has not had yet."""

    study_id: int
    trial: FrozenTrial
    writes: list[Write] = field(default_factory=list)
    written_at: float = field(default_factory=time.monotonic)
    beaten_at: float = -math.inf
    lock: threading.Lock = field(default_factory=threading.Lock)


class StudyStorage(StudyCache):
    """`optuna.storages.RDBStorage`, its study cached, with this process's running trials written behind."""

    def __init__(self, backend: optuna.storages.RDBStorage, flush_seconds: float = FLUSH_SECONDS):
        super().__init__(backend)
        self.flush_seconds = flush_seconds
        self._running: dict[int, _Running] = {}  # trial id -> a trial this process runs

    # trials becoming this process's, and leaving it

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        trial_id = super().create_new_trial(study_id, template_trial)
        with self._lock:
            trial = self._studies[study_id].trials[self._places[trial_id][1]]
        if trial.state == TrialState.RUNNING:
            self._start(trial_id, _Running(study_id, copy.deepcopy(trial)))
        return trial_id

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        try:
            return self._set_state(trial_id, state, values)
        except BaseException:
            self.forget_reads()  # whatever the database now holds: the next read goes to it
            raise

    def _set_state(self, trial_id: int, state: TrialState, values: Sequence[float] | None) -> bool:
        if trial_id not in self._running:
            taken = super().set_trial_state_values(trial_id, state, values)
            self.forget_reads()  # a trial of another worker, or a waiting one: read again
            if taken and state == TrialState.RUNNING:  # a waiting (enqueued) trial this process took
                with self._lock:
                    study_id = self._places[trial_id][0]
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

    def _finish(
        self, trial_id: int, running: _Running, state: TrialState, values: Sequence[float] | None
    ) -> datetime.datetime:
        """What the trial kept, its values and its state, in one transaction: the database has it whole or not.
        Returns when it finished."""
        finished = datetime.datetime.now()
        with running.lock, optuna_private.transaction(self._backend) as session:
            row = write_kept(self._backend, session, trial_id, running.writes)
            optuna_private.finish_row(self._backend, session, row, state, values, finished)
        running.writes = []
        return finished

    def _keep_finished(
        self, running: _Running, state: TrialState, values: Sequence[float] | None, finished: datetime.datetime
    ) -> None:
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

    def _newer_here(self, trial_id: int, read: FrozenTrial) -> FrozenTrial:
        running = self._running.get(trial_id)
        if running is not None and not read.state.is_finished():
            return running.trial  # newer here than in the database
        return read  # finished there (another worker failed it as silent): the database's; the next write raises

    # writes: a running trial of this process kept, then written in one transaction

    def set_trial_param(
        self, trial_id: int, param_name: str, param_value_internal: float, distribution: BaseDistribution
    ) -> None:
        running = self._running.get(trial_id)
        if running is None:
            return super().set_trial_param(trial_id, param_name, param_value_internal, distribution)
        with self._lock:
            study = self._studies[running.study_id]
            previous = study.distributions.get(param_name) or next(
                (t.distributions[param_name] for t in study.trials.values() if param_name in t.distributions), None
            )
            if previous is not None:
                check_distribution_compatibility(previous, distribution)  # raises now, as Optuna's write would
            study.distributions.setdefault(param_name, previous or distribution)
        self._keep(trial_id, running, SetParam(param_name, param_value_internal, distribution, previous is not None))

    def set_trial_user_attr(self, trial_id: int, key: str, value) -> None:
        running = self._running.get(trial_id)
        if running is None:
            return super().set_trial_user_attr(trial_id, key, value)
        json.dumps(value)  # not JSON: refused now, as the database write would
        self._keep(trial_id, running, SetUserAttr(key, value))

    def set_trial_system_attr(self, trial_id: int, key: str, value) -> None:
        running = self._running.get(trial_id)
        if running is None:
            return super().set_trial_system_attr(trial_id, key, value)
        json.dumps(value)
        self._keep(trial_id, running, SetSystemAttr(key, value))

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        running = self._running.get(trial_id)
        if running is None:
            return super().set_trial_intermediate_value(trial_id, step, intermediate_value)
        self._keep(trial_id, running, Report(step, intermediate_value))

    def _keep(self, trial_id: int, running: _Running, write: Write) -> None:
        """A new copy of the kept trial with `write` in it, in place of the old one (here and in the cache), and
        `write` to do; the writes kept so far go if they are due."""
        with running.lock:
            trial = running.trial = applied(running.trial, write)
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
                with optuna_private.transaction(self._backend) as session:
                    write_kept(self._backend, session, trial_id, running.writes)
                running.writes = []
            running.written_at = time.monotonic()

    def _flush_if_due(self, trial_id: int, running: _Running) -> None:
        if time.monotonic() - running.written_at >= self.flush_seconds:
            self.flush(trial_id)


def flush_trial(trial: optuna.Trial) -> None:
    """Write what `trial` has kept so far (its parameters, once drawn), where its study writes behind."""
    if isinstance(trial.storage, StudyStorage):
        trial.storage.flush(optuna_private.trial_id(trial))
