"""What makes a tuning run explain itself in the MLflow UI: its description, the marked winner, git provenance.

The description is MLflow's run note (tag `mlflow.note.content`, markdown, shown on the run page). Links
inside it are hash routes of the MLflow UI (`#/experiments/<id>/runs/<run>`), so they work on whatever
host and port the UI is served from.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from training.infra.places import ROOT
from training.infra.storage_urls import redact
from training.tracking.optuna_private import save_dashboard_note
from training.tracking.review_links import ui_base

NOTE_TAG = "mlflow.note.content"
BEST_TAG, BEST_SUFFIX = "best_trial", " (best)"
PRUNED_SUFFIX = " (pruned)"
TRIALS_VIEW = "trials"  # the key of the shared runs-table view of an experiment's trials
# MLflow 3 opens an experiment on its GenAI pages unless the experiment says it is classic model development.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def run_route(experiment_id: str, run_id: str | None = None) -> str:
    """The UI's route to an experiment's runs table, or to one run (relative: any host, any port).

    `workflowType=machine_learning` keeps MLflow 3 on its model-training pages instead of the GenAI ones."""
    where = f"runs/{run_id}" if run_id else "runs"
    return f"#/experiments/{experiment_id}/{where}?workflowType=machine_learning"


def trials_route(experiment_id: str) -> str:
    """The runs table as the shared view `trials` (see `share_trials_view`): trial runs, best first, with columns."""
    return f"{run_route(experiment_id)}&viewStateShareKey={TRIALS_VIEW}"


def share_trials_view(client: MlflowClient, experiment_id: str, metric: str, direction: str, params: list[str]) -> None:
    """Store the runs-table view a reviewer wants as an MLflow shared view (experiment tag
    `mlflow.sharedViewState.trials`): only the trial runs, sorted by the objective, with the objective, the
    searched parameters and the Optuna state as columns (MLflow 3 shows no metric or parameter column by default)."""
    columns = [f"metrics.`best_val_{metric}`", "metrics.`best_epoch`", "metrics.`epochs_run`"]
    columns += [f"params.`{name}`" for name in params] + ["tags.`optuna.state`"]
    state = {
        "selectedColumns": columns,
        "searchFilter": "attributes.run_name LIKE 'trial-%'",
        "orderByKey": f"metrics.`best_val_{metric}`",
        "orderByAsc": direction == "minimize",
    }
    client.set_experiment_tag(experiment_id, f"mlflow.sharedViewState.{TRIALS_VIEW}", json.dumps(state))


def git_provenance(root: Path) -> dict[str, str]:
    """Commit, branch and dirty state of the checkout as run tags; nothing when it is not a git checkout."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=20)
        if done.returncode:
            raise OSError(done.stderr.strip())
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
        branch = git("rev-parse", "--abbrev-ref", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"mlflow.source.git.commit": commit, "mlflow.source.git.branch": branch, "git.dirty": str(dirty).lower()}


def mark_winner(client: MlflowClient, experiment_id: str, run_id: str) -> None:
    """Tag the best trial's run `best_trial=true` and suffix its name; an earlier winner loses both."""
    earlier = client.search_runs([experiment_id], f"tags.{BEST_TAG} = 'true'", max_results=100)
    for run in earlier:
        if run.info.run_id != run_id:
            client.set_tag(run.info.run_id, BEST_TAG, "false")
            client.update_run(run.info.run_id, name=run.info.run_name.removesuffix(BEST_SUFFIX))
    run = client.get_run(run_id)
    client.set_tag(run_id, BEST_TAG, "true")
    if not run.info.run_name.endswith(BEST_SUFFIX):
        client.update_run(run_id, name=run.info.run_name + BEST_SUFFIX)


def reproduce_command(attrs: dict, commit: str | None, dirty: bool) -> str:
    """How to run the study's search again, from what the study records about itself."""
    if attrs.get("data_file"):
        args = [f"MODEL={attrs.get('model')}", f"DATA={attrs['data_file']}", f"TARGET={attrs.get('data_target')}"]
    else:
        args = [f"MODEL={attrs.get('model')}", f"DATASET={attrs.get('dataset')}"]
    lines = [f"git checkout {commit}" + ("  # the run had uncommitted changes" if dirty else "")] if commit else []
    lines.append("make tune " + " ".join(args) + " STORAGE=sqlite:///fresh-optuna.db")
    return "\n".join(lines)


