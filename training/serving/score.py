"""Score a file with the registry's `@champion`, without the server: `make score NAME= DATA= OUT=`.

The champion's checkpoint is downloaded from the registry and checked against its version's
`checkpoint_sha256` tag, as `make archive` does. The file (CSV or Parquet) is read in chunks of `batch_rows`
rows, so memory stays bounded whatever its size; each chunk is checked as training checks a file (a
missing column, missing, non-numeric or infinite values, values beyond the range the server accepts: the
column and rows named, rows counted from 0, the first row after the header), run through the model under
`torch.no_grad`, and appended to a temporary file next to OUT, renamed over OUT at the end: a refused or
interrupted run leaves no OUT behind.

OUT is CSV, one row per input row in order: `row` (the input row's 0-based number), then `prediction`
(regression) or `label` and one `probability_<label>` column per class (classification).

Only Nadaraya-Watson (tabular) models score files: a model tuned on a user's file takes the columns it was
tuned on by name (other columns are ignored); a model of a built-in data set takes `x0, x1, ...`, or the
file's columns in order when the file has exactly as many.
"""

from __future__ import annotations

import csv
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from training.data.families import FAMILIES
from training.data.tables import TableError, check_column, numeric_values, rows_text
from training.nn import Inputs, NadarayaWatson, family_of, load_checkpoint, model_kind
from training.nn.bounds import MAX_ABS_Z  # the range the server accepts
from training.tracking import mlflow_store, registry

SUPPORTED_KINDS = tuple(f.name for f in FAMILIES.values() if f.data == "tabular")  # one row per example
BATCH_ROWS = 65_536  # rows per chunk read and per forward pass
NOT_A_NUMBER = "the model takes numbers in it"


@dataclass(frozen=True)
class Scored:
    out: Path
    rows: int
    version: str
    seconds: float


# helpers


def check_kind(model: torch.nn.Module, name: str) -> None:
    kind = model_kind(model)
    if kind not in SUPPORTED_KINDS:
        raise TableError(
            f"{name} is a {kind!r} model; score takes {', '.join(SUPPORTED_KINDS)} (tabular) models, one row per "
            "example: serve the others (make archive, make serve) and send them requests"
        )


def feature_columns(model: NadarayaWatson, header: list[str], data: Path, name: str) -> list[str]:
    """The file's columns the model reads, in the model's order; refused naming what is missing."""
    config = model.config
    wanted = config.feature_names or [f"x{i}" for i in range(config.in_features)]
    if not config.feature_names and not set(wanted) <= set(header) and len(header) == config.in_features:
        return header  # a built-in data set's model: the file's columns by position
    missing = [c for c in wanted if c not in header]
    if missing:
        raise TableError(
            f"{data.name} lacks column{'s' * (len(missing) > 1)} {', '.join(map(repr, missing))}: {name} takes "
            f"{', '.join(wanted)} (other columns are ignored); the file has {', '.join(header) or 'no columns'}"
        )
    return wanted


def read_header(data: Path) -> list[str]:
    if not data.is_file():
        raise TableError(f"no data file at {data}")
    suffix = data.suffix.lower()
    try:
        if suffix == ".csv":
            return [str(c) for c in pd.read_csv(data, nrows=0).columns]
        if suffix in (".parquet", ".pq"):
            return [str(c) for c in pq.ParquetFile(data).schema_arrow.names]
    except (ValueError, OSError) as error:
        raise TableError(f"{data.name} cannot be read: {error}") from None
    raise TableError(f"{data.name}: expected a .csv or .parquet file")


def read_chunks(data: Path, columns: list[str], batch_rows: int) -> Iterator[pd.DataFrame]:
    """The file's `columns` in chunks of `batch_rows` rows, each indexed by its rows' 0-based numbers in the file."""
    if data.suffix.lower() == ".csv":
        chunks = pd.read_csv(data, usecols=columns, chunksize=batch_rows)
    else:
        batches = pq.ParquetFile(data).iter_batches(batch_size=batch_rows, columns=columns)
        chunks = (batch.to_pandas() for batch in batches)
    start = 0
    try:
        for chunk in chunks:
            chunk.index = pd.RangeIndex(start, start + len(chunk))
            start += len(chunk)
            yield chunk
    except (ValueError, OSError, pd.errors.ParserError) as error:
        raise TableError(f"{data.name} cannot be read after row {start - 1}: {error}") from None


class PartialFileError(RuntimeError):
    """Something is already where `score` writes its partial output (planted there, perhaps as a link)."""


