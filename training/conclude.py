"""A study's conclusion: refit its best trial, test it once, register it if it is a new candidate, and
point `@champion` at the best registered version by the **validation** metric (test is only reported).

Workers of one study may all conclude, or none and `make conclude` afterwards: the whole conclusion runs
under the study's storage lock, and a best trial already registered is not refit or registered again.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import optuna
import torch

from . import plots, progress, run_notes, selection, study_plots, table_records, tables, tracking
from .data import Dataset, load_dataset, prepare_model
from .fit import PRIMARY_METRIC, FitResult, evaluate, fit, resolve_device
from .nn import build_model, model_kind, save_checkpoint
from .search_space import default_epochs, rebuild
from .storage import storage_lock

DATA_SEED = 0  # the splits never change between invocations, so a study compares like with like


class ConcludeError(RuntimeError):
    """A study that cannot be concluded (unknown, or no completed trial)."""


@dataclass
class Conclusion:
    best_trial: int
    best_value: float
    best_params: dict
    test_metrics: dict[str, float]
    model_version: str
    registered: bool  # False: the best trial was registered before, by an earlier conclusion
    promoted: bool
    decision: str
    decision_version: str  # the champion after the decision
    metric: str  # the validation metric that selects, e.g. "mse"
    direction: str
    states: dict[str, int]  # every trial of the study, all workers


def study_states(trials: list[optuna.trial.FrozenTrial]) -> dict[str, int]:
    return {s.name.lower(): sum(t.state == s for t in trials) for s in optuna.trial.TrialState}


def candidate_key(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> str:
    """Names a trial across study re-creations (numbers restart when a storage is reset)."""
    return f"{study.study_name}#{trial.number}@{trial.datetime_start.isoformat() if trial.datetime_start else ''}"


def conclude(client, run_id: str, study: optuna.Study, storage_url: str, device: str = "auto") -> Conclusion:
    """Conclude `study` into the MLflow run `run_id`, one conclusion at a time per study."""
    name = study.study_name
    with storage_lock(storage_url, f"conclude:{name}"):
        trials = study.get_trials(deepcopy=False)
        if not any(t.state == optuna.trial.TrialState.COMPLETE for t in trials):
            reasons = {t.number: t.user_attrs.get("fail_reason", t.state.name) for t in trials}
            raise ConcludeError(f"study {name!r} has no completed trial: {reasons}")
        model_name = study.user_attrs["model"]
        data = study_data(study)
        metric, direction = PRIMARY_METRIC[data.task]
        best = study.best_trial
        key = candidate_key(study, best)
        known = [v for v in client.search_model_versions(f"name = '{name}'") if v.tags.get("candidate") == key]
        with mlflow.start_run(run_id=run_id):
            mlflow.log_params({f"best.{k}": v for k, v in best.params.items()})
            mlflow.log_metrics(
                {f"best_val_{metric}": best.value, **{f"trials_{k}": v for k, v in study_states(trials).items()}}
            )
            mlflow.set_tags(
                {
                    "best_trial": best.number,
                    "best_trial_run_id": best.user_attrs.get("mlflow_run_id", ""),
                    "protocol": best.user_attrs.get("protocol", "holdout"),  # "cv5": CV-selected, refit on train+val
                }
            )
            with progress.stage("study plots"):
                log_study_plots(study, metric)
            if known:
                version = known[0]
                test = {k.removeprefix("test_"): float(v) for k, v in version.tags.items() if k.startswith("test_")}
                version_number, sha = str(version.version), version.tags.get("checkpoint_sha256", "")
            else:
                epochs = int(best.user_attrs.get("max_epochs", default_epochs(model_name, data.name)))
                seed = int(best.user_attrs.get("seed", 0))
                refit_epochs = best.user_attrs.get("refit_epochs")  # cross-validated: refit on train+validation
                on = f"train (up to {epochs}" if refit_epochs is None else f"train+validation ({refit_epochs}"
                with progress.stage(f"refit best trial #{best.number} on {on} epochs)"):
                    model, history = refit(model_name, best.params, data, epochs, seed, device, refit_epochs)
                with progress.stage("test on the test split"):
                    test = evaluate(model, data.test, data.task)
                with progress.stage("plots (learning curve, attention)"):
                    log_model_plots(model, data, history, metric)
                with progress.stage("log the model and register it"):
                    log_data_input(data, "holdout" if refit_epochs is None else best.user_attrs.get("protocol", "cv"))
                    tags = {f"val_{metric}": str(best.value), "candidate": key, "optuna.trial": str(best.number)}
                    version_number, sha = log_and_register(model, data, name, run_id, test, metric, tags)
            mlflow.log_metrics({f"test_{k}": v for k, v in test.items()})
            with progress.stage("champion decision"):
                decision = tracking.promote_best(client, name, metric, direction)
            mlflow.set_tags(
                {
                    "registered_version": version_number,
                    "registered_new": not known,
                    "champion_version": decision.version,
                    "champion_promoted": decision.promoted,
                    "champion_decision": decision.reason,
                    "checkpoint_sha256": sha,
                }
            )
        conclusion = Conclusion(
            best.number,
            best.value,
            best.params,
            test,
            version_number,
            not known,
            decision.promoted,
            decision.reason,
            str(decision.version),
            metric,
            direction,
            study_states(trials),
        )
        run_notes.explain(client, mlflow.get_run(run_id).info.experiment_id, run_id, study, conclusion, storage_url)
    return conclusion


def study_data(study: optuna.Study) -> Dataset:
    """The data set a study was tuned on: a built-in one, or the user's file (refused if it changed since)."""
    seed = study.user_attrs.get("data_seed", DATA_SEED)
    spec = table_records.spec_from_study(study.user_attrs)
    if spec is None:
        return load_dataset(study.user_attrs["dataset"], seed=seed)
    data = tables.load_file_dataset(spec, seed=seed)
    table_records.record_on_study(study, data)  # the same file and splits as the trials saw
    return data


