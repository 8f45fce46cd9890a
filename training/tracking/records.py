"""Where a user's file is recorded: on the Optuna study (so a continued study or a conclusion sees the same
file and splits, and a changed file is refused) and as the MLflow run's dataset input.

A record is shared (any worker account can write a study's attributes), so it never alone decides which local
file is read: a file is read when it is the one named on the command line, or the recorded one, and in both
cases only when its sha256 is the recorded one (`checked_file`)."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import optuna

from training.data.tables import FileDataset, TableError, TableSpec
from training.nn.integrity import file_sha256


class DataMismatchError(TableError):
    """The data a command would read is not what the study or version recorded: another file, another sha256,
    or a file where a built-in data set was recorded."""


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
    if before.get("dataset"):  # recorded on a built-in set: it never becomes a file study
        raise DataMismatchError(
            f"study {study.study_name!r} was tuned on the built-in data set {before['dataset']!r}, not on "
            f"{data.source}: start a new study with a new NAME="
        )
    if "data_sha256" in before and before["data_sha256"] != data.digest:
        raise TableError(
            f"study {study.study_name!r} was tuned on a file with sha256 {before['data_sha256']} "
            f"({before.get('data_file')}); {data.source} now has sha256 {data.digest}. A changed file would "
            "not compare like with like: restore the file, or start a new study with a new NAME="
        )
    for key, value in recorded.items():  # the path aside: the sha256 names the file, wherever it is now
        if key != "data_file" and key in before and before[key] != value:
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


def checked_file(spec: TableSpec, digest: str | None, named: str | None, what: str) -> TableSpec:
    """`spec` reading the file `named` on the command line, or else the recorded one (`spec.path`), once its sha256
    is `digest` (what `what` recorded); `DataMismatchError` naming both otherwise, before a byte of it is parsed."""
    path = Path(named or spec.path)
    if not digest:
        raise DataMismatchError(f"{what} records the file {spec.path} but no sha256 of it: not reading {path}")
    if not path.is_file():
        raise DataMismatchError(f"{what} was tuned on {spec.path} (sha256 {digest}); {path} is not a file")
    actual = file_sha256(path)
    if actual != digest:
        raise DataMismatchError(
            f"{what} was tuned on {spec.path} (sha256 {digest}); {path} has sha256 {actual}: not reading it "
            "(name the file it was tuned on with --data / DATA=)"
        )
    return dataclasses.replace(spec, path=str(path))


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
