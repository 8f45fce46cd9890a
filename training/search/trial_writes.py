"""A running trial's writes as the study's write-behind storage keeps them (study_storage.py): one small frozen class
per kind, each knowing how it changes the kept trial and which row of which table it writes; and `write_kept`, all
of a trial's kept writes in one transaction.

Optuna's own writes query the trial and the row again for each value (~3 ms a row, a few dozen rows a trial);
`write_kept` checks the trial once and writes each table's rows with one delete and one multi-row insert.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import optuna
from optuna.distributions import BaseDistribution, check_distribution_compatibility
from optuna.trial import FrozenTrial

from training.tracking import optuna_private
from training.tracking.optuna_private import Table


def _with(trial: FrozenTrial, name: str, key: Any, value: Any) -> dict:
    """`trial`'s dict field `name` with `key` set to `value`, as a new dict."""
    return {**getattr(trial, name), key: value}


@dataclass(frozen=True)
class SetParam:
    """A parameter drawn. `checked`: against a distribution of its name this process knew (else, at the write,
    against the study's in the database, as Optuna checks it)."""

    name: str
    internal_value: float
    distribution: BaseDistribution
    checked: bool
    table: ClassVar[Table] = optuna_private.PARAMS

    @property
    def key(self) -> str:
        return self.name

    def applied(self, trial: FrozenTrial) -> None:
        external = self.distribution.to_external_repr(self.internal_value)
        trial.params = _with(trial, "params", self.name, external)
        trial.distributions = _with(trial, "distributions", self.name, self.distribution)

    def check(self, session, trial_row: Any) -> None:
        stored = None if self.checked else optuna_private.study_distribution(session, trial_row, self.name)
        if stored is not None:
            check_distribution_compatibility(stored, self.distribution)

    def row(self) -> dict:
        return optuna_private.param_row(self.name, self.internal_value, self.distribution)


@dataclass(frozen=True)
class Report:
    """An intermediate value reported to the pruner."""

    step: int
    value: float
    table: ClassVar[Table] = optuna_private.REPORTS

    @property
    def key(self) -> int:
        return self.step

    def applied(self, trial: FrozenTrial) -> None:
        trial.intermediate_values = _with(trial, "intermediate_values", self.step, self.value)

    def check(self, session, trial_row: Any) -> None:
        pass

    def row(self) -> dict:
        return optuna_private.report_row(self.step, self.value)


@dataclass(frozen=True)
class SetUserAttr:
    key: str
    value: Any
    table: ClassVar[Table] = optuna_private.USER_ATTRS
    trial_field: ClassVar[str] = "user_attrs"

    def applied(self, trial: FrozenTrial) -> None:
        setattr(trial, self.trial_field, _with(trial, self.trial_field, self.key, self.value))

    def check(self, session, trial_row: Any) -> None:
        pass

    def row(self) -> dict:
        return optuna_private.attr_row(self.key, self.value)


@dataclass(frozen=True)
class SetSystemAttr(SetUserAttr):
    table: ClassVar[Table] = optuna_private.SYSTEM_ATTRS
    trial_field: ClassVar[str] = "system_attrs"


Write = SetParam | Report | SetUserAttr | SetSystemAttr


def applied(trial: FrozenTrial, write: Write) -> FrozenTrial:
    """A copy of `trial` with `write` in it (the trial itself unchanged: a reader may hold it)."""
    changed = copy.copy(trial)
    write.applied(changed)
    return changed


def write_kept(backend: optuna.storages.RDBStorage, session, trial_id: int, writes: list[Write]) -> Any:
    """`writes` in `session`: the trial checked once (it must still be running; its row returned), then per table
    one delete of the rows being replaced and one multi-row insert (the last write of a key wins)."""
    trial = optuna_private.running_trial_row(backend, session, trial_id)
    latest = {(type(write), write.key): write for write in writes}
    rows: dict[Table, list[dict]] = {}
    for write in latest.values():
        write.check(session, trial)
        rows.setdefault(write.table, []).append(write.row())
    for table, items in rows.items():
        table.replace(session, trial_id, items)
    return trial
