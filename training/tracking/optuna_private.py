"""Every use of Optuna's private names in this project (and of optuna-dashboard's), in one module.

Nothing else may touch them (`tests/test_optuna_private.py` scans the sources); that test also checks that each
name here still exists, is callable and takes the arguments used here, and fails naming the installed version and
the name that is gone. Optuna is pinned (pyproject.toml); an upgrade is checked there first. Each is needed:

- ids: a storage addresses trials and studies by id, which `Trial`, `FrozenTrial` and `Study` keep private
  (`_trial_id`, `_study_id`, and the study's `_storage`);
- heartbeats: Optuna beats for, and fails the silent trials of, only a storage that is a `BaseHeartbeat`
  (`_heartbeat`), through its `_get_stale_trial_ids` (`Heartbeat` below gives that hook a name of ours);
- speed, what the study's write-behind storage exists for (training/search/study_storage.py): a trial created
  and returned in one transaction (`RDBStorage._create_new_trial`; the public method returns only its id), only
  the study's new and unfinished trials read (`RDBStorage._get_trials`; the public read takes every trial every
  time), and a finished trial in one transaction of bulk statements (the session, the table models,
  `_set_trial_value_without_commit`; the public writes commit a row at a time, querying the trial for each);
- optuna-dashboard's note on a finished trial (its public `save_note` takes only a running `Trial`).
"""

from __future__ import annotations

import abc
import contextlib
import datetime
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
import sqlalchemy
from optuna.distributions import BaseDistribution, distribution_to_json, json_to_distribution
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import FrozenTrial, TrialState

# ids


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    return trial._trial_id


def study_id(study: optuna.Study) -> int:
    return study._study_id


def study_storage(study: optuna.Study) -> optuna.storages.BaseStorage:
    return study._storage


# heartbeats


class Heartbeat(BaseHeartbeat):
    """A storage Optuna gives heartbeats to; its hook for silent trials under a public name."""

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return self.stale_trial_ids(study_id)

    @abc.abstractmethod
    def stale_trial_ids(self, study_id: int) -> list[int]:
        """The study's running trials whose heartbeat is older than the grace period."""


def stale_trial_ids(backend: optuna.storages.RDBStorage, study_id: int) -> list[int]:
    return backend._get_stale_trial_ids(study_id)


# reads and the trial's creation


def create_trial(backend: optuna.storages.RDBStorage, study_id: int, template_trial: FrozenTrial | None) -> FrozenTrial:
    return backend._create_new_trial(study_id, template_trial)


def read_trials(
    backend: optuna.storages.RDBStorage, study_id: int, unfinished_ids: set[int], after_id: int
) -> list[FrozenTrial]:
    """The study's trials with ids in `unfinished_ids` or above `after_id`."""
    return backend._get_trials(study_id, states=None, included_trial_ids=unfinished_ids, trial_id_greater_than=after_id)


# a running trial's writes in one transaction


@dataclass(frozen=True, eq=False)
class Table:
    """One of the tables of a trial's rows, and the column that tells one of a trial's rows from another."""

    model: Any
    key: Any

    def replace(self, session, trial_id: int, rows: list[dict]) -> None:
        """One delete of the rows `rows` replace, one multi-row insert."""
        keys = [row[self.key.key] for row in rows]
        replaced = sqlalchemy.delete(self.model).where(self.model.trial_id == trial_id, self.key.in_(keys))
        session.execute(replaced.execution_options(synchronize_session=False))
        session.execute(sqlalchemy.insert(self.model), [{"trial_id": trial_id, **row} for row in rows])


PARAMS = Table(models.TrialParamModel, models.TrialParamModel.param_name)
REPORTS = Table(models.TrialIntermediateValueModel, models.TrialIntermediateValueModel.step)
USER_ATTRS = Table(models.TrialUserAttributeModel, models.TrialUserAttributeModel.key)
SYSTEM_ATTRS = Table(models.TrialSystemAttributeModel, models.TrialSystemAttributeModel.key)


def param_row(name: str, internal_value: float, distribution: BaseDistribution) -> dict:
    return {"param_name": name, "param_value": internal_value, "distribution_json": distribution_to_json(distribution)}


def report_row(step: int, value: float) -> dict:
    stored, value_type = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(value)
    return {"step": step, "intermediate_value": stored, "intermediate_value_type": value_type}


def attr_row(key: str, value: Any) -> dict:
    return {"key": key, "value_json": json.dumps(value)}


@contextlib.contextmanager
def transaction(backend: optuna.storages.RDBStorage) -> Iterator[Any]:
    """A session committed at the end, rolled back on an error (raised as Optuna's `StorageInternalError`)."""
    with _create_scoped_session(backend.scoped_session) as session:
        yield session


def running_trial_row(backend: optuna.storages.RDBStorage, session, trial_id: int) -> Any:
    """The trial's row, locked (no other worker's write between this check and the commit); raises if it is no
    longer running."""
    row = models.TrialModel.find_or_raise_by_id(trial_id, session, for_update=True)
    backend.check_trial_is_updatable(trial_id, row.state)
    return row


def finish_row(
    backend: optuna.storages.RDBStorage,
    session,
    row: Any,
    state: TrialState,
    values: Sequence[float] | None,
    when: datetime.datetime,
) -> None:
    for objective, value in enumerate(values or []):
        backend._set_trial_value_without_commit(session, row, objective, value)
    row.state, row.datetime_complete = state, when


def study_distribution(session, trial_row: Any, name: str) -> BaseDistribution | None:
    """The distribution the trial's study's trials drew `name` from, if any did."""
    of_study = trial_row.study_id
    stored = (
        session.query(models.TrialParamModel.distribution_json)
        .join(models.TrialModel)
        .filter(models.TrialModel.study_id == of_study, models.TrialParamModel.param_name == name)
        .first()
    )
    return None if stored is None else json_to_distribution(stored[0])


# optuna-dashboard


def save_dashboard_note(study: optuna.Study, body: str, trial: FrozenTrial | None = None) -> None:
    """optuna-dashboard's note on the study, or on one of its trials (finished ones too); nothing without it."""
    try:
        from optuna_dashboard._note import note_ver_key, save_note_with_version
    except ImportError:  # the dashboard is optional for tuning
        return
    storage, study_key = study_storage(study), study_id(study)
    trial_key = trial_id(trial) if trial is not None else None
    version = storage.get_study_system_attrs(study_key).get(note_ver_key(trial_key), 0) + 1
    save_note_with_version(storage, study_key, trial_key, version, body)
