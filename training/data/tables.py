"""A user's own data: a CSV or Parquet file as a `Dataset`, validated, split and fingerprinted.

Tabular (the NW model): one row per example, feature columns and a target column. Sequences (the MHA
model): long format, one row per step, an ID column naming the sequence, an ORDER column giving the
step's position, feature columns, and a target that is the same on every step of a sequence; lengths
may differ.

- Features: every numeric column but the target (and ID / ORDER) unless FEATURES names them. Non-numeric
  (categorical) columns are never encoded: they are left out of the default features (and reported), and
  refused when named, so the served model takes exactly the numbers the file holds. Encode a category
  as numbers in the file if it matters.
- Task: TASK= or inferred: a non-numeric or boolean target, or an integer target with at most
  `MAX_INFERRED_CLASSES` distinct values, is classification; anything else numeric is regression.
- Refused, naming the column and rows: missing or infinite values, a non-numeric feature, a constant
  feature, an unknown column, a one-class or constant target, too few rows (or sequences) for the splits.
- Rows are named by their 0-based position among the file's data rows (the header is not a row).
- Splits: a seeded 60/20/20 permutation, per class for classification (stratified), fixed by the seed;
  the splits' and the file's sha256 are recorded on the Optuna study, so a continued study compares
  like with like and a changed file under the same name is refused.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from training.data import families
from training.data.datasets import KINDS, Dataset, Split
from training.nn.integrity import file_sha256

FRACTIONS = (0.6, 0.2)  # train, validation; the rest is test
MIN_ROWS = 10  # at least two examples in each of validation and test
MAX_INFERRED_CLASSES = 20
SHOWN_ROWS = 8  # rows named in an error before "..."
LOAD_MEMORY_FACTOR = 4  # peak memory of loading a file, in multiples of its data's size (measured: about 3)
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
NOT_ENCODED = "categorical columns are not encoded: encode it as numbers in the file or leave it out of FEATURES"


class TableError(ValueError):
    """A file that cannot be tuned on, with the column and rows at fault."""


@dataclass(frozen=True)
class TableSpec:
    path: str
    target: str
    features: tuple[str, ...] = ()  # empty: every numeric column
    task: str | None = None  # "regression" | "classification"; None: inferred
    id_column: str | None = None  # long-format sequences: the sequence each row belongs to
    order_column: str | None = None  # and the step's position in it

    @property
    def kind(self) -> str:
        return "sequence" if self.id_column else "tabular"


@dataclass(frozen=True)
class FileDataset(Dataset):
    """A Dataset from a file, with what serving and tracking need to know about it."""

    source: str = ""
    digest: str = ""  # sha256 of the file's bytes
    target: str = ""
    features: tuple[str, ...] = ()
    class_labels: tuple = ()  # the file's label of each class index
    rows: dict[str, list] = field(default_factory=dict)  # per split: file rows (tabular) or sequence ids
    skipped: tuple[str, ...] = ()  # non-numeric columns left out of the default features
    frame: pd.DataFrame | None = None  # the file as read, for MLflow's dataset record
    id_column: str | None = None  # long-format sequences
    order_column: str | None = None

    def splits_digest(self) -> str:
        return hashlib.sha256(json.dumps(self.rows, sort_keys=True, default=str).encode()).hexdigest()

    def describe(self) -> dict[str, object]:
        return super().describe() | {
            "source": self.source,
            "sha256": self.digest,
            "target": self.target,
            "features": list(self.features),
            "class_labels": list(self.class_labels),
            "skipped_non_numeric": list(self.skipped),
            "splits_sha256": self.splits_digest(),
        }


# helpers


def default_name(model: str, path: str) -> str:
    """`nw` + `data/House Prices.csv` -> `nw-house-prices`."""
    return f"{model}-" + (re.sub(r"[^a-z0-9]+", "-", Path(path).stem.lower()).strip("-") or "data")


def check_request(model: str, spec: TableSpec, name: str) -> None:
    """Before reading the file: a target, a usable NAME, and data of the kind the model takes."""
    if not spec.target:
        raise TableError("a data file needs TARGET= (the column to predict)")
    if not NAME_PATTERN.match(name):
        raise TableError(f"NAME {name!r} must be letters, digits, '-' or '_' (it names the archive and the URL)")
    taken = families.family(model)
    if taken.file is None:
        sets = ", ".join(d for d, kinds in KINDS.items() if taken.data in kinds)
        raise TableError(
            f"model {model!r} takes {taken.data}s, which a data file does not hold: tune it on DATASET={sets}"
        )
    wanted = taken.file
    if spec.kind != wanted:
        hint = "one row per example, no ID=" if wanted == "tabular" else "long format: ID= and ORDER= columns"
        raise TableError(f"model {model!r} takes {wanted} data ({hint})")


def memory_needed(path: Path) -> int:
    """Bytes loading `path` may take at its peak: the parsed frame, its tensors and the splits, about
    `LOAD_MEMORY_FACTOR` times the data's size (a CSV's bytes, a Parquet file's uncompressed bytes)."""
    size = path.stat().st_size
    if path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        metadata = pq.ParquetFile(path).metadata
        size = max(size, sum(metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups)))
    return LOAD_MEMORY_FACTOR * size


