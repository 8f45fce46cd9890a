"""What a tuning invocation records in MLflow: its parent run, one child run per trial, and the cleanup
of runs whose process died (nothing is left RUNNING once the study is opened again)."""

from __future__ import annotations

import threading
import time

import mlflow
import optuna
from mlflow.entities import Param
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from mlflow.utils.validation import MAX_PARAMS_TAGS_PER_BATCH

from training.tracking import mlflow_store, run_notes
from training.tracking.run_writer import RunWriter, WrittenRecord
from training.tracking.trial_record import NoRecord

# Optuna's trial state -> the MLflow run status a closed child run ends with.
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
STALE_REASON = "the worker running this trial stopped sending heartbeats (killed or lost); Optuna failed it"


class MlflowTrialLog:
    """Each trial as an MLflow child run of the tuning invocation's parent run, written by `writer` (a process of
    its own: `run_writer.py`), its epochs in batches (`trial_record.TrialRecord`)."""

    def __init__(self, writer: RunWriter, experiment_id: str, parent: str, study: str, tracking_uri: str):
        self.writer, self.experiment_id, self.parent, self.study = writer, experiment_id, parent, study
        self.tracking_uri = tracking_uri

    def open(self, trial: optuna.Trial, params: dict) -> WrittenRecord:
        """The trial's run, asked of the writer with its tags and parameters; the run's id and address go on the
        trial once the writer has created it (at the latest when the run closes)."""
        tags = {MLFLOW_PARENT_RUN_ID: self.parent, "optuna.study": self.study, "optuna.trial": str(trial.number)}
        tags["optuna.trial_start"] = trial_start(trial)
        key = self.writer.open(self.experiment_id, f"trial-{trial.number}", tags, params)

        def link(links: dict[str, str]) -> None:
            for name, value in links.items():
                trial.set_user_attr(name, value)

        def links_of(run_id: str) -> dict[str, str]:
            return run_notes.trial_links(self.experiment_id, run_id, self.tracking_uri)

        return WrittenRecord(self.writer, key, link, links_of)


class NoTrialLog:
    """No tracking: the same `Objective` with every trial's record a no-op (benchmarks, quality checks)."""

    def open(self, trial: optuna.Trial, params: dict) -> NoRecord:
        return NoRecord()


def close_run(
    client: mlflow.MlflowClient,
    run_id: str,
    state: str,
    reason: str | None,
    status: str | None = None,
    trial: optuna.trial.FrozenTrial | None = None,
    run=None,
):
    """Close a trial's run its worker left open; with `trial`, first give it the trial's parameters if it has
    none (they go with a run's first batch, which a dead worker may never have written)."""
    if trial is not None and not (run or client.get_run(run_id)).data.params:
        params = [Param(k, str(v)) for k, v in trial.params.items()]
        client.log_batch(run_id, params=params[:MAX_PARAMS_TAGS_PER_BATCH])
    client.set_tag(run_id, "optuna.state", state)
    if reason:
        client.set_tag(run_id, "optuna.reason", reason)
    client.set_terminated(run_id, status or RUN_STATUS[state])


class StaleTrialCallback:
    """Optuna calls this for a trial it failed because its worker went silent: retry the trial (up to
    `max_retry` times) and close its MLflow child run FAILED with the reason."""

    def __init__(self, max_retry: int = 2):
        self.retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
        self.client: mlflow.MlflowClient | None = None  # set once the tracking store is known

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.retry(study, trial)
        if self.client is not None:
            for run_id in trial_run_ids(self.client, study.study_name, trial):  # open, or closed by its writer
                close_run(self.client, run_id, "FAIL", STALE_REASON, trial=trial)


def trial_run_ids(client: mlflow.MlflowClient, study: str, trial: optuna.trial.FrozenTrial) -> list[str]:
    """The MLflow runs of this attempt at `trial`, found by their tags (the study, the trial's number and start):
    a trial names its run only from its next write to the study on, a retried trial inherits the name of its
    failed attempt's run, and a study made again under the same name numbers its trials from 0 again. (Runs from
    before the start tag: the run the trial names.)"""
    experiment = client.get_experiment_by_name(study)
    if experiment is None:
        return []
    query = f"tags.`optuna.study` = '{study}' and tags.`optuna.trial` = '{trial.number}'"
    query += f" and tags.`optuna.trial_start` = '{trial_start(trial)}'"
    found = [r.info.run_id for r in client.search_runs([experiment.experiment_id], query)]
    named = trial.user_attrs.get("mlflow_run_id")
    return found or ([named] if named and "optuna.trial_start" not in client.get_run(named).data.tags else [])


def trial_start(trial: optuna.trial.FrozenTrial | optuna.Trial) -> str:
    """When the trial started, as Optuna stores it (the tag that tells its runs from another attempt's)."""
    return trial.datetime_start.isoformat() if trial.datetime_start else ""


class ParentHeartbeat:
    """Stamps the parent run every `interval` seconds while the invocation lives, so the next invocation
    can tell a dead parent run (silent longer than the grace period) from one still working."""

    def __init__(self, client: mlflow.MlflowClient, run_id: str, interval: float):
        self.client, self.run_id, self.interval = client, run_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="parent-heartbeat", daemon=True)

    def __enter__(self) -> ParentHeartbeat:
        self.client.set_tag(self.run_id, "heartbeat", f"{time.time():.3f}")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.client.set_tag(self.run_id, "heartbeat", f"{time.time():.3f}")
            except Exception:  # a missed beat is retried next interval; the grace period covers a few
                pass


def close_dead_runs(client: mlflow.MlflowClient, experiment_id: str, study: optuna.Study, grace: float) -> list[str]:
    """Close what dead invocations left RUNNING: child runs whose Optuna trial has ended (state copied
    from Optuna) and parent runs silent for longer than `grace` seconds (KILLED). Returns their ids."""
    optuna.storages.fail_stale_trials(study)  # runs StaleTrialCallback for trials dead since last look
    trials = {str(t.number): t for t in study.get_trials(deepcopy=False)}
    running = client.search_runs(
        [experiment_id],
        f"attributes.status = 'RUNNING' and tags.`optuna.study` = '{study.study_name}'",
        max_results=5000,
    )
    closed, now = [], time.time()
    for run in running:
        tags = run.data.tags
        if "optuna.trial" in tags:
            trial = trials.get(tags["optuna.trial"])
            if trial is not None and trial.state.is_finished():
                # a run its trial does not know (the worker died in between) is a failed attempt
                state = trial.state.name if trial.user_attrs.get("mlflow_run_id") == run.info.run_id else "FAIL"
                reason = trial.user_attrs.get("fail_reason") or (STALE_REASON if state == "FAIL" else None)
                close_run(client, run.info.run_id, state, reason, trial=trial, run=run)
                closed.append(run.info.run_id)
        elif tags.get("kind") in ("tuning", "conclusion"):
            last = float(tags.get("heartbeat", run.info.start_time / 1000))
            if now - last > grace:
                client.set_tag(
                    run.info.run_id, "killed_reason", f"no heartbeat for {now - last:.0f} s: the process died"
                )
                client.set_terminated(run.info.run_id, "KILLED")
                closed.append(run.info.run_id)
    return closed


def log_invocation(client, run_id: str, params: dict, description: dict) -> None:
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    for key, value in mlflow_store.package_versions().items():
        client.set_tag(run_id, f"version.{key}", value)
    client.log_dict(run_id, description, "data/description.json")
