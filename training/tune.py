"""Hyperparameter search: an Optuna study per `<model>-<dataset>`, every trial an MLflow child run.

One tuning invocation = one MLflow parent run. The best configuration is refit, evaluated once on
the test split, logged as an MLflow model, registered, and made `@champion` only if it beats the
current champion on the test metric.
"""

from __future__ import annotations

import math
import queue
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import optuna
import torch
from mlflow.entities import Metric, Param
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from . import plots, tracking
from .data import KINDS, MODEL_KINDS, Dataset, load_dataset, prepare_model
from .fit import PRIMARY_METRIC, FitResult, NonFiniteLossError, evaluate, fit, resolve_device
from .nn import build_model, model_kind, save_checkpoint
from .search_space import DEFAULT_EPOCHS, SEARCH_SPACES, suggest

# Heartbeats (retrying trials whose process died) are marked experimental in Optuna; we rely on them.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

DATA_SEED = 0  # the splits never change between invocations, so a study compares like with like
HEARTBEAT_SECONDS, GRACE_SECONDS = 30, 120  # a RUNNING trial silent for the grace period is failed and retried


class TuneError(RuntimeError):
    """A tuning request that cannot run, or a study with no usable trial."""


@dataclass
class TuneOptions:
    model: str
    dataset: str
    trials: int = 20
    timeout: float | None = None
    jobs: int = 0  # trials in parallel; 0 = one per GPU on multi-GPU hosts, else 1
    device: str = "auto"
    storage: str | None = None
    seed: int = 0
    epochs: int | None = None
    tracking_uri: str | None = None
    progress: bool = True

    @property
    def name(self) -> str:
        return f"{self.model}-{self.dataset}"

    def validate(self) -> None:
        if self.model not in SEARCH_SPACES:
            raise TuneError(f"unknown model {self.model!r}; expected one of {sorted(SEARCH_SPACES)}")
        if self.dataset not in KINDS:
            raise TuneError(f"unknown data set {self.dataset!r}; expected one of {sorted(KINDS)}")
        wanted = MODEL_KINDS[self.model]
        if KINDS[self.dataset] != wanted:
            fits = sorted(d for d, kind in KINDS.items() if kind == wanted)
            raise TuneError(f"model {self.model!r} takes {wanted} data ({', '.join(fits)}), not {self.dataset!r}")
        if self.trials < 1 or self.jobs < 0:
            raise TuneError("trials must be at least 1 and jobs at least 0 (0: one per GPU, else 1)")
        resolve_device(self.device)


@dataclass
class TuneResult:
    name: str
    experiment_id: str
    parent_run_id: str
    best_trial: int
    best_value: float
    best_params: dict
    test_metrics: dict[str, float]
    model_version: str
    promoted: bool
    decision: str
    states: dict[str, int] = field(default_factory=dict)


# the study


def study_sampler(seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=5)


def study_pruner() -> optuna.pruners.BasePruner:
    """Median pruning once 4 trials finished, from epoch 3 on: weak trials stop early."""
    return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=3)


def open_study(options: TuneOptions, direction: str) -> optuna.Study:
    """Create the study, or continue it: the same name in the same storage is never duplicated."""
    url = options.storage or tracking.default_optuna_storage()
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    storage = optuna.storages.RDBStorage(
        url,
        engine_kwargs=engine,
        heartbeat_interval=HEARTBEAT_SECONDS,
        grace_period=GRACE_SECONDS,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2),
    )
    existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage)}
    previous = existing[options.name].n_trials if options.name in existing else 0
    if options.name in existing and existing[options.name].direction.name.lower() != direction:
        raise TuneError(f"study {options.name!r} in {tracking.redact(url)} optimizes the other direction")
    # The sampler seed moves with the trial count, so a continued study does not replay its first draws.
    study = optuna.create_study(
        storage=storage,
        study_name=options.name,
        direction=direction,
        sampler=study_sampler(options.seed + previous),
        pruner=study_pruner(),
        load_if_exists=True,
    )
    study.set_user_attr("model", options.model)
    study.set_user_attr("dataset", options.dataset)
    study.set_user_attr("data_seed", DATA_SEED)
    return study


