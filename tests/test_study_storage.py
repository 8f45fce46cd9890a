"""The study's write-behind storage (training/search/study_storage.py): a running trial's writes kept on it and
written in one transaction, a finished trial whole, reads of the study reused, and what other workers and a
failing database see."""

import time

import optuna
import pytest
import sqlalchemy

from training.search import pruning, study_storage
from training.search.storage import open_storage
from training.search.study_storage import READ_REUSE_SECONDS, flush_trial

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


@pytest.fixture
def study_and_commits(tmp_path):
    """A study in a SQLite file opened as `tune` opens it, its URL, and the list its database's commits that wrote
    something go to (Optuna's reads commit too)."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(storage=open_storage(url, heartbeat=60, grace=120), study_name="s")
    commits, wrote = [], []
    engine = study._storage._backend.engine

    def on_statement(connection, cursor, statement, *args):
        if statement.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE")):
            wrote.append(1)

    def on_commit(connection):
        if wrote:
            commits.append(len(wrote))
            wrote.clear()

    sqlalchemy.event.listen(engine, "before_cursor_execute", on_statement)
    sqlalchemy.event.listen(engine, "commit", on_commit)
    return study, url, commits


def stored_trials(url: str) -> list[optuna.trial.FrozenTrial]:
    """The study's trials as another worker reads them from the database."""
    return optuna.load_study(study_name="s", storage=url).trials


def stored(url: str) -> optuna.trial.FrozenTrial:
    return stored_trials(url)[0]


def test_a_running_trials_writes_are_kept_on_it_and_go_to_the_study_in_one_commit(study_and_commits):
    study, url, commits = study_and_commits
    trial = study.ask()
    commits.clear()
    lr = trial.suggest_float("lr", 1e-3, 1.0, log=True)
    kind = trial.suggest_categorical("kind", ["a", "b"])
    trial.set_user_attr("worker", "host:1")
    for step in range(5):
        trial.report(1 / (step + 1), step)
    assert not commits  # nothing written yet, and the trial (its pruner too) sees it all
    assert trial.params == {"lr": lr, "kind": kind} and trial.user_attrs == {"worker": "host:1"}
    assert trial._get_latest_trial().intermediate_values == {s: 1 / (s + 1) for s in range(5)}
    assert stored(url).params == {} and stored(url).intermediate_values == {}
    flush_trial(trial)
    assert len(commits) == 1
    theirs = stored(url)
    assert theirs.params == {"lr": lr, "kind": kind} and theirs.user_attrs == {"worker": "host:1"}
    assert theirs.intermediate_values == {s: 1 / (s + 1) for s in range(5)}


def test_a_finished_trial_is_in_the_study_whole(study_and_commits):
    study, url, commits = study_and_commits
    trial = study.ask()
    trial.suggest_int("depth", 1, 4)
    trial.report(0.5, 0)
    trial.report(0.25, 1)
    trial.set_user_attr("refit_epochs", 2)
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)  # a pruned trial's value: its last report
    theirs = stored(url)
    assert theirs.state == optuna.trial.TrialState.PRUNED and theirs.value == 0.25
    assert theirs.params == trial.params and theirs.user_attrs == {"refit_epochs": 2}
    assert theirs.intermediate_values == {0: 0.5, 1: 0.25}


