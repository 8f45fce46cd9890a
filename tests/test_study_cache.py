"""The study's cache under the write-behind (training/search/study_cache.py) and the write classes
(training/search/trial_writes.py)."""

import dataclasses

import optuna
import pytest

from training.search.storage import open_storage
from training.search.trial_writes import Report, SetParam, SetSystemAttr, SetUserAttr, applied


def test_the_best_trial_is_of_what_the_database_holds_now_not_of_a_reused_read(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(storage=open_storage(url, heartbeat=60, grace=120), study_name="s")
    study.tell(study.ask(), 1.0)
    study.get_trials()  # a read, reused for a quarter of a second
    other = optuna.load_study(study_name="s", storage=url)  # another worker finishes a better trial meanwhile
    other.tell(other.ask(), 0.5)
    assert study.best_value == 0.5


def test_a_write_is_frozen_and_changes_a_copy_of_the_trial():
    study = optuna.create_study()
    trial = study.ask()
    before = study.trials[0]
    distribution = optuna.distributions.FloatDistribution(0.0, 1.0)
    writes = [SetParam("x", 0.5, distribution, False), Report(0, 1.0), SetUserAttr("u", 1), SetSystemAttr("s", 2)]
    after = before
    for write in writes:
        after = applied(after, write)
    assert after.params == {"x": 0.5} and after.distributions == {"x": distribution}
    assert after.intermediate_values == {0: 1.0} and after.user_attrs == {"u": 1} and after.system_attrs == {"s": 2}
    assert before.params == {} and before.intermediate_values == {} and before.user_attrs == {}  # unchanged
    with pytest.raises(dataclasses.FrozenInstanceError):
        writes[1].value = 2.0
    study.tell(trial, 1.0)
