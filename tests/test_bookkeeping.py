"""A trial's MLflow record is buffered (one batch at its end, or every few seconds), and still whole: Ctrl-C writes
the epochs trained so far, a kill -9 loses at most the running trial's buffered epochs and its run is closed later."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from training.search import progress
from training.search.objective import TrialRun
from training.search.options import TuneOptions
from training.search.study import tune
from training.tracking import mlflow_store
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
        while not any(t.state.name == "RUNNING" and len(t.intermediate_values) >= 2 for t in trials_of(storage)):
            time.sleep(0.01)  # mid-trial, with epochs trained and (most likely) not yet written
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    client = MlflowClient(stores[3])
    for trial in trials_of(storage):
        run_id = trial.user_attrs.get("mlflow_run_id")
        history = client.get_metric_history(run_id, "val_mse") if run_id else []
        if trial.state in FINISHED:  # every epoch reported to Optuna is in its run, and the run is closed
            assert [m.step for m in history] == sorted(trial.intermediate_values), trial.number
            assert client.get_run(run_id).info.status in ("FINISHED", "KILLED")
        else:  # the killed trial: at most its buffered epochs missing
            assert len(history) <= len(trial.intermediate_values)
    time.sleep(3)  # past the grace period given below: the killed trial and parent run are dead
    subprocess.run(
        [*command, "--trials", "1", "--no-conclude", "--heartbeat", "1", "--grace", "2", *stores],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )
    experiment = client.get_experiment_by_name("nw-sine").experiment_id
    assert not client.search_runs([experiment], "attributes.status = 'RUNNING'")
    killed = [t for t in trials_of(storage) if t.state == optuna.trial.TrialState.FAIL]
    assert killed and all(client.get_run(t.user_attrs["mlflow_run_id"]).info.status == "FAILED" for t in killed)
    (parent,) = client.search_runs([experiment], "tags.kind = 'tuning' and attributes.status = 'KILLED'")
    assert "no heartbeat" in parent.data.tags["killed_reason"]


def trials_of(storage: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="nw-sine", storage=storage).trials