class DevicePool:
    """Hands each running trial a device of its own when there are several (one trial per GPU);
    with a single device, every trial uses it."""

    def __init__(self, devices: list[str]):
        self.devices = devices
        self._free: queue.Queue[str] = queue.Queue()
        for device in devices:
            self._free.put(device)

    @classmethod
    def for_option(cls, option: str) -> DevicePool:
        device = resolve_device(option)
        if device.type == "cuda" and device.index is None and torch.cuda.device_count() > 1:
            return cls([f"cuda:{i}" for i in range(torch.cuda.device_count())])
        return cls([str(device)])

    @contextmanager
    def acquire(self) -> Iterator[str]:
        if len(self.devices) == 1:
            yield self.devices[0]
            return
        device = self._free.get()
        try:
            yield device
        finally:
            self._free.put(device)


class MlflowTrialLog:
    """Each trial as an MLflow child run of the tuning invocation's parent run."""

    def __init__(self, client: mlflow.MlflowClient, experiment_id: str, parent: str, study: str):
        self.client, self.experiment_id, self.parent, self.study = client, experiment_id, parent, study

    def start(self, trial: optuna.Trial, params: dict) -> str:
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"trial-{trial.number}",
            tags={MLFLOW_PARENT_RUN_ID: self.parent, "optuna.study": self.study, "optuna.trial": str(trial.number)},
        )
        trial.set_user_attr("mlflow_run_id", run.info.run_id)
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        return run.info.run_id

    def metrics(self, run_id: str, values: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in values.items() if math.isfinite(v)]
        self.client.log_batch(run_id, metrics=metrics)

    def finish(self, run_id: str, state: str, status: str, reason: str | None = None) -> None:
        self.client.set_tag(run_id, "optuna.state", state)
        if reason:
            self.client.set_tag(run_id, "optuna.reason", reason)
        self.client.set_terminated(run_id, status)


class Objective:
    """Train one trial's configuration: report every epoch to the pruner, record it in `log` when given."""

    def __init__(self, options: TuneOptions, data: Dataset, log: MlflowTrialLog | None = None):
        self.options, self.data, self.log = options, data, log
        self.metric, self.direction = PRIMARY_METRIC[data.task]
        self.epochs = options.epochs or DEFAULT_EPOCHS[data.name]
        self.devices = DevicePool.for_option(options.device)

    def __call__(self, trial: optuna.Trial) -> float:
        with self.devices.acquire() as device:
            return self.train(trial, device)

    def train(self, trial: optuna.Trial, device: str) -> float:
        setup = suggest(self.options.model, trial, self.data, epochs=self.epochs, seed=self.options.seed, device=device)
        params = {**trial.params, "device": device, "seed": self.options.seed, "max_epochs": setup.fit_config.epochs}
        run_id = self.log.start(trial, params) if self.log else None

        def on_epoch(epoch: int, row: dict[str, float]) -> None:
            if self.log:
                self.log.metrics(run_id, {k: v for k, v in row.items() if k != "epoch"}, epoch)
            value = row[f"val_{self.metric}"]
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch}: val_{self.metric}={value:.6g} is behind the median")

        try:
            torch.manual_seed(self.options.seed)
            model = prepare_model(build_model(setup.model_kind, setup.model_config), self.data)
            result = fit(model, self.data, setup.fit_config, on_epoch)
            value = result.val_metrics[self.metric]
            if not math.isfinite(value):
                raise NonFiniteLossError(f"validation {self.metric} is {value}")
        except optuna.TrialPruned as pruned:
            self._finish(run_id, "PRUNED", "KILLED", reason=str(pruned))
            raise
        except NonFiniteLossError as diverged:
            # Returning NaN makes Optuna fail this trial and go on with the study.
            trial.set_user_attr("fail_reason", str(diverged))
            self._finish(run_id, "FAIL", "FAILED", reason=str(diverged))
            return float("nan")
        except BaseException as error:
            self._finish(run_id, "FAIL", "FAILED", reason=f"{type(error).__name__}: {error}")
            raise
        if self.log:
            metrics = {f"best_val_{k}": v for k, v in result.val_metrics.items()}
            metrics |= {
                "epochs_run": len(result.history),
                "best_epoch": result.best_epoch,
                "fit_seconds": result.seconds,
            }
            self.log.metrics(run_id, metrics, 0)
        self._finish(run_id, "COMPLETE", "FINISHED")
        return value

    def _finish(self, run_id: str | None, state: str, status: str, reason: str | None = None) -> None:
        if self.log:
            self.log.finish(run_id, state, status, reason)