def check_fits_in_memory(path: Path) -> None:
    """Refuse a file too large to load here before loading it, saying what it would need."""
    import psutil

    needed, available = memory_needed(path), psutil.virtual_memory().available
    if needed > available:
        raise TableError(
            f"{path.name} is {path.stat().st_size / 2**30:.1f} GiB; loading it would need about {needed / 2**30:.1f} "
            f"GiB of memory and {available / 2**30:.1f} GiB is available: use a machine with more memory, or a "
            "sample of the rows (see docs/your-own-data.md, large files)"
        )


def read_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise TableError(f"no data file at {path}")
    check_fits_in_memory(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            frame = pd.read_csv(path)
        elif suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        else:
            raise TableError(f"{path.name}: expected a .csv or .parquet file")
    except (ValueError, OSError, pd.errors.ParserError) as error:
        if isinstance(error, TableError):
            raise
        raise TableError(f"{path.name} cannot be read: {error}") from None
    frame.columns = [str(c) for c in frame.columns]
    duplicated = sorted({c for c in frame.columns if list(frame.columns).count(c) > 1})
    if duplicated:
        raise TableError(f"{path.name}: duplicated column names {duplicated}")
    return frame.reset_index(drop=True)


def rows_text(rows) -> str:
    rows = [int(r) for r in rows]
    shown = ", ".join(str(r) for r in rows[:SHOWN_ROWS])
    return (
        f"row {shown}"
        if len(rows) == 1
        else f"rows {shown}" + (f", ... ({len(rows)} in all)" if len(rows) > SHOWN_ROWS else "")
    )


def check_column(frame: pd.DataFrame, name: str, role: str) -> None:
    if name not in frame.columns:
        raise TableError(f"unknown {role} column {name!r}; the file has columns {', '.join(frame.columns)}")
    missing = frame.index[frame[name].isna()]
    if len(missing):
        raise TableError(f"column {name!r} has missing values in {rows_text(missing)}: fill or drop them in the file")


def check_feature(frame: pd.DataFrame, name: str) -> None:
    check_column(frame, name, "feature")
    values = numeric_values(frame, name)
    if np.all(values == values[0]):
        raise TableError(f"column {name!r} is constant ({values[0]:g} in every row): leave it out with FEATURES=")


def numeric_values(frame: pd.DataFrame, name: str, hint: str = NOT_ENCODED) -> np.ndarray:
    """A present column without missing values as float64, refused naming the rows if not numeric or infinite."""
    column = frame[name]
    if not pd.api.types.is_numeric_dtype(column):
        bad = frame.index[pd.to_numeric(column, errors="coerce").isna()]
        raise TableError(f"column {name!r} is not numeric ({rows_text(bad)}: {column[bad[0]]!r}); {hint}")
    values = column.to_numpy(dtype=np.float64)
    infinite = frame.index[~np.isfinite(values)]
    if len(infinite):
        raise TableError(f"column {name!r} has infinite values in {rows_text(infinite)}")
    return values


def choose_features(frame: pd.DataFrame, spec: TableSpec) -> tuple[list[str], list[str]]:
    """(features, non-numeric columns left out)."""
    reserved = {spec.target, spec.id_column, spec.order_column} - {None}
    if spec.features:
        chosen = list(spec.features)
        for name in chosen:
            if name in reserved:
                raise TableError(f"column {name!r} is the target, ID or ORDER column, not a feature")
        skipped: list[str] = []
    else:
        others = [c for c in frame.columns if c not in reserved]
        chosen = [c for c in others if pd.api.types.is_numeric_dtype(frame[c])]
        skipped = [c for c in others if c not in chosen]
    if not chosen:
        raise TableError(f"no numeric feature column besides the target; non-numeric columns: {', '.join(skipped)}")
    for name in chosen:
        check_feature(frame, name)
    return chosen, skipped


def infer_task(target: pd.Series) -> str:
    if not pd.api.types.is_numeric_dtype(target) or pd.api.types.is_bool_dtype(target):
        return "classification"
    if pd.api.types.is_integer_dtype(target) and target.nunique() <= MAX_INFERRED_CLASSES:
        return "classification"
    return "regression"


def encode_target(target: pd.Series, task: str) -> tuple[torch.Tensor, tuple]:
    """Targets as floats (regression) or class indices with the labels they stand for."""
    name = target.name
    if task == "regression":
        if not pd.api.types.is_numeric_dtype(target) or pd.api.types.is_bool_dtype(target):
            bad = target.index[pd.to_numeric(target, errors="coerce").isna()]
            example = f" ({rows_text(bad)}: {target[bad[0]]!r})" if len(bad) else ""
            raise TableError(f"target {name!r} is not numeric{example}: use TASK=classification for labels")
        values = target.to_numpy(dtype=np.float64)
        infinite = target.index[~np.isfinite(values)]
        if len(infinite):
            raise TableError(f"target {name!r} has infinite values in {rows_text(infinite)}")
        if np.all(values == values[0]):
            raise TableError(f"target {name!r} is constant ({values[0]:g} in every row): nothing to learn")
        return torch.tensor(values, dtype=torch.float32), ()
    labels = sorted(target.unique().tolist(), key=lambda v: (str(type(v)), v))
    if len(labels) < 2:
        raise TableError(f"target {name!r} has one class ({labels[0]!r} in every row): nothing to classify")
    index = {label: i for i, label in enumerate(labels)}
    return torch.tensor([index[v] for v in target.tolist()], dtype=torch.long), tuple(labels)


def split_positions(y: torch.Tensor, task: str, seed: int, what: str) -> tuple[np.ndarray, ...]:
    """Seeded train / validation / test positions; per class (stratified) for classification."""
    n = len(y)
    if n < MIN_ROWS:
        raise TableError(f"the file has {n} {what}; the train/validation/test splits need at least {MIN_ROWS}")
    generator = np.random.default_rng(seed)
    groups = (
        [np.flatnonzero(y.numpy() == c) for c in y.unique().tolist()] if task == "classification" else [np.arange(n)]
    )
    parts: list[list[np.ndarray]] = [[], [], []]
    for group in groups:
        order = generator.permutation(group)
        n_train = max(1, round(len(order) * FRACTIONS[0]))
        n_val = round(len(order) * FRACTIONS[1])
        for part, chunk in zip(parts, (order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :])):
            part.append(chunk)
    return tuple(np.sort(np.concatenate(part)) for part in parts)