def write_atomically(out: Path, header: list[str], frames: Iterable[pd.DataFrame]) -> int:
    """Write the header and `frames` as CSV to a file next to `out`, renamed over it only once all is written.
    The partial file is new (never a file or link found there: another user may have planted one in a shared
    folder) and its owner's alone, as OUT is then: predictions of a private file are private."""
    partial = out.with_name(f".{out.name}.{os.getpid()}.partial")
    try:
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise PartialFileError(f"{partial} exists already (a link planted there?): not writing through it") from None
    rows = 0
    try:
        with os.fdopen(descriptor, "w", newline="") as f:  # a name of its own: this process alone writes it
            csv.writer(f).writerow(header)
            for frame in frames:
                frame.to_csv(f, header=False, index=False)  # float32: the shortest text that reads back exactly
                rows += len(frame)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return rows


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity, where the platform tells)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# classes


class Scorer:
    """A champion's NW model over chunks of a file: checked as training checks a file, then predicted."""

    def __init__(self, model: NadarayaWatson, columns: list[str]):
        self.model, self.columns = model, columns
        self.predict = family_of(model).predict  # the handler's and the MLflow model form's predictor
        config = model.config
        self.labels = [str(label) for label in config.class_labels or range(config.n_classes)]
        mean, std = model.x_scaler.mean.double().numpy(), model.x_scaler.std.double().numpy()
        self.low, self.high = mean - MAX_ABS_Z * std, mean + MAX_ABS_Z * std  # (D,)

    @property
    def header(self) -> list[str]:
        return ["row"] + (
            ["label"] + [f"probability_{label}" for label in self.labels] if self.labels else ["prediction"]
        )

    def check(self, chunk: pd.DataFrame) -> np.ndarray:
        """A chunk's feature values (N, D) float64, refused naming the column and rows at fault."""
        values = []
        for i, name in enumerate(self.columns):
            check_column(chunk, name, "feature")
            column = numeric_values(chunk, name, NOT_A_NUMBER)  # (N,)
            beyond = chunk.index[(column < self.low[i]) | (column > self.high[i])]
            if len(beyond):
                raise TableError(
                    f"column {name!r} is beyond what the model accepts in {rows_text(beyond)} "
                    f"({column[beyond[0] - chunk.index[0]]:.6g}; accepted [{self.low[i]:.6g}, {self.high[i]:.6g}], "
                    f"the training data's mean ± {MAX_ABS_Z:g} standard deviations)"
                )
            values.append(column)
        return np.stack(values, axis=1)  # (N, D)

    @torch.no_grad()
    def score(self, chunk: pd.DataFrame) -> pd.DataFrame:
        """A checked chunk's rows as OUT's rows: row number, then the prediction or label and probabilities."""
        x = torch.from_numpy(self.check(chunk)).float()  # (N, D), as the MLflow model (pyfunc) takes it
        out = self.predict(self.model, Inputs(x)).out  # (N,) or (N, C) log-probabilities
        rows = {"row": chunk.index.to_numpy()}
        if not self.labels:
            return pd.DataFrame(rows | {"prediction": out.numpy()})
        p = out.exp().numpy()  # (N, C)
        labels = np.asarray(self.labels, dtype=object)[p.argmax(-1)]
        return pd.DataFrame(rows | {"label": labels} | {h: p[:, c] for c, h in enumerate(self.header[2:])})


# scoring


def score_file(
    name: str,
    data: str | Path,
    out: str | Path,
    tracking_uri: str | None = None,
    batch_rows: int = BATCH_ROWS,
    threads: int | None = None,
) -> Scored:
    """Score every row of `data` with `name`'s `@champion` into the CSV `out` (see the module docstring)."""
    data, out = Path(data), Path(out)
    if batch_rows < 1:
        raise ValueError(f"batch rows must be positive, got {batch_rows}")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"no folder {out.parent} for {out.name}")
    if out.resolve() == data.resolve():
        raise ValueError(f"OUT {out} is the data file itself")
    start = time.perf_counter()
    header = read_header(data)
    client = mlflow_store.configure(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        version, checkpoint = registry.download_champion(client, name, Path(tmp))
        model, _ = load_checkpoint(checkpoint)
    check_kind(model, name)
    scorer = Scorer(model, feature_columns(model, header, data, name))
    with torch_threads(threads or available_cpus()):
        chunks = read_chunks(data, scorer.columns, batch_rows)
        rows = write_atomically(out, scorer.header, (scorer.score(chunk) for chunk in chunks))
    return Scored(out, rows, str(version.version), time.perf_counter() - start)
