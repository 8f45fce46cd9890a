"""A concluded model in MLflow: the study's plots, the model's plots, the data it was fit on as the run's input, and
the logged pyfunc model (its checkpoint and the name of its loader module: no code) registered as a new version (tags
in the same call: never a bare version)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import optuna

from training.data import tables
from training.data.datasets import Dataset
from training.data.frames import example_frame, predict_frame
from training.fit import cross_validation
from training.fit.loop import FitResult
from training.fit.novelty_reference import novelty_reference
from training.nn import save_checkpoint
from training.tracking import mlflow_store, model_files, plots, records, study_plots
from training.tracking.families import tracking_family_of


def log_study_plots(study: optuna.Study, metric: str) -> None:
    """Optuna's plots in one offline HTML page; a plot the study cannot draw yet is skipped with a tag saying why."""
    figures, skipped = study_plots.draw_all(study)
    for name, why in skipped.items():
        mlflow.set_tag(f"plot.{name}", f"skipped: {why}")
    if figures:
        mlflow.log_text(study_plots.study_page(study, figures, skipped, f"best_val_{metric}"), "optuna/study.html")


def log_model_plots(model, data: Dataset, history: FitResult, metric: str) -> None:
    family = tracking_family_of(model)
    figures, metrics = family.figures(model, data), family.metrics(model)
    if metrics:
        mlflow.log_metrics(metrics)
    if history.history:
        figures["learning_curve.png"] = plots.learning_curve(history, metric)
    for name, figure in figures.items():
        mlflow.log_figure(figure, f"plots/{name}")
        plots.plt.close(figure)


def log_data_input(data: Dataset, protocol: str = "holdout") -> None:
    """The data set as the run's training input, tagged with the protocol and the rows the model was fit on
    (train+validation after cross-validation)."""
    fitted = data if protocol == "holdout" else cross_validation.merged(data)
    tags = {"protocol": protocol, "fit_rows": str(len(fitted.train))}
    if isinstance(data, tables.FileDataset):
        records.log_dataset_input(data, tags)  # the file itself, with its split's row counts
        return
    train = fitted.train
    features = train.x.reshape(len(train), -1).numpy()
    dataset = mlflow.data.from_numpy(features, targets=train.y.numpy(), name=f"{data.name}-train")
    mlflow.log_input(dataset, context="training", tags=tags)


def log_and_register(
    model, data: Dataset, name: str, run_id: str, test: dict, metric: str, tags: dict[str, str]
) -> tuple[str, str]:
    from mlflow.models import infer_signature

    example = example_frame(data, model)
    signature = infer_signature(example, predict_frame(model, example))
    versions = mlflow_store.package_versions()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / model_files.CHECKPOINT
        metadata = {"name": name, "run_id": run_id, f"test_{metric}": test[metric]}
        # What the handler's novelty metrics compare served inputs with: the test split's inputs, never trained on.
        metadata["novelty_reference"] = novelty_reference(model, data.test)
        sha = save_checkpoint(model, checkpoint, metadata)
        # Data, not code: the checkpoint and a loader module installed with the project; no code paths.
        info = mlflow.pyfunc.log_model(
            name="model",
            loader_module=model_files.LOADER_MODULE,
            data_path=str(checkpoint),
            signature=signature,
            input_example=example,
            pip_requirements=[f"torch=={versions['torch']}", f"mlflow=={versions['mlflow']}"],
        )
    tags = tags | {f"test_{k}": str(v) for k, v in test.items()} | {"run_id": run_id, "checkpoint_sha256": sha}
    registered = mlflow.register_model(info.model_uri, name, tags=tags)  # tags in the same call: never a bare version
    return str(registered.version), sha