def _rare_classes(y: torch.Tensor, labels: tuple, target: str, rows: list) -> None:
    counts = torch.bincount(y, minlength=len(labels))
    for c, count in enumerate(counts.tolist()):
        if count < 3:
            where = [rows[i] for i in torch.nonzero(y == c).flatten().tolist()]
            raise TableError(
                f"target {target!r} class {labels[c]!r} has {count} example(s) ({', '.join(map(str, where))}); "
                "each class needs at least 3, one for each split"
            )


# data sets


def load_file_dataset(spec: TableSpec, seed: int = 0) -> FileDataset:
    """Read, validate and split `spec.path` (see the module docstring for what is accepted)."""
    path = Path(spec.path)
    frame = read_table(path)
    if spec.task not in (None, "regression", "classification"):
        raise TableError(f"TASK must be regression or classification, got {spec.task!r}")
    check_column(frame, spec.target, "target")
    if spec.kind == "sequence":
        if not spec.order_column:
            raise TableError("long-format sequences need ORDER= (the column giving each step's position) with ID=")
        check_column(frame, spec.id_column, "ID")
        check_column(frame, spec.order_column, "ORDER")
    features, skipped = choose_features(frame, spec)
    task = spec.task or infer_task(frame[spec.target])
    common = {
        "source": str(path.resolve()),
        "digest": file_sha256(path),
        "target": spec.target,
        "features": tuple(features),
        "id_column": spec.id_column,
        "order_column": spec.order_column,
    }
    common |= {"skipped": tuple(skipped), "frame": frame}
    build = _sequences if spec.kind == "sequence" else _tabular
    return build(frame, spec, features, task, seed, common)


