"""A study's conclusion: refit its best trial, test it once, register it if it is a new candidate, and
point `@champion` at the best registered version by the **validation** metric (test is only reported).

Workers of one study may all conclude, or none and `make conclude` afterwards: the whole conclusion runs
under the study's storage lock, and a best trial already registered is not refit or registered again.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlflow
import optuna
import torch

from training.data import tables
from training.data.datasets import Dataset, load_dataset, prepare_model
from training.fit import cross_validation
from training.fit.loop import PRIMARY_METRIC, FitResult, evaluate, fit, resolve_device
from training.infra.locks import storage_lock
from training.nn import build_model
from training.search import progress
from training.search.space import default_epochs, rebuild
from training.tracking import model_card, model_log, records, registry, retest, run_notes

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


@dataclass
class Candidate:
    """The registered version a conclusion stands on: refit and registered now, or by an earlier conclusion."""

    version: str
    sha256: str
    test: dict[str, float]
    new: bool


def conclude(
    client, run_id: str, study: optuna.Study, data: Dataset, storage_url: str, device: str = "auto"
) -> Conclusion:
    """Conclude `study`, tuned on `data` (what this command read: `study_data`, or a tune's own), into the MLflow
    run `run_id`, one conclusion at a time per study."""
    name = study.study_name
    with storage_lock(storage_url, f"conclude:{name}"):
        trials = completed_trials(study)
        metric, direction = PRIMARY_METRIC[data.task]
        best = study.best_trial  # read once: workers still running may finish a better trial meanwhile
        with mlflow.start_run(run_id=run_id):
            log_search(study, best, trials, metric)
            candidate = known_candidate(client, study, best) or new_candidate(study, best, data, run_id, metric, device)
            mlflow.log_metrics({f"test_{k}": v for k, v in candidate.test.items()})
            with progress.stage("champion decision"):
                decision = registry.promote_best(client, name, metric, direction)
                if decision.promoted:
                    model_card.note_champion(client, name, decision.version)
            mlflow.set_tags(decision_tags(candidate, decision))
        conclusion = Conclusion(
            best_trial=best.number,
            best_value=best.value,
            best_params=best.params,
            test_metrics=candidate.test,
            model_version=candidate.version,
            registered=candidate.new,
            promoted=decision.promoted,
            decision=decision.reason,
            decision_version=str(decision.version),
            metric=metric,
            direction=direction,
            states=study_states(trials),
        )
        run_notes.explain(client, mlflow.get_run(run_id).info.experiment_id, run_id, study, conclusion, storage_url)
    return conclusion


def completed_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Every trial of the study; refused when none completed."""
    trials = study.get_trials(deepcopy=False)
    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in trials):
        reasons = {t.number: t.user_attrs.get("fail_reason", t.state.name) for t in trials}
        raise ConcludeError(f"study {study.study_name!r} has no completed trial: {reasons}")
    return trials


def log_search(
    study: optuna.Study, best: optuna.trial.FrozenTrial, trials: list[optuna.trial.FrozenTrial], metric: str
) -> None:
    """The search as the conclusion run sees it: the best trial, the trial counts, and the study's plots."""
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
        model_log.log_study_plots(study, metric)


def known_candidate(client, study: optuna.Study, best: optuna.trial.FrozenTrial) -> Candidate | None:
    """The version an earlier conclusion registered from this best trial, if any: it is not refit again."""
    key = candidate_key(study, best)
    versions = client.search_model_versions(f"name = '{study.study_name}'")
    version = next((v for v in versions if v.tags.get("candidate") == key), None)
    if version is None:
        return None
    test = {k.removeprefix("test_"): float(v) for k, v in version.tags.items() if k.startswith("test_")}
    return Candidate(str(version.version), version.tags.get("checkpoint_sha256", ""), test, new=False)