# the invocation


def tune(options: TuneOptions) -> TuneResult:
    options.validate()
    data = load_dataset(options.dataset, seed=DATA_SEED)
    _, direction = PRIMARY_METRIC[data.task]
    client = tracking.configure(options.tracking_uri)
    experiment_id = tracking.experiment_id(client, options.name)
    study = open_study(options, direction)
    before = len(study.trials)
    parent = client.create_run(
        experiment_id,
        run_name=f"tune-{time.strftime('%Y%m%d-%H%M%S')}",
        tags={"optuna.study": options.name, "kind": "tuning"},
    ).info.run_id
    log_invocation(client, parent, options, study, data)
    objective = Objective(options, data, MlflowTrialLog(client, experiment_id, parent, options.name))
    try:
        study.optimize(
            objective,
            n_trials=options.trials,
            timeout=options.timeout,
            n_jobs=options.jobs or len(objective.devices.devices),
            catch=(torch.OutOfMemoryError,),
            show_progress_bar=options.progress,
        )
        result = conclude(client, experiment_id, parent, options, study, data, objective.epochs)
    except BaseException:
        client.set_terminated(parent, "FAILED")
        raise
    result.states["new_trials"] = len(study.trials) - before
    client.set_terminated(parent, "FINISHED")
    return result


def log_invocation(client, run_id: str, options: TuneOptions, study: optuna.Study, data: Dataset) -> None:
    params = {
        "model": options.model,
        "dataset": options.dataset,
        "study": options.name,
        "trials_requested": options.trials,
        "timeout_s": options.timeout,
        "jobs": options.jobs,
        "device": str(resolve_device(options.device)),
        "seed": options.seed,
        "data_seed": DATA_SEED,
        "sampler": type(study.sampler).__name__,
        "pruner": type(study.pruner).__name__,
        "storage": tracking.redact(options.storage or tracking.default_optuna_storage()),
        "trials_before": len(study.trials),
    }
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    for key, value in tracking.package_versions().items():
        client.set_tag(run_id, f"version.{key}", value)
    client.log_dict(run_id, data.describe(), "data/description.json")


def conclude(client, experiment_id, parent, options, study, data, epochs) -> TuneResult:
    """Refit the best trial, test it once, log the evidence, register it and decide on the champion."""
    states = {s.name.lower(): sum(t.state == s for t in study.trials) for s in optuna.trial.TrialState}
    if not states["complete"]:
        reasons = {t.number: t.user_attrs.get("fail_reason", t.state.name) for t in study.trials}
        raise TuneError(f"study {options.name!r} has no completed trial: {reasons}")
    best = study.best_trial
    metric, direction = PRIMARY_METRIC[data.task]
    model, history = refit(options, best.params, data, epochs)
    test = evaluate(model, data.test, data.task)

    with mlflow.start_run(run_id=parent):
        mlflow.log_params({f"best.{k}": v for k, v in best.params.items()})
        mlflow.log_metrics({f"best_val_{metric}": best.value, **{f"test_{k}": v for k, v in test.items()}})
        mlflow.log_metrics({f"trials_{k}": v for k, v in states.items()})
        mlflow.set_tags({"best_trial": best.number, "best_trial_run_id": best.user_attrs.get("mlflow_run_id", "")})
        log_study_plots(study)
        log_model_plots(model, data, history, metric)
        log_data_input(data)
        version, sha = log_and_register(client, model, data, options.name, parent, test, metric)
        decision = tracking.promote_if_better(client, options.name, version, metric, test[metric], direction)
        mlflow.set_tags(
            {
                "registered_version": version,
                "champion_promoted": decision.promoted,
                "champion_decision": decision.reason,
                "checkpoint_sha256": sha,
            }
        )
    return TuneResult(
        options.name,
        experiment_id,
        parent,
        best.number,
        best.value,
        best.params,
        test,
        version,
        decision.promoted,
        decision.reason,
        states,
    )


