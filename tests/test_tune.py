import json
import math
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import optuna
import pytest
from mlflow import MlflowClient

from training.search import objective as objective_module
from training.search import study as tune_module
from training.search.options import TuneError, TuneOptions
from training.search.study import tune
from training.tracking import mlflow_store, registry


def options(stores, **overrides):
    base = dict(
        model="nw",
        dataset="sine",
        trials=12,
        storage=stores["storage"],
        tracking_uri=stores["tracking_uri"],
        progress=False,
    )
    return TuneOptions(**{**base, **overrides})


@pytest.fixture(scope="module")
def first(stores):
    return tune(options(stores))


def child_runs(client, result):
    return client.search_runs(
        [result.experiment_id], f"tags.mlflow.parentRunId = '{result.parent_run_id}'", max_results=1000
    )


def test_parent_and_child_runs_with_per_epoch_metrics(stores, first):
    client = MlflowClient(stores["tracking_uri"], stores["tracking_uri"])
    parent = client.get_run(first.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["study"] == "nw-sine" and "version.torch" in parent.data.tags
    assert "test_mse" in parent.data.metrics and "best_val_mse" in parent.data.metrics
    children = child_runs(client, first)
    assert len(children) == 12
    trained = [r for r in children if r.data.params["parametric"] == "True"]
    assert trained, "the seeded search should try the parametric model"
    history = client.get_metric_history(trained[0].info.run_id, "val_mse")
    assert [m.step for m in history] == list(range(1, len(history) + 1)) and len(history) >= 1
    assert all(r.data.params["device"] == "cpu" and r.data.params["seed"] == "0" for r in children)


def test_parent_run_samples_the_machine_and_each_trial_its_time_and_device(stores, first):
    client = MlflowClient(stores["tracking_uri"], stores["tracking_uri"])
    metrics = client.get_run(first.parent_run_id).data.metrics
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(metrics)
    assert not [t for t in threading.enumerate() if t.name == "SystemMetricsMonitor"]  # stopped with the run
    for run in child_runs(client, first):  # completed and pruned alike
        wall, cpu = run.data.metrics["trial_wall_seconds"], run.data.metrics["trial_cpu_seconds"]
        assert 0 < cpu <= wall * os.cpu_count(), run.info.run_name
        assert run.data.params["device"] == "cpu" and run.data.params["cpu_clock"] == "process"  # one trial at a time


def test_a_trial_beside_others_counts_its_own_thread_and_alone_the_whole_process():
    def burn():  # another trial's thread: 0.2 s of CPU
        while time.thread_time() < 0.2:
            pass

    beside, alone = objective_module.TrialClock(shared=True), objective_module.TrialClock(shared=False)
    other = threading.Thread(target=burn)
    other.start()
    other.join()
    assert beside.metrics()["trial_cpu_seconds"] < 0.1 and alone.metrics()["trial_cpu_seconds"] >= 0.2
    assert beside.metrics()["trial_wall_seconds"] >= beside.metrics()["trial_cpu_seconds"]


def test_the_registered_version_carries_its_model_card(stores, first):
    client = MlflowClient(stores["tracking_uri"], stores["tracking_uri"])
    card = client.get_model_version("nw-sine", first.conclusion.model_version).description
    assert card.startswith("# nw-sine: regression, Nadaraya-Watson") and "data set: `sine` (built in)" in card
    body = json.loads(re.search(r"```json\n(.*?)\n```", card, re.S).group(1))
    assert isinstance(body["instances"], list) and len(body["instances"]) == 1
    described = mlflow.artifacts.load_dict(f"runs:/{first.parent_run_id}/data/description.json")
    assert f"split: train {described['n_train']}, validation {described['n_val']}, test {described['n_test']}" in card
    metrics = client.get_run(first.parent_run_id).data.metrics
    assert f"| mse | {metrics['best_val_mse']:.6g} | {metrics['test_mse']:.6g} |" in card
    r2 = next(line for line in card.splitlines() if line.startswith("| r2 |"))
    assert r2.endswith(f"| {metrics['test_r2']:.6g} |")
    version = client.get_model_version("nw-sine", first.conclusion.model_version)
    assert version.tags["registered_by"] == version.tags["champion_by"] == registry.actor()  # who, in the registry
    assert f"- registered by {registry.actor()}" in card and f"moved by {registry.actor()}" in card  # and the card
    assert version.tags["dataset"] == "sine" and version.tags["data_seed"] == "0"  # what `make archive` tests again


def test_pruned_trials_are_marked_in_optuna_and_mlflow(stores, first):
    client = MlflowClient(stores["tracking_uri"], stores["tracking_uri"])
    study = optuna.load_study(study_name="nw-sine", storage=stores["storage"])
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned, "the median pruner should stop some trials of a 12-trial study"
    for trial in pruned:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.info.status == "KILLED" and run.data.tags["optuna.state"] == "PRUNED"
        assert "pruned at epoch" in run.data.tags["optuna.reason"]
    assert first.states["pruned"] == len(pruned)


def test_artifacts_are_present_and_not_empty(stores, first):
    client = MlflowClient(stores["tracking_uri"], stores["tracking_uri"])
    local = Path(
        mlflow.artifacts.download_artifacts(
            run_id=first.parent_run_id, artifact_path="", tracking_uri=stores["tracking_uri"]
        )
    )
    for name in [
        "optuna/study.html",
        "plots/nw_predictions.png",
        "plots/nw_attention_heatmap.png",
        "data/description.json",
    ]:
        assert (local / name).stat().st_size > 500 if name.endswith((".png", ".html")) else (local / name).exists(), (
            name
        )
    run = client.get_run(first.parent_run_id)
    assert run.inputs.dataset_inputs and run.inputs.dataset_inputs[0].dataset.name == "sine-train"


def test_winner_is_registered_as_champion_with_its_test_metric(stores, first):
    client = MlflowClient(stores["tracking_uri"], stores["tracking_uri"])
    champion = client.get_model_version_by_alias("nw-sine", "champion")
    conclusion = first.conclusion
    assert str(champion.version) == conclusion.model_version and conclusion.promoted and conclusion.registered
    assert float(champion.tags["test_mse"]) == pytest.approx(conclusion.test_metrics["mse"])
    study = optuna.load_study(study_name="nw-sine", storage=stores["storage"])
    assert float(champion.tags["val_mse"]) == pytest.approx(study.best_value)  # selected on validation
    assert champion.tags["optuna.trial"] == str(study.best_trial.number)
    model = mlflow.pyfunc.load_model("models:/nw-sine@champion")
    import pandas as pd

    predictions = model.predict(pd.DataFrame({"x0": [0.5, 2.5]}))
    assert predictions.shape == (2,) and all(math.isfinite(p) for p in predictions)


def test_running_again_continues_the_same_study(stores, first):
    second = tune(options(stores, trials=3))
    summaries = optuna.get_all_study_summaries(stores["storage"])
    assert [s.study_name for s in summaries] == ["nw-sine"]
    assert summaries[0].n_trials == 15 and sum(second.states.values()) == 3
    assert sum(second.study_states.values()) == 15  # the summary tells this invocation's trials from the study's
    assert second.parent_run_id != first.parent_run_id
    assert second.sampler_seed != first.sampler_seed == 0  # a continued study does not replay its first draws


def test_a_diverging_trial_fails_cleanly_and_the_study_goes_on(stores, monkeypatch):
    real_fit, calls = objective_module.fit, []

    def poisoned_fit(model, data, config, on_epoch=None):
        calls.append(1)
        if len(calls) == 2:  # the second fit goes NaN (a trial, or a fold of one on small data)
            model.values.fill_(float("nan"))
        return real_fit(model, data, config, on_epoch)

    monkeypatch.setattr(objective_module, "fit", poisoned_fit)
    result = tune(options(stores, dataset="diabetes", trials=4, epochs=3))
    study = optuna.load_study(study_name="nw-diabetes", storage=stores["storage"])
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(failed) == 1 and "nan" in failed[0].user_attrs["fail_reason"].lower()
    run = MlflowClient(stores["tracking_uri"], stores["tracking_uri"]).get_run(failed[0].user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and "nan" in run.data.tags["optuna.reason"].lower()
    assert len(study.trials) == 4 and result.states["complete"] >= 2


def model_files(folder):
    """A stand-in for a logged model's files (what the registry checks is there)."""
    folder.mkdir(parents=True)
    (folder / "MLmodel").write_text("flavors: {}\n")
    return folder.as_uri()


def test_champion_is_the_best_version_by_validation_never_by_test(stores, tmp_path):
    client = mlflow_store.configure(stores["tracking_uri"])
    client.create_registered_model("toy-model")
    # (validation, test): the test metric points the other way and must not decide
    scores = [(0.5, 0.1), (0.9, 0.05), (0.2, 0.8)]
    versions = []
    for i, (val, test) in enumerate(scores):
        tags = {"val_mse": str(val), "test_mse": str(test)}
        source = model_files(tmp_path / f"v{i}")
        versions.append(client.create_model_version("toy-model", source=source, tags=tags).version)
        decision = registry.promote_best(client, "toy-model", "mse", "minimize")
        if len(versions) == 2:
            assert not decision.promoted and decision.version == str(versions[0]) and "stays" in decision.reason
    assert decision.promoted and decision.version == str(versions[2]) and "beats" in decision.reason
    assert str(client.get_model_version_by_alias("toy-model", "champion").version) == str(versions[2])
    again = registry.promote_best(client, "toy-model", "mse", "minimize")
    assert not again.promoted and again.version == str(versions[2])  # idempotent


def test_the_champion_never_points_at_a_version_whose_model_files_are_gone(stores, tmp_path):
    client = mlflow_store.configure(stores["tracking_uri"])
    client.create_registered_model("gone-model")
    kept = client.create_model_version("gone-model", source=model_files(tmp_path / "kept"), tags={"val_mse": "0.5"})
    # better by validation, but registered from another machine's disk (a PostgreSQL store without the server)
    elsewhere = (tmp_path / "other-machine").as_uri()
    client.create_model_version("gone-model", source=elsewhere, tags={"val_mse": "0.1"})
    decision = registry.promote_best(client, "gone-model", "mse", "minimize")
    assert decision.version == str(kept.version)
    assert str(client.get_model_version_by_alias("gone-model", "champion").version) == str(kept.version)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(model="nw", dataset="digits"), "tabular"),
        (dict(model="mha", dataset="sine"), "sequence"),
        (dict(model="s2s", dataset="adding"), "text data \\(dates\\)"),
        (dict(model="mha", dataset="dates"), "sequence"),
        (dict(trials=0), "at least 1"),
        (dict(jobs=-1), "jobs at least 0"),
    ],
)
def test_bad_requests_are_refused_by_name(stores, overrides, message):
    with pytest.raises(TuneError, match=message):
        tune(options(stores, **overrides))


