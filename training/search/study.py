"""Hyperparameter search: an Optuna study per `<model>-<dataset>`, every trial an MLflow child run.

One tuning invocation = one MLflow parent run. Any number of invocations (workers, on any number of
machines) may share one study through one storage; each samples with a seed of its own. At the end an
invocation concludes the study (`conclude.py`: refit, test, register, `@champion` by validation) unless
asked not to, so that many workers can leave a single conclusion to `make conclude`.
"""

from __future__ import annotations

import functools
import time
import warnings
from dataclasses import dataclass, field

import optuna
import torch
from mlflow import MlflowClient

from training.data import tables
from training.data.datasets import load_dataset
from training.fit import cross_validation
from training.fit.loop import PRIMARY_METRIC, resolve_device
from training.infra import places, storage_urls
from training.infra.locks import storage_lock
from training.search import progress, pruning, space
from training.search.conclude import DATA_SEED, Conclusion, conclude, study_data, study_states
from training.search.objective import Objective
from training.search.options import GRACE_SECONDS, HEARTBEAT_SECONDS, TuneError, TuneOptions
from training.search.space import FILE_EPOCHS
from training.search.storage import open_storage, sampler_seed
from training.tracking import mlflow_store, records, run_notes
from training.tracking.run_writer import RunWriter
from training.tracking.system_metrics import SystemMetrics
from training.tracking.trial_log import (
    MlflowTrialLog,
    ParentHeartbeat,
    StaleTrialCallback,
    close_dead_runs,
    log_invocation,
)


@dataclass
class TuneResult:
    name: str
    experiment_id: str
    parent_run_id: str
    tracking_uri: str
    sampler_seed: int
    conclusion: Conclusion | None  # None when the invocation left the conclusion to `make conclude`
    states: dict[str, int] = field(default_factory=dict)  # this invocation's trials only
    study_states: dict[str, int] = field(default_factory=dict)  # every trial of the study, all workers
    metric: str = ""  # the validation metric the study optimizes, e.g. "mse"
    direction: str = ""


# the study


def study_sampler(seed: int) -> optuna.samplers.BaseSampler:
    """Seeded TPE, multivariate over each group of parameters that appear together (NW's learned-bandwidth settings
    only exist in learned trials): better than independent TPE on both of benchmark row 10's tasks. Constant liar:
    trials running elsewhere count as bad, so parallel workers spread out."""
    with warnings.catch_warnings():  # Optuna marks multivariate and group experimental; row 10 measured them
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=5, multivariate=True, group=True, constant_liar=True
        )


def study_pruner() -> optuna.pruners.BasePruner:
    """Median pruning once 4 trials finished, from epoch 3 on: weak trials stop early."""
    return pruning.MedianPruner(n_startup_trials=4, n_warmup_steps=3)


def open_study(options: TuneOptions, direction: str, on_stale=None) -> tuple[optuna.Study, int]:
    """Create the study or continue it (never a duplicate), and number this invocation of it: the sampler
    seed comes from (seed, invocation), so simultaneous or later workers do not replay each other."""
    url = options.storage_url
    storage = open_storage(url, options.heartbeat, options.grace, on_stale)
    with storage_lock(url, f"open:{options.name}"):
        study = optuna.create_study(
            storage=storage, study_name=options.name, direction=direction, pruner=study_pruner(), load_if_exists=True
        )
        if study.direction.name.lower() != direction:
            raise TuneError(f"study {options.name!r} in {storage_urls.redact(url)} optimizes the other direction")
        invocation = int(study.user_attrs.get("invocations", 0))
        study.set_user_attr("invocations", invocation + 1)
        if not invocation:
            study.set_user_attr("model", options.model)
            study.set_user_attr("dataset", options.dataset)
            study.set_user_attr("data_seed", DATA_SEED)
    study.sampler = study_sampler(sampler_seed(options.seed, invocation))
    return study, invocation


def enqueue_trial(options: TuneOptions, direction: str, params: dict) -> None:
    """Queue a known configuration as the study's next trial (the demo's known-good start), without
    counting as an invocation of the study."""
    url = options.storage_url
    storage = open_storage(url, options.heartbeat, options.grace)
    with storage_lock(url, f"open:{options.name}"):
        study = optuna.create_study(storage=storage, study_name=options.name, direction=direction, load_if_exists=True)
    study.enqueue_trial(params, skip_if_exists=True)


# the invocation


# After Ctrl-C (a second one is ignored while the runs are closed): how long to wait for the MLflow writer.
INTERRUPTED_WAIT_SECONDS = 60


def tune(options: TuneOptions) -> TuneResult:
    options.validate()
    writer = RunWriter.shared()  # the trial runs' writes, off the trials' path; started first (it imports MLflow)
    try:
        return tune_with(options, writer)
    finally:
        writer.drain(quiet=True)  # drained already, unless `tune` failed before its search


