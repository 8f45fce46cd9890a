"""Where a user's file is recorded: on the Optuna study (so a continued study or a conclusion sees the same
file and splits, and a changed file is refused) and as the MLflow run's dataset input."""

from __future__ import annotations

import warnings

import optuna

from training.data.tables import FileDataset, TableError, TableSpec


def record_on_study(study: optuna.Study, data: FileDataset) -> None:
    """Record the file and its splits on the study, or refuse a file that differs from the one it was tuned on."""
    recorded = {
        "data_file": data.source,
        "data_sha256": data.digest,
        "data_target": data.target,
        "data_features": list(data.features),
        "data_task": data.task,
        "data_splits_sha256": data.splits_digest(),
        "data_id_column": data.id_column,
        "data_order_column": data.order_column,
    }
    before = study.user_attrs
    if "data_sha256" in before and before["data_sha256"] != data.digest:
        raise TableError(
            f"study {study.study_name!r} was tuned on a file with sha256 {before['data_sha256']} "
            f"({before.get('data_file')}); {data.source} now has sha256 {data.digest}. A changed file would "
            "not compare like with like: restore the file, or start a new study with a new NAME="
        )
    for key, value in recorded.items():
        if key in before and before[key] != value:
            raise TableError(
                f"study {study.study_name!r} was tuned with {key.removeprefix('data_')}={before[key]!r}, "
                f"not {value!r}: use the same settings, or start a new study with a new NAME="
            )
    for key, value in recorded.items():
        study.set_user_attr(key, value)


def spec_from_study(attrs: dict) -> TableSpec | None:
    """The file a study was tuned on, from its user attributes (None for a built-in data set)."""
    if "data_file" not in attrs:
        return None
    return TableSpec(
        attrs["data_file"],
        attrs["data_target"],
        tuple(attrs["data_features"]),
        attrs["data_task"],
        attrs.get("data_id_column"),
        attrs.get("data_order_column"),
    )


def log_dataset_input(data: FileDataset, tags: dict[str, str] | None = None) -> None:
    """The file as the run's MLflow dataset input: source, digest, schema, row counts and `tags`."""
    import mlflow

    with warnings.catch_warnings():  # MLflow registers its local-file source twice and says so
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
        dataset = mlflow.data.from_pandas(
            data.frame, source=data.source, targets=data.target, name=data.name, digest=data.digest[:16]
        )
    counts = {f"{split}_{'sequences' if data.kind == 'sequence' else 'rows'}": len(r) for split, r in data.rows.items()}
    tags = (
        {k: str(v) for k, v in counts.items()}
        | {"sha256": data.digest, "file_rows": str(len(data.frame))}
        | (tags or {})
    )
    mlflow.log_input(dataset, context="training", tags=tags)