def description(conclusion, study, *, experiment_id: str, storage: str, best_run_id: str, git: dict[str, str]) -> str:
    """The run's note: the verdict first (the UI shows a few lines before "Show more"), then the study,
    the winning configuration, the code and how to run it again."""
    metric, direction = conclusion.metric, conclusion.direction
    states = ", ".join(f"{k} {v}" for k, v in conclusion.states.items() if v)
    best = f"trial #{conclusion.best_trial}"
    best_link = f"[{best}]({run_route(experiment_id, best_run_id)})" if best_run_id else best
    trials = trials_route(experiment_id)
    params = "\n".join(f"| `{k}` | {json.dumps(v)} |" for k, v in conclusion.best_params.items())
    test = ", ".join(f"{k} **{v:.6g}**" for k, v in conclusion.test_metrics.items())
    commit, dirty = git.get("mlflow.source.git.commit"), git.get("git.dirty") == "true"
    provenance = f"`{commit[:12]}`" + (" with uncommitted changes" if dirty else "") if commit else "not a git checkout"
    verdict = "moved to" if conclusion.promoted else "stays on"
    return f"""**Best: {best_link}**, validation {metric} **{conclusion.best_value:.6g}** ({direction}); refit, on the \
test split: {test} (reported, never used to select). **`@champion` {verdict} version {conclusion.decision_version}**: \
{conclusion.decision.removeprefix(f"version {conclusion.decision_version} stays: ")}.

**Study** `{study.study_name}` (`{redact(storage)}`): {states} trials in all, every worker. \
[Every trial, best first]({trials}): one child run each, sorted by `best_val_{metric}` (pruned runs end \
KILLED, are named "(pruned)" and carry their last validation value; the winner is named "(best)", tag \
`best_trial=true`).

| best parameter | value |
|---|---|
{params}

**Registered** `models:/{study.study_name}/{conclusion.model_version}`. **Code** {provenance}. Run again (the best \
parameters rebuild the model exactly; a fresh storage repeats the whole search):

```
{reproduce_command(study.user_attrs, commit, dirty)}
```

**Artifacts** `optuna/study.html` (history, importances, parallel coordinates, slice, contour, intermediate \
values, timeline; works offline), `plots/` (learning curve with the restored epoch, attention heatmaps).
"""


def trial_links(experiment_id: str, run_id: str, tracking_uri: str) -> dict[str, str]:
    """What a trial carries of its MLflow run (user attrs, shown by optuna-dashboard): its id and address."""
    return {"mlflow_run_id": run_id, "mlflow_run_url": f"{ui_base(tracking_uri)}/{run_route(experiment_id, run_id)}"}


def mark_experiment(client: MlflowClient, experiment_id: str) -> None:
    """Tag the experiment as classic model development. Workers starting together race to set the same tag
    (MLflow's SQL store reads, then inserts: the loser hits the unique key); one write is enough."""
    for key, value in EXPERIMENT_KIND.items():
        if client.get_experiment(experiment_id).tags.get(key) == value:
            continue
        try:
            client.set_experiment_tag(experiment_id, key, value)
        except MlflowException:
            if client.get_experiment(experiment_id).tags.get(key) != value:
                raise


def explain(client: MlflowClient, experiment_id: str, run_id: str, study, conclusion, storage: str) -> None:
    """Give the run its description and provenance, mark the winning trial, note the study for the dashboard."""
    git = git_provenance(ROOT)
    for key, value in git.items():
        client.set_tag(run_id, key, value)
    best = study.best_trial
    best_run_id = best.user_attrs.get("mlflow_run_id", "")
    if best_run_id:
        mark_winner(client, experiment_id, best_run_id)
        url = best.user_attrs.get("mlflow_run_url", "")
        save_dashboard_note(study, f"MLflow run of this trial (the study's best): [{best_run_id}]({url})", best)
    params = sorted({name for trial in study.trials for name in trial.params})
    share_trials_view(client, experiment_id, conclusion.metric, conclusion.direction, params)
    note = description(
        conclusion, study, experiment_id=experiment_id, storage=storage, best_run_id=best_run_id, git=git
    )
    client.set_tag(run_id, NOTE_TAG, note)
    base = ui_base(client.tracking_uri)
    metric, direction = conclusion.metric, conclusion.direction
    save_dashboard_note(
        study,
        f"Objective: validation `{metric}` ({direction}). Latest conclusion in MLflow: "
        f"[{run_id}]({base}/{run_route(experiment_id, run_id)}); "
        f"every trial, best first: [{study.study_name}]({base}/{trials_route(experiment_id)}).",
    )