def tune_with(options: TuneOptions, writer: RunWriter) -> TuneResult:
    if options.data:
        data = tables.load_file_dataset(options.table(), seed=DATA_SEED)
    else:
        data = load_dataset(options.dataset, seed=DATA_SEED)
    kind = space.family(options.model)
    note = kind.note(data, options.epochs or FILE_EPOCHS)
    if note:
        print(note, flush=True)
    _, direction = PRIMARY_METRIC[data.task]
    client = mlflow_store.configure(options.tracking_uri)
    writer.connect(client.tracking_uri)
    experiment_id = mlflow_store.experiment_id(client, options.name)
    url = options.storage_url
    on_stale = StaleTrialCallback()
    on_stale.client = client
    study, invocation = open_study(options, direction, on_stale)
    if isinstance(data, tables.FileDataset):
        records.record_on_study(study, data)
    first = kind.first_trial(data)
    if first and invocation == 0:  # e.g. a new study of NW on a large file starts where row 9 measured
        study.enqueue_trial(first, skip_if_exists=True)
    close_dead_runs(client, experiment_id, study, options.grace)
    seed = sampler_seed(options.seed, invocation)
    study.set_metric_names([f"best_val_{PRIMARY_METRIC[data.task][0]}"])  # named in optuna-dashboard
    study.set_user_attr("protocol", cross_validation.protocol(data))  # how trials are scored: "holdout" or "cv5"
    run_notes.mark_experiment(client, experiment_id)
    before = len(study.trials)
    parent = client.create_run(
        experiment_id,
        run_name=f"tune-{time.strftime('%Y%m%d-%H%M%S')}-{invocation}",
        tags={"optuna.study": options.name, "kind": "tuning", "invocation": str(invocation)},
    ).info.run_id
    log_invocation(client, parent, invocation_params(options, study, url, invocation, seed), data.describe())
    log = MlflowTrialLog(writer, experiment_id, parent, options.name, client.tracking_uri)
    objective = Objective(options, data, log)
    conclusion = search(options, client, experiment_id, parent, study, before, objective, writer)
    trials = study.get_trials(deepcopy=False)
    mine = [t for t in trials if t.number in set(objective.numbers)]
    metric, direction = PRIMARY_METRIC[data.task]
    return TuneResult(
        name=options.name,
        experiment_id=experiment_id,
        parent_run_id=parent,
        tracking_uri=client.tracking_uri,
        sampler_seed=seed,
        conclusion=conclusion,
        states=study_states(mine),
        study_states=study_states(trials),
        metric=metric,
        direction=direction,
    )


def search(options, client, experiment_id, parent, study, before: int, objective: Objective, writer: RunWriter):
    """Optimize, with the parent run beating and sampling the machine; every trial run written (the writer drained)
    before the conclusion reads them, and before the parent run is closed, however the search ends."""
    bar = progress.show_bar(options.progress)
    try:
        with ParentHeartbeat(client, parent, options.heartbeat), SystemMetrics(client, parent):
            with progress.CTRL_C:
                study.optimize(
                    objective,
                    n_trials=options.trials,
                    timeout=options.timeout,
                    n_jobs=objective.jobs,
                    catch=(torch.OutOfMemoryError,),
                    show_progress_bar=bar,
                    callbacks=([] if bar else [progress.trial_line(f"val_{objective.metric}")])
                    + [progress.stop_if_asked],
                )
            writer.drain()  # every trial run written (raises what MLflow refused)
            conclusion = None
            if options.conclude:
                conclusion = conclude(client, parent, study, objective.data, options.storage_url, options.device)
    except KeyboardInterrupt:
        drain = functools.partial(writer.drain, timeout=INTERRUPTED_WAIT_SECONDS)
        raise progress.close_interrupted(client, experiment_id, parent, study, before, drain) from None
    except BaseException:
        writer.drain(quiet=True)
        client.set_terminated(parent, "FAILED")
        raise
    client.set_terminated(parent, "FINISHED")
    return conclusion


def invocation_params(options: TuneOptions, study: optuna.Study, url: str, invocation: int, seed: int) -> dict:
    return {
        "model": options.model,
        "dataset": options.dataset or options.data,
        "study": options.name,
        "trials_requested": options.trials,
        "timeout_s": options.timeout,
        "jobs": options.jobs,
        "device": str(resolve_device(options.device)),
        "seed": options.seed,
        "invocation": invocation,
        "sampler_seed": seed,
        "data_seed": DATA_SEED,
        "protocol": study.user_attrs.get("protocol", "holdout"),
        "sampler": type(study.sampler).__name__,
        "pruner": type(study.pruner).__name__,
        "storage": storage_urls.redact(url),
        "heartbeat_s": options.heartbeat,
        "grace_s": options.grace,
        "concludes": options.conclude,
        "trials_before": len(study.trials),
    }


def conclude_study(
    name: str,
    storage: str | None = None,
    tracking_uri: str | None = None,
    device: str = "auto",
    heartbeat: int = HEARTBEAT_SECONDS,
    grace: int = GRACE_SECONDS,
    data_file: str | None = None,
) -> tuple[Conclusion, MlflowClient, str, str]:
    """`make conclude`: close what dead workers left, then conclude the study in a run of its own, on `data_file`
    (named on its command line) or the data the study records (`study_data`).
    Returns the conclusion, the client, the experiment id and the conclusion's run id."""
    client = mlflow_store.configure(tracking_uri)
    url = storage or places.default_optuna_storage()
    on_stale = StaleTrialCallback()
    on_stale.client = client
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(url, heartbeat, grace, on_stale))
    except KeyError:
        raise TuneError(f"no study {name!r} in {storage_urls.redact(url)}") from None
    data = study_data(study, data_file)  # checked before any run is opened
    experiment_id = mlflow_store.experiment_id(client, name)
    close_dead_runs(client, experiment_id, study, grace)
    run_id = client.create_run(
        experiment_id,
        run_name=f"conclude-{time.strftime('%Y%m%d-%H%M%S')}",
        tags={"optuna.study": name, "kind": "conclusion"},
    ).info.run_id
    try:
        with ParentHeartbeat(client, run_id, heartbeat):
            conclusion = conclude(client, run_id, study, data, url, device)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return conclusion, client, experiment_id, run_id