@pytest.mark.e2e  # starts a real UI server
def test_device_pool_gives_each_running_trial_its_own_device():
    import threading
    import time as clock

    from training.search.objective import DevicePool

    pool, lock, running, overlaps = DevicePool(["cuda:0", "cuda:1"]), threading.Lock(), {}, []

    def trial():
        with pool.acquire() as device:
            with lock:
                running[device] = running.get(device, 0) + 1
                overlaps.append(running[device])
                assert sum(running.values()) <= 2
            clock.sleep(0.02)
            with lock:
                running[device] -= 1

    threads = [threading.Thread(target=trial) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(overlaps) == 1 and set(running) == {"cuda:0", "cuda:1"}
    assert DevicePool.for_option("cpu").devices == ["cpu"]


@pytest.mark.e2e  # real `tune` processes, killed or interrupted
def test_a_trial_whose_process_died_is_retried_and_its_runs_closed(tmp_path):
    import time as clock

    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    from training.search.study_storage import flush_trial
    from training.tracking.trial_log import StaleTrialCallback

    stores = {"storage": f"sqlite:///{tmp_path / 'optuna.db'}", "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    quick = dict(heartbeat=1, grace=2)
    client = mlflow_store.configure(stores["tracking_uri"])
    experiment = mlflow_store.experiment_id(client, "nw-sine")
    study, _ = tune_module.open_study(options(stores, **quick), "minimize", StaleTrialCallback())
    dead = study.ask(
        {
            "parametric": optuna.distributions.CategoricalDistribution([True, False]),
            "bandwidth": optuna.distributions.FloatDistribution(0.05, 20.0, log=True),
        }
    )
    # a worker started the trial and its parent run, then its process died (kill -9)
    dead_parent = client.create_run(experiment, tags={"optuna.study": "nw-sine", "kind": "tuning"}).info.run_id
    client.set_tag(dead_parent, "heartbeat", f"{clock.time():.3f}")
    # its run, created by the run writer (its parameters never written), and named on the trial by its first write
    tags = {MLFLOW_PARENT_RUN_ID: dead_parent, "optuna.study": "nw-sine", "optuna.trial": str(dead.number)}
    dead_run = client.create_run(experiment, run_name=f"trial-{dead.number}", tags=tags).info.run_id
    dead.set_user_attr("mlflow_run_id", dead_run)
    flush_trial(dead)
    study._storage.record_heartbeat(dead._trial_id)
    clock.sleep(3)
    tune(options(stores, trials=2, **quick))
    trials = optuna.load_study(study_name="nw-sine", storage=stores["storage"]).trials
    assert trials[0].state == optuna.trial.TrialState.FAIL
    retried_from = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number
    retried = [t for t in trials if retried_from(t) == trials[0].number]
    assert retried and retried[0].state == optuna.trial.TrialState.COMPLETE
    assert all(retried[0].params[k] == v for k, v in trials[0].params.items())
    run = client.get_run(dead_run)
    assert run.info.status == "FAILED" and run.data.tags["optuna.state"] == "FAIL"
    assert "heartbeat" in run.data.tags["optuna.reason"]
    assert run.data.params == {k: str(v) for k, v in trials[0].params.items()}  # written from the study
    parent = client.get_run(dead_parent)
    assert parent.info.status == "KILLED" and "no heartbeat" in parent.data.tags["killed_reason"]
    running = client.search_runs([experiment], "attributes.status = 'RUNNING'")
    assert not running


def test_mlflow_telemetry_is_off_outside_tests_too():
    # MLflow 3 turns its usage reports off by itself under pytest and CI, so check a clean environment: no network
    # at run time beyond the package registries.
    skip = ("PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK")
    env = {k: v for k, v in os.environ.items() if k not in skip}
    code = "import training.tracking.mlflow_store; from mlflow.telemetry.utils import is_telemetry_disabled as off; "
    code += "from mlflow.telemetry.client import get_telemetry_client as client; print(off(), client())"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["True", "None"], result.stdout + result.stderr
