"""What a running trial writes to its study, in fewer transactions than Optuna's one commit per call: a few
milliseconds apiece on SQLite, and a small trial makes dozens (benchmarks row 12).

- `set_user_attrs`: several user attributes in one transaction.
- `Reports`: the values reported to the pruner, kept on the trial at once (its own pruning decisions see them)
  and written to the study in one transaction every `flush_seconds` and when the trial ends, before Optuna
  records its state. Nothing else reads a running trial's reports: the median rule compares a trial with the
  *completed* ones. A kill -9 loses at most `flush_seconds` of the running trial's reports; that trial is
  failed anyway.

Both use the RDB storage's own per-row writes inside one session (Optuna is pinned); other storages (journal
file, in-memory) take Optuna's calls one by one.
"""

from __future__ import annotations

import time

import optuna
from optuna.storages._rdb.models import TrialUserAttributeModel
from optuna.storages._rdb.storage import _create_scoped_session

from training.tracking.trial_record import FLUSH_SECONDS  # the reports go as often as the trial's MLflow record


def database(trial: optuna.Trial) -> optuna.storages.RDBStorage | None:
    """The trial's RDB storage (under Optuna's cache of finished trials), or None for any other kind."""
    backend = getattr(trial.storage, "_backend", trial.storage)
    return backend if isinstance(backend, optuna.storages.RDBStorage) else None


def set_user_attrs(trial: optuna.Trial, attrs: dict) -> None:
    """Several user attributes of a running trial in one transaction (one by one where the study is no database)."""
    backend = database(trial)
    if backend is None:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return
    with _create_scoped_session(backend.scoped_session, True) as session:
        for key, value in attrs.items():
            backend._set_trial_attr_without_commit(session, TrialUserAttributeModel, trial._trial_id, key, value)
    trial._cached_frozen_trial.user_attrs.update(attrs)  # what `trial.user_attrs` reads, as set_user_attr keeps it


class Reports:
    """`trial.report` for one trial, written in batches: `report` keeps the value on the trial (what
    `should_prune` reads), `flush` writes what is pending, at least every `flush_seconds`."""

    def __init__(self, trial: optuna.Trial, flush_seconds: float = FLUSH_SECONDS):
        self.trial, self.flush_seconds = trial, flush_seconds
        self._pending: dict[int, float] = {}
        self._written = time.monotonic()

    def report(self, value: float, step: int) -> None:
        reported = self.trial._cached_frozen_trial.intermediate_values
        if step in reported:  # as Optuna: a step is reported once
            return
        reported[step] = self._pending[step] = float(value)
        if time.monotonic() - self._written >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Write the pending reports; what a failed write did not take stays pending."""
        backend, trial_id = database(self.trial), self.trial._trial_id
        if backend is None:
            for step in list(self._pending):
                self.trial.storage.set_trial_intermediate_value(trial_id, step, self._pending.pop(step))
        elif self._pending:
            with _create_scoped_session(backend.scoped_session, True) as session:
                for step, value in self._pending.items():
                    backend._set_trial_intermediate_value_without_commit(session, trial_id, step, value)
            self._pending = {}
        self._written = time.monotonic()