def test_a_long_trial_writes_at_least_every_flush_seconds(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(storage=open_storage(url, heartbeat=60, grace=120), study_name="s")
    study._storage.flush_seconds = 0.2
    trial = study.ask()
    trial.report(1.0, 0)
    assert stored(url).intermediate_values == {}
    time.sleep(0.3)
    trial.report(0.5, 1)  # the first write after flush_seconds takes what was kept
    assert stored(url).intermediate_values == {0: 1.0, 1: 0.5}


def test_a_trial_another_worker_failed_meanwhile_refuses_the_write(study_and_commits):
    study, url, _ = study_and_commits
    trial = study.ask()
    trial.report(1.0, 0)
    other = optuna.storages.RDBStorage(url)  # a worker that found this trial silent
    other.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        flush_trial(trial)


def test_an_enqueued_trial_is_written_behind_once_taken(study_and_commits):
    study, url, commits = study_and_commits
    study.enqueue_trial({"lr": 0.1})
    trial = study.ask()  # takes the waiting trial (a write of its state)
    commits.clear()
    assert trial.suggest_float("lr", 1e-3, 1.0, log=True) == 0.1 and not commits
    study.tell(trial, 0.7)
    assert stored(url).params == {"lr": 0.1} and stored(url).value == 0.7


def test_a_trial_another_worker_failed_reads_as_failed_here_too(study_and_commits):
    study, url, _ = study_and_commits
    trial = study.ask()
    trial.report(1.0, 0)
    optuna.storages.RDBStorage(url).set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
    time.sleep(READ_REUSE_SECONDS)  # the last read is reused that long
    assert [t.state for t in study.get_trials()] == [optuna.trial.TrialState.FAIL]  # not this process's old copy
    assert [t.state for t in study.get_trials()] == [optuna.trial.TrialState.FAIL]  # nor after a second read


def test_a_recent_read_of_the_study_is_reused_and_this_process_trials_are_in_it_as_they_change(study_and_commits):
    study, url, _ = study_and_commits
    reads = []

    def on_statement(connection, cursor, statement, *args):
        if statement.lstrip().upper().startswith("SELECT") and "FROM trials" in statement:
            reads.append(statement)

    sqlalchemy.event.listen(study._storage._backend.engine, "before_cursor_execute", on_statement)
    trial = study.ask()
    study.get_trials()
    reads.clear()
    study.get_trials(), study.get_trials()
    assert not reads  # the sampler's, the pruner's and `ask`'s reads within READ_REUSE_SECONDS: one
    study.tell(trial, 1.0)
    reads.clear()
    (told,) = study.get_trials()  # finished in the cache as the database holds it, without a read
    assert told.state == optuna.trial.TrialState.COMPLETE and told.value == 1.0 and not reads
    time.sleep(READ_REUSE_SECONDS)
    (read,) = study.get_trials()  # and then the database's own copy
    assert reads and read.value == told.value and read.datetime_complete == told.datetime_complete
    other = optuna.load_study(study_name="s", storage=url)  # another worker's new trial: seen once the read is old
    other.tell(other.ask(), 2.0)
    time.sleep(READ_REUSE_SECONDS)
    assert len(study.get_trials()) == 2


def test_a_trial_whose_last_write_fails_is_failed_not_left_running(study_and_commits, monkeypatch):
    study, url, _ = study_and_commits
    trial = study.ask()
    trial.report(1.0, 0)

    def refused(*args):
        raise sqlalchemy.exc.OperationalError("INSERT", {}, Exception("disk I/O error"))

    monkeypatch.setattr(study_storage, "write_kept", refused)
    with pytest.raises(optuna.exceptions.StorageInternalError):  # Optuna's words for a failed commit
        study.tell(trial, 0.5)
    assert stored(url).state == optuna.trial.TrialState.FAIL


def test_a_quiet_trials_writes_go_at_its_heartbeat(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(storage=open_storage(url, heartbeat=1, grace=30), study_name="s")
    study._storage.flush_seconds = 0.5

    def quiet_after_one_report(trial):
        trial.report(1.0, 0)
        time.sleep(2.5)  # a long epoch: nothing written meanwhile but its heartbeats
        assert stored(url).intermediate_values == {0: 1.0}
        return 1.0

    study.optimize(quiet_after_one_report, n_trials=1)
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE  # the assertion inside held


def test_a_value_that_cannot_be_stored_is_refused_when_set(study_and_commits):
    study, url, _ = study_and_commits
    trial = study.ask()
    with pytest.raises(TypeError):
        trial.set_user_attr("when", object())
    trial.set_user_attr("fine", 1)
    study.tell(trial, 1.0)
    assert stored(url).user_attrs == {"fine": 1}


def test_trials_in_threads_of_one_process_are_stored_whole(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    sampler = optuna.samplers.TPESampler(seed=0, multivariate=True, group=True, constant_liar=True)
    study = optuna.create_study(storage=open_storage(url, 30, 60), study_name="s", sampler=sampler)
    study.optimize(staircase, n_trials=40, n_jobs=2)
    mine = {t.number: t for t in study.get_trials()}
    theirs = stored_trials(url)
    assert len(theirs) == 40 and all(t.state in FINISHED for t in theirs)
    for trial in theirs:
        assert trial.params == mine[trial.number].params and trial.params
        assert trial.intermediate_values == mine[trial.number].intermediate_values and trial.intermediate_values


def test_a_trial_has_a_heartbeat_from_its_start(tmp_path):
    # a worker killed between asking for a trial and its heartbeat thread's first beat left the trial RUNNING for
    # ever (Optuna finds stale only trials that have a heartbeat)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(storage=open_storage(url, heartbeat=1, grace=1), study_name="s")
    study.enqueue_trial({"lr": 0.1})
    study.ask(), study.ask()  # an enqueued trial taken, a new one created
    time.sleep(2.5)  # past the grace period (SQLite's clock counts whole seconds)
    optuna.storages.fail_stale_trials(study)
    assert [t.state for t in stored_trials(url)] == [optuna.trial.TrialState.FAIL] * 2


def test_a_parameter_another_trial_drew_differently_is_refused_when_drawn(study_and_commits):
    study, url, _ = study_and_commits
    first = study.ask()
    first.suggest_float("lr", 1e-3, 1.0, log=True)
    study.tell(first, 1.0)
    later = optuna.load_study(study_name="s", storage=open_storage(url, heartbeat=60, grace=120))
    trial = later.ask()  # another process, as a later invocation is
    with pytest.raises(ValueError, match="different distribution"):  # Optuna's own words, at the draw
        trial.suggest_categorical("lr", ["a", "b"])


def staircase(trial: optuna.Trial) -> float:
    """A curve per trial that the median rule prunes some of: value 1/(epoch+1) scaled by a sampled level."""
    level = trial.suggest_float("level", 0.0, 1.0)
    for step in range(8):
        trial.report(level + 1 / (step + 1), step)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return level


def test_the_pruner_decides_as_optunas_median_rule_and_reads_the_study_once_a_trial(monkeypatch):
    reads = []
    get_trials = optuna.Study.get_trials
    monkeypatch.setattr(optuna.Study, "get_trials", lambda *a, **k: reads.append(1) or get_trials(*a, **k))
    outcomes = {}
    pruners = {
        "none": optuna.pruners.NopPruner(),  # the reads that are not the pruner's
        "optuna": optuna.pruners.MedianPruner(4, 3),
        "ours": pruning.MedianPruner(4, 3),
    }
    for name, pruner in pruners.items():
        reads.clear()
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1), pruner=pruner)
        study.optimize(staircase, n_trials=30)
        outcomes[name] = ([t.state for t in study.trials], len(reads))
    assert outcomes["ours"][0] == outcomes["optuna"][0]  # the same trials pruned, at the same steps
    assert optuna.trial.TrialState.PRUNED in outcomes["ours"][0]
    reads = {name: count - outcomes["none"][1] for name, (_, count) in outcomes.items()}
    assert reads["ours"] <= 30 < 2 * 30 < reads["optuna"]  # once a trial, not once a report