def refit(options: TuneOptions, params: dict, data: Dataset, epochs: int) -> tuple[torch.nn.Module, FitResult]:
    """Rebuild and train a trial's configuration exactly as the trial did; the model comes back on the CPU."""
    setup = suggest(
        options.model,
        optuna.trial.FixedTrial(params),
        data,
        epochs=epochs,
        seed=options.seed,
        device=str(resolve_device(options.device)),
    )
    torch.manual_seed(options.seed)
    model = prepare_model(build_model(setup.model_kind, setup.model_config), data)
    result = fit(model, data, setup.fit_config)
    return model.cpu().eval(), result


def log_study_plots(study: optuna.Study) -> None:
    """Optuna's interactive plots as HTML; a plot the study cannot draw yet (too few trials) is skipped."""
    import optuna.visualization as vis

    for name, draw in [
        ("optimization_history", vis.plot_optimization_history),
        ("param_importances", vis.plot_param_importances),
        ("intermediate_values", vis.plot_intermediate_values),
    ]:
        try:
            figure = draw(study)
        except (ValueError, RuntimeError) as error:
            mlflow.set_tag(f"plot.{name}", f"skipped: {error}")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{name}.html"
            figure.write_html(path, include_plotlyjs="cdn")
            mlflow.log_artifact(str(path), "optuna")


def log_model_plots(model, data: Dataset, history: FitResult, metric: str) -> None:
    figures = {}
    if model_kind(model) == "nw":
        figures["nw_predictions.png"] = plots.nw_predictions(model, data)
        figures["nw_attention_heatmap.png"] = plots.nw_attention_heatmap(model, data)
    elif model_kind(model) == "s2s":
        figures["s2s_alignments.png"] = plots.s2s_alignments(model, data)
    else:
        figures["mha_pooling_weights.png"] = plots.mha_pooling_weights(model, data)
    if history.history:
        figures["learning_curve.png"] = plots.learning_curve(history.history, metric)
    for name, figure in figures.items():
        mlflow.log_figure(figure, f"plots/{name}")
        plots.plt.close(figure)


def log_data_input(data: Dataset) -> None:
    train = data.train
    features = train.x.reshape(len(train), -1).numpy()
    dataset = mlflow.data.from_numpy(features, targets=train.y.numpy(), name=f"{data.name}-train")
    mlflow.log_input(dataset, context="training")


def log_and_register(client, model, data: Dataset, name: str, run_id: str, test: dict, metric: str) -> tuple[str, str]:
    from mlflow.models import infer_signature

    from .pyfunc import example_frame, predict_frame

    example = example_frame(data)
    signature = infer_signature(example, predict_frame(model, example))
    versions = tracking.package_versions()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "checkpoint.pt"
        sha = save_checkpoint(model, checkpoint, {"name": name, "run_id": run_id, f"test_{metric}": test[metric]})
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(tracking.ROOT / "training" / "mlflow_model.py"),
            artifacts={"checkpoint": str(checkpoint)},
            code_paths=[str(tracking.ROOT / "training")],
            signature=signature,
            input_example=example,
            pip_requirements=[f"torch=={versions['torch']}", f"mlflow=={versions['mlflow']}"],
        )
    registered = mlflow.register_model(info.model_uri, name)
    tags = {f"test_{k}": str(v) for k, v in test.items()} | {"run_id": run_id, "checkpoint_sha256": sha}
    for key, value in tags.items():
        client.set_model_version_tag(name, registered.version, key, value)
    return str(registered.version), sha