def new_candidate(
    study: optuna.Study, best: optuna.trial.FrozenTrial, data: Dataset, run_id: str, metric: str, device: str
) -> Candidate:
    """Refit the best trial, test it once, plot it, and register it as a new version."""
    model_name = study.user_attrs["model"]
    epochs = int(best.user_attrs.get("max_epochs", default_epochs(model_name, data.name)))
    seed = int(best.user_attrs.get("seed", 0))
    refit_epochs = best.user_attrs.get("refit_epochs")  # cross-validated: refit on train+validation
    on = f"train (up to {epochs}" if refit_epochs is None else f"train+validation ({refit_epochs}"
    with progress.stage(f"refit best trial #{best.number} on {on} epochs)"):
        model, history = refit(model_name, best.params, data, epochs, seed, device, refit_epochs)
    with progress.stage("test on the test split"):
        test = evaluate(model, data.test, data.task)
    with progress.stage("plots (learning curve, attention)"):
        model_log.log_model_plots(model, data, history, metric)
    protocol = "holdout" if refit_epochs is None else best.user_attrs.get("protocol", "cv")
    with progress.stage("log the model and register it"):
        model_log.log_data_input(data, protocol)
        key = candidate_key(study, best)
        tags = {f"val_{metric}": str(best.value), "candidate": key, "optuna.trial": str(best.number)}
        seed = int(study.user_attrs.get("data_seed", DATA_SEED))
        tags |= retest.data_tags(data, seed) | {"registered_by": registry.actor()}
        version, sha = model_log.log_and_register(model, data, study.study_name, run_id, test, metric, tags)
        validation = model_card.trial_validation(best.user_attrs.get("mlflow_run_id"), metric, best.value)
        card = model_card.card_for(
            model,
            data,
            name=study.study_name,
            protocol=protocol,
            validation=validation,
            test=test,
            registered_by=tags["registered_by"],
        )
        model_card.describe_version(study.study_name, version, card)
    return Candidate(version, sha, test, new=True)


def decision_tags(candidate: Candidate, decision: registry.ChampionDecision) -> dict:
    return {
        "registered_version": candidate.version,
        "registered_new": candidate.new,
        "champion_version": decision.version,
        "champion_promoted": decision.promoted,
        "champion_decision": decision.reason,
        "checkpoint_sha256": candidate.sha256,
    }


def study_data(study: optuna.Study, data_file: str | None = None) -> Dataset:
    """The data set a study was tuned on: the built-in one it records, or the user's file — `data_file` (named on
    this command line) or else the recorded one, read only when its sha256 is the recorded one. A study recorded on a
    built-in set never becomes a file study: a file recorded or named for it is refused, naming both."""
    attrs, name = study.user_attrs, study.study_name
    seed = attrs.get("data_seed", DATA_SEED)
    spec = records.spec_from_study(attrs)
    if attrs.get("dataset"):
        if spec is not None or data_file:
            raise records.DataMismatchError(
                f"study {name!r} was tuned on the built-in data set {attrs['dataset']!r}, not on the file "
                f"{data_file or spec.path}: not reading it"
            )
        return load_dataset(attrs["dataset"], seed=seed)
    if spec is None:
        raise ConcludeError(f"study {name!r} records neither a built-in data set nor a file")
    spec = records.checked_file(spec, attrs.get("data_sha256"), data_file, f"study {name!r}")
    data = tables.load_file_dataset(spec, seed=seed)
    records.record_on_study(study, data)  # the same file and splits as the trials saw
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
        data = cross_validation.merged(data)
    setup = rebuild(model, params, data, epochs=epochs, seed=seed, device=str(resolve_device(device)))
    if refit_epochs is not None and setup.fit_config.epochs:
        setup.fit_config.epochs, setup.fit_config.patience, setup.fit_config.keep_best = refit_epochs, 0, False
    torch.manual_seed(seed)
    built = prepare_model(build_model(setup.model_kind, setup.model_config), data)
    result = fit(built, data, setup.fit_config)
    return built.cpu().eval(), result