def refit(
    model: str,
    params: dict,
    data: Dataset,
    epochs: int,
    seed: int = 0,
    device: str = "auto",
    refit_epochs: int | None = None,
) -> tuple[torch.nn.Module, FitResult]:
    """Rebuild and train a trial's configuration exactly as the trial did; the model comes back on the CPU.

    A cross-validated trial (`refit_epochs`: the folds' mean best epoch) is refit on train+validation for that
    many epochs, keeping the last state: no rows are left to select on before the test."""
    if refit_epochs is not None:
        data = selection.merged(data)
    setup = rebuild(model, params, data, epochs=epochs, seed=seed, device=str(resolve_device(device)))
    if refit_epochs is not None and setup.fit_config.epochs:
        setup.fit_config.epochs, setup.fit_config.patience, setup.fit_config.keep_best = refit_epochs, 0, False
    torch.manual_seed(seed)
    built = prepare_model(build_model(setup.model_kind, setup.model_config), data)
    result = fit(built, data, setup.fit_config)
    return built.cpu().eval(), result


def log_study_plots(study: optuna.Study, metric: str) -> None:
    """Optuna's plots in one offline HTML page; a plot the study cannot draw yet is skipped with a tag saying why."""
    figures, skipped = study_plots.draw_all(study)
    for name, why in skipped.items():
        mlflow.set_tag(f"plot.{name}", f"skipped: {why}")
    if figures:
        mlflow.log_text(study_plots.study_page(study, figures, skipped, f"best_val_{metric}"), "optuna/study.html")


def log_model_plots(model, data: Dataset, history: FitResult, metric: str) -> None:
    figures = {}
    if model_kind(model) == "nw":
        if data.task == "regression":
            figures["nw_predictions.png"] = plots.nw_predictions(model, data)
        figures["nw_attention_heatmap.png"] = plots.nw_attention_heatmap(model, data)
    elif model_kind(model) == "s2s":
        figures["s2s_alignments.png"] = plots.s2s_alignments(model, data)
    elif model_kind(model) == "pixel":
        figures["pixel_attention.png"] = plots.pixel_attention(model, data)
        mlflow.log_metric("gamma", float(model.attention.gamma.detach()))  # how much the attention block weighs in
    else:
        figures["mha_pooling_heatmap.png"] = plots.mha_pooling_heatmap(model, data)
        figures["mha_head_maps.png"] = plots.mha_head_maps(model, data)
    if history.history:
        figures["learning_curve.png"] = plots.learning_curve(history, metric)
    for name, figure in figures.items():
        mlflow.log_figure(figure, f"plots/{name}")
        plots.plt.close(figure)


def log_data_input(data: Dataset, protocol: str = "holdout") -> None:
    """The data set as the run's training input, tagged with the protocol and the rows the model was fit on
    (train+validation after cross-validation)."""
    fitted = data if protocol == "holdout" else selection.merged(data)
    tags = {"protocol": protocol, "fit_rows": str(len(fitted.train))}
    if isinstance(data, tables.FileDataset):
        table_records.log_dataset_input(data, tags)  # the file itself, with its split's row counts
        return
    train = fitted.train
    features = train.x.reshape(len(train), -1).numpy()
    dataset = mlflow.data.from_numpy(features, targets=train.y.numpy(), name=f"{data.name}-train")
    mlflow.log_input(dataset, context="training", tags=tags)


def log_and_register(
    model, data: Dataset, name: str, run_id: str, test: dict, metric: str, tags: dict[str, str]
) -> tuple[str, str]:
    from mlflow.models import infer_signature

    from .pyfunc import example_frame, predict_frame

    example = example_frame(data, model)
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
    tags = tags | {f"test_{k}": str(v) for k, v in test.items()} | {"run_id": run_id, "checkpoint_sha256": sha}
    registered = mlflow.register_model(info.model_uri, name, tags=tags)  # tags in the same call: never a bare version
    return str(registered.version), sha