def _tabular(frame, spec: TableSpec, features, task, seed, common) -> FileDataset:
    x = torch.tensor(frame[features].to_numpy(dtype=np.float64), dtype=torch.float32)  # (N, D)
    y, labels = encode_target(frame[spec.target], task)
    rows = frame.index.tolist()
    if task == "classification":
        _rare_classes(y, labels, spec.target, [f"row {r}" for r in rows])
    parts = split_positions(y, task, seed, "rows")
    full = Split(x, y)
    splits = [full.subset(torch.from_numpy(p)) for p in parts]
    names = ("train", "val", "test")
    return FileDataset(
        Path(spec.path).stem,
        task,
        *splits,
        n_classes=len(labels),
        class_labels=labels,
        rows={n: [rows[i] for i in p] for n, p in zip(names, parts)},
        **common,
    )


def _sequences(frame, spec: TableSpec, features, task, seed, common) -> FileDataset:
    ids, order, target = spec.id_column, spec.order_column, spec.target
    sequences, targets, names = [], [], []
    for key, group in frame.groupby(ids, sort=True):
        repeated = group.index[group[order].duplicated(keep=False)]
        if len(repeated):
            raise TableError(f"sequence {key!r} repeats an {order!r} value in {rows_text(repeated)}")
        if group[target].nunique() > 1:
            raise TableError(
                f"target {target!r} differs within sequence {key!r} ({rows_text(group.index)}): one target per sequence"
            )
        group = group.sort_values(order)
        sequences.append(torch.tensor(group[features].to_numpy(dtype=np.float64), dtype=torch.float32))  # (T, D)
        targets.append(group[target].iloc[0])
        names.append(key.item() if hasattr(key, "item") else key)
    y, labels = encode_target(pd.Series(targets, name=target), task)
    if task == "classification":
        _rare_classes(y, labels, target, [f"sequence {n!r}" for n in names])
    lengths = torch.tensor([len(s) for s in sequences])
    x = torch.nn.utils.rnn.pad_sequence(sequences, batch_first=True)  # (N, T, D)
    parts = split_positions(y, task, seed, "sequences")
    full = Split(x, y, lengths)
    splits = [full.subset(torch.from_numpy(p)) for p in parts]
    return FileDataset(
        Path(spec.path).stem,
        task,
        *splits,
        n_classes=len(labels),
        class_labels=labels,
        rows={n: [names[i] for i in p] for n, p in zip(("train", "val", "test"), parts)},
        **common,
    )


def model_fields(data: Dataset, keys: bool = False) -> dict:
    """What a model config records about a file's data (empty for the built-in data sets); with `keys` (a model
    that keeps the training rows as keys: NW), their classes and file rows too."""
    if not isinstance(data, FileDataset):
        return {}
    fields = {"feature_names": list(data.features), "class_labels": list(data.class_labels) or None}
    if keys:
        fields |= {"n_classes": data.n_classes, "key_rows": [int(r) for r in data.rows["train"]]}
    return fields
