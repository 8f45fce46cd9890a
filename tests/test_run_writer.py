"""The run writer: a process of its own writing the trials' MLflow runs, answering their ids, raising what MLflow
refused, and outliving a killed `tune` to write everything it was sent."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from training.tracking import mlflow_store
from training.tracking.run_writer import RunWriter, WriterError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def writer_store(tmp_path):
    """A run writer connected to a new SQLite store: (writer, client, experiment id); stopped afterwards."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow_store.configure(uri)
    experiment = mlflow_store.experiment_id(client, "x")
    writer = RunWriter()
    writer.connect(uri)
    yield writer, client, experiment
    writer.stop(quiet=True)


def test_the_run_writer_writes_a_run_and_answers_its_id(writer_store):
    writer, client, experiment = writer_store
    key = writer.open(experiment, "trial-0", {"optuna.trial": "0"}, {"lr": 0.1})
    for step in (1, 2, 3):
        writer.epoch(key, {"val_mse": 1 / step}, step)
    writer.close(key, "COMPLETE", "FINISHED", None, {"best_val_mse": 1 / 3}, "")
    run_id = writer.run_id(key, wait=True)
    writer.drain()  # everything sent is written when it returns
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"lr": "0.1"}
    assert [m.step for m in client.get_metric_history(run_id, "val_mse")] == [1, 2, 3]
    assert run.data.tags["optuna.trial"] == "0" and run.data.tags["optuna.state"] == "COMPLETE"
    writer.stop()
    assert writer.process.returncode == 0


def test_a_write_mlflow_refuses_is_raised_by_name(writer_store, tmp_path):
    writer, _, _ = writer_store
    writer.open("424242", "trial-7", {}, {})  # no such experiment
    with pytest.raises(WriterError, match="MLflow refused open of trial-7"):
        writer.drain()
    writer.connect(f"sqlite:///{tmp_path / 'mlflow.db'}")  # a new search starts clean
    writer.drain()


def test_a_writer_that_died_is_an_error_not_a_hang(writer_store):
    writer, _, _ = writer_store
    writer.drain()
    writer.process.kill()
    writer.process.wait()
    with pytest.raises(WriterError, match="writer process ended"):
        key = writer.open("0", "trial-0", {}, {})
        writer.run_id(key, wait=True)

    shared = RunWriter.shared()  # the process's writer is started again once it has ended
    shared.stop()
    assert RunWriter.shared() is not shared and not RunWriter.shared()._ended


@pytest.mark.e2e  # real `tune` processes, killed or interrupted
def test_the_writer_outlives_its_tune_and_writes_all_it_was_sent(tmp_path):
    # tune killed before the writer even answered: it still creates the run, writes every epoch sent, and exits
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow_store.configure(uri)
    experiment = mlflow_store.experiment_id(client, "x")
    code = (
        "import os, sys\n"
        "from training.tracking.run_writer import RunWriter\n"
        "writer = RunWriter()\n"
        f"writer.connect({uri!r})\n"
        f"key = writer.open({experiment!r}, 'trial-0', {{'optuna.trial': '0'}}, {{}})\n"
        "for step in range(1, 6): writer.epoch(key, {'val_mse': 1.0 / step}, step)\n"
        "print(writer.process.pid, flush=True)\n"
        "os._exit(0)  # as a kill -9 would: nothing flushed, nothing waited for\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    writer = int(result.stdout.split()[0])  # (its output ends when it does: `run` read it to the end)
    deadline = time.monotonic() + 60
    while psutil.pid_exists(writer) and psutil.Process(writer).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the writer did not exit"
        time.sleep(0.1)
    (run,) = client.search_runs([experiment], "tags.`optuna.trial` = '0'")
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_mse")] == [1, 2, 3, 4, 5]
    assert run.info.status == "RUNNING"  # closed by the study's next invocation, as any dead run
    assert "Traceback" not in result.stderr, result.stderr


def test_a_drain_after_a_refusal_still_waits_for_everything_sent(writer_store):
    writer, client, experiment = writer_store
    good = writer.open(experiment, "trial-1", {"optuna.trial": "1"}, {})
    writer.open("424242", "trial-2", {}, {})  # refused: no such experiment
    writer.close(good, "COMPLETE", "FINISHED", None, {}, "")  # sent after the refused one
    with pytest.raises(WriterError, match="trial-2"):
        writer.drain()
    assert client.get_run(writer.run_id(good, wait=True)).info.status == "FINISHED"  # written before it raised
    with pytest.raises(WriterError, match="trial-2"):  # and the next trial does not start
        writer.open(experiment, "trial-3", {}, {})


def test_a_writer_that_never_got_a_store_is_ended_at_once():
    writer = RunWriter()  # as `make tune` starts it, before it checks the options
    writer.stop()  # the options were refused: nothing to write, nothing to wait for
    assert writer.process.returncode == -signal.SIGKILL
