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
import torch
from mlflow import MlflowClient

from training.search import progress
from training.search.objective import Suggested, TrialRun, one_intra_op_thread
from training.search.options import TuneOptions
from training.search.storage import open_storage
from training.search.study import tune
from training.search.study_storage import flush_trial
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


@pytest.mark.e2e  # real `tune` processes, killed or interrupted
def test_kill_9_mid_trial_leaves_whole_records_and_the_next_run_closes_the_dead_one(tmp_path):
    stores = ["--storage", f"sqlite:///{tmp_path / 'optuna.db'}", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]
    command = [sys.executable, "-m", "training", "tune", "--model", "nw", "--dataset", "sine", "--no-progress"]
    # epochs of 20 ms (the sine model trains one in ~1 ms): the kill lands in a trial's training, not in the
    # millisecond between a trial's creation and its first heartbeat (a trial killed there stays RUNNING)
    slowed = [sys.executable, "-c", SLOW_EPOCHS, "tune", *command[4:]]
    process = subprocess.Popen(
        [*slowed, "--trials", "500", "--no-conclude", *stores],
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
        while not any(t.state.name == "RUNNING" and t.number > 2 and t.params for t in trials_of(storage)):
            time.sleep(0.01)
        time.sleep(0.1)  # mid-trial (its setup written), with epochs trained and not yet written
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
        runs = client.search_runs([experiment], f"tags.`optuna.trial` = '{trial.number}'")
        # its run is asked for before its setup is written to the study: killed before that, it may have none
        assert len(runs) == 1 if trial.params or trial.state in FINISHED else len(runs) <= 1, trial.number
        if not runs:
            continue
        run, run_id = runs[0], runs[0].info.run_id
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
    for trial in killed:  # its run, if it had one (the trial carries its id only from its next write), failed with it
        runs = client.search_runs([experiment], f"tags.`optuna.trial` = '{trial.number}'")
        assert len(runs) == 1 if trial.params else len(runs) <= 1
        if not runs:
            continue
        (run,) = runs
        assert run.info.status == "FAILED" and "heartbeat" in run.data.tags["optuna.reason"]
        assert trial.user_attrs.get("mlflow_run_id", run.info.run_id) == run.info.run_id
        assert run.data.params and all(run.data.params[k] == str(v) for k, v in trial.params.items())
    (parent,) = client.search_runs([experiment], "tags.kind = 'tuning' and attributes.status = 'KILLED'")
    assert "no heartbeat" in parent.data.tags["killed_reason"]


@pytest.mark.e2e  # real `tune` processes, killed or interrupted
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


SLOW_EPOCHS = """
import sys, time
from training.search import objective
from training.cli import main

real_fit = objective.fit

def slow(model, data, config, on_epoch=None):
    def epoch(number, row):
        time.sleep(0.02)
        on_epoch(number, row)
    return real_fit(model, data, config, epoch if on_epoch else None)

objective.fit = slow
sys.exit(main(sys.argv[1:]))
"""


def trials_of(storage: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="nw-sine", storage=storage).trials


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
