"""A search's bookkeeping: each trial's MLflow record buffered (one batch at its end, or every few seconds) and its
Optuna trial written behind, and both still whole: Ctrl-C writes the epochs trained so far, a kill -9 loses at most
the epoch in training (MLflow) and its run is closed later. The run writer process itself: test_run_writer.py."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import psutil
import pytest
import sqlalchemy
import torch
from mlflow import MlflowClient

from training.search import progress, pruning, study_storage
from training.search.objective import Suggested, TrialRun, one_intra_op_thread
from training.search.options import TuneOptions
from training.search.storage import open_storage
from training.search.study import tune
from training.search.study_storage import READ_REUSE_SECONDS, flush_trial
from training.tracking import mlflow_store
from training.tracking.trial_log import StaleTrialCallback, close_dead_runs, trial_start
from training.tracking.trial_record import TrialRecord

ROOT = Path(__file__).resolve().parents[1]
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


class CountingClient:
    """An MlflowClient that counts the batches written through it."""

    def __init__(self, client: MlflowClient):
        self.client, self.batches = client, 0

    def log_batch(self, *args, **kwargs):
        self.batches += 1
        return self.client.log_batch(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.client, name)


@pytest.fixture
def one_run(tmp_path):
    client = mlflow_store.configure(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = mlflow_store.experiment_id(client, "x")
    return CountingClient(client), client.create_run(experiment, run_name="trial-0").info.run_id


def test_epochs_are_written_in_one_batch_with_the_close(one_run):
    client, run_id = one_run
    record = TrialRecord(client, run_id, "trial-0", flush_seconds=3600)
    for epoch in range(1, 31):
        record.epoch({"val_mse": 1 / epoch, "train_loss": float("nan")}, epoch)
    assert client.batches == 0
    record.close("PRUNED", "KILLED", "pruned at epoch 30", {"best_val_mse": 0.1}, suffix=" (pruned)")
    assert client.batches == 1
    run = client.get_run(run_id)
    assert [m.step for m in client.get_metric_history(run_id, "val_mse")] == list(range(1, 31))
    assert "train_loss" not in run.data.metrics and run.data.metrics["best_val_mse"] == 0.1
    assert run.info.status == "KILLED" and run.info.run_name == "trial-0 (pruned)"
    assert run.data.tags["optuna.state"] == "PRUNED" and run.data.tags["optuna.reason"] == "pruned at epoch 30"


def test_a_long_trial_is_written_every_flush_interval(one_run):
    client, run_id = one_run
    record = TrialRecord(client, run_id, "trial-0", flush_seconds=0)
    for epoch in range(1, 4):
        record.epoch({"val_mse": 1.0}, epoch)
    assert client.batches == 3 and len(client.get_metric_history(run_id, "val_mse")) == 3


def test_ctrl_c_mid_trial_writes_the_epochs_already_trained(tmp_path, monkeypatch):
    stores = {"storage": f"sqlite:///{tmp_path / 'optuna.db'}", "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    on_epoch = TrialRun.on_epoch

    def ctrl_c_at_epoch_3(run, epoch, row):
        if epoch == 3:
            progress.CTRL_C.requested = True  # as the SIGINT handler does; the epoch's check raises
        on_epoch(run, epoch, row)

    monkeypatch.setattr(TrialRun, "on_epoch", ctrl_c_at_epoch_3)
    with pytest.raises(progress.TuneInterrupted):
        tune(TuneOptions(model="nw", dataset="sine", trials=3, progress=False, **stores))
    *finished, trial = optuna.load_study(study_name="nw-sine", storage=stores["storage"]).trials
    assert trial.user_attrs["fail_reason"] == progress.INTERRUPTED  # the first trial to reach epoch 3
    assert all(t.state in FINISHED and len(t.intermediate_values) < 3 for t in finished)
    client = MlflowClient(stores["tracking_uri"])
    run = client.get_run(trial.user_attrs["mlflow_run_id"])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_mse")] == [1, 2]
    assert run.info.status == "KILLED" and run.data.tags["optuna.reason"] == progress.INTERRUPTED


def test_kill_9_mid_trial_leaves_whole_records_and_the_next_run_closes_the_dead_one(tmp_path):
    stores = ["--storage", f"sqlite:///{tmp_path / 'optuna.db'}", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]
    command = [sys.executable, "-m", "training", "tune", "--model", "nw", "--dataset", "sine", "--no-progress"]
    process = subprocess.Popen(
        [*command, "--trials", "500", "--no-conclude", *stores],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        lines = []
        while not any(line.startswith("trial 2 ") for line in lines):
            line = process.stdout.readline()
            assert line, "tune ended before its third trial:\n" + "".join(lines)
            lines.append(line)
        storage = stores[1]
        while not any(t.state.name == "RUNNING" and t.number > 2 for t in trials_of(storage)):
            time.sleep(0.01)
        time.sleep(0.1)  # mid-trial, with epochs trained and (most likely) not yet written
        writers = psutil.Process(process.pid).children()  # the run writer, in a session of its own
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert [w.cmdline()[-2] for w in writers] == ["training.tracking.run_writer"]
    psutil.wait_procs(writers, timeout=60)  # it writes what it was sent, then exits
    assert not any(w.is_running() for w in writers)
    said = process.stdout.read()  # what tune and the writer printed after the last trial line
    assert "Traceback" not in said and "not written" not in said, said
    client = MlflowClient(stores[3])
    experiment = client.get_experiment_by_name("nw-sine").experiment_id
    for trial in trials_of(storage):
        (run,) = client.search_runs([experiment], f"tags.`optuna.trial` = '{trial.number}'")
        run_id = run.info.run_id
        history = client.get_metric_history(run_id, "val_mse")
        if trial.state in FINISHED:  # every epoch reported to Optuna is in its run, and the run is closed
            assert trial.user_attrs["mlflow_run_id"] == run_id
            assert [m.step for m in history] == sorted(trial.intermediate_values), trial.number
            assert run.info.status in ("FINISHED", "KILLED")
        else:  # the killed trial: a whole prefix of its epochs in each store, the run at least as far as the
            # study (every epoch goes to the writer as it ends; the study's reports are written every 10 s)
            assert [m.step for m in history] == list(range(1, len(history) + 1)), trial.number
            assert sorted(trial.intermediate_values) == list(range(1, len(trial.intermediate_values) + 1))
            assert len(history) >= len(trial.intermediate_values)
            for key in run.data.metrics:  # every metric of an epoch, or none
                epochs = [m.step for m in client.get_metric_history(run_id, key) if m.step > 0]  # 0: the summary
                assert epochs in ([], [m.step for m in history]), key
    time.sleep(3)  # past the grace period given below: the killed trial and parent run are dead
    subprocess.run(
        [*command, "--trials", "1", "--no-conclude", "--heartbeat", "1", "--grace", "2", *stores],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert not client.search_runs([experiment], "attributes.status = 'RUNNING'")
    killed = [t for t in trials_of(storage) if t.state == optuna.trial.TrialState.FAIL]
    assert killed
    for trial in killed:  # its run (the trial carries its id only from its first write on), failed with it
        (run,) = client.search_runs([experiment], f"tags.`optuna.trial` = '{trial.number}'")
        assert run.info.status == "FAILED" and "heartbeat" in run.data.tags["optuna.reason"]
        assert trial.user_attrs.get("mlflow_run_id", run.info.run_id) == run.info.run_id
        assert run.data.params and all(run.data.params[k] == str(v) for k, v in trial.params.items())
    (parent,) = client.search_runs([experiment], "tags.kind = 'tuning' and attributes.status = 'KILLED'")
    assert "no heartbeat" in parent.data.tags["killed_reason"]


def test_a_worker_killed_between_closing_its_run_and_telling_optuna_leaves_both_failed(tmp_path):
    # The run is closed FINISHED before Optuna's state is written, and the trial's link to it goes with that
    # write: a kill in between leaves a COMPLETE-looking run beside a RUNNING trial that does not name it. The
    # next invocation fails the trial (no heartbeat) and its run (found by its tags) with it.
    client = mlflow_store.configure(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = mlflow_store.experiment_id(client, "s")
    on_stale = StaleTrialCallback()
    on_stale.client = client
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(storage=open_storage(url, 1, 1, on_stale), study_name="s")
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    tags = {"optuna.study": "s", "optuna.trial": "0", "optuna.trial_start": trial_start(trial)}  # as the writer
    run_id = client.create_run(experiment, run_name="trial-0", tags=tags)
    flush_trial(trial)
    record = TrialRecord(client, run_id.info.run_id, "trial-0", params=trial.params)
    record.epoch({"val_mse": 0.5}, 1)
    record.close("COMPLETE", "FINISHED", metrics={"best_val_mse": 0.5})  # ... and killed here, before `tell`
    time.sleep(2.5)  # past the grace period
    again = optuna.load_study(study_name="s", storage=open_storage(url, 1, 1, on_stale))
    close_dead_runs(client, experiment, again, grace=1)
    failed = again.get_trials(deepcopy=False)[0]  # (and retried as a new trial)
    run = client.get_run(run_id.info.run_id)
    assert failed.state == optuna.trial.TrialState.FAIL
    assert run.info.status == "FAILED" and run.data.tags["optuna.state"] == "FAIL"
    assert "heartbeat" in run.data.tags["optuna.reason"]


def trials_of(storage: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="nw-sine", storage=storage).trials


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


def test_a_folds_setup_reads_the_parameters_already_suggested():
    study = optuna.create_study()
    trial = study.ask()
    first = trial.suggest_float("lr", 1e-3, 1.0, log=True)
    known = Suggested(trial)
    assert known.suggest_float("lr", 1e-3, 1.0, log=True) == first
    assert known.suggest_int("depth", 1, 3) in (1, 2, 3) and "depth" in trial.params  # a new one is asked for
    assert known.number == trial.number


def test_a_small_nw_trial_trains_on_one_thread_in_its_own_thread_and_gives_it_back():
    seen = []

    def trial():
        with one_intra_op_thread(True):
            seen.append(torch.get_num_threads())
        seen.append(torch.get_num_threads())

    before = torch.get_num_threads()
    threads = [threading.Thread(target=trial) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(seen) == sorted([1, 1, before, before]) and torch.get_num_threads() == before
