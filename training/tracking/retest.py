"""`make archive`'s gate: a registered version's test metrics computed again, from the data it records it was tuned
on, and compared with the ones it records before an archive of it is signed.

Whoever can write the registry writes versions (on a tracking server, every worker account): the weights a poisoned
version carries have to earn its recorded test metrics on the real test split. A built-in data set is always at hand;
a user's file when the one named (`make archive DATA=`), or else the recorded one, has the recorded sha256
(`records.checked_file`). Where the data is not at hand the gate says so (`DataNotAtHandError`), and `make archive
UNVERIFIED=1` signs without it.
"""

from __future__ import annotations

import json
import math

import torch

from training.data import tables
from training.data.datasets import Dataset, load_dataset
from training.data.tables import FileDataset, TableSpec
from training.fit.loop import evaluate
from training.tracking import records
from training.tracking.registry import RegistryError

REL_TOL, ABS_TOL = 1e-4, 1e-6  # recomputed vs registered test metric: float noise passes, other weights do not


class RetestError(RegistryError):
    """A version's test metrics could not be confirmed before signing its archive."""


class DataNotAtHandError(RetestError):
    """The data a version records it was tuned on is not here (or is not what it records, or not recorded at all)."""


class MetricMismatchError(RetestError):
    """A version's test metric computed again differs from the one it records beyond the tolerance."""


def data_tags(data: Dataset, seed: int) -> dict[str, str]:
    """What a registered version records of the data it was tuned on, for `retest`."""
    if isinstance(data, FileDataset):
        spec = {"path": data.source, "target": data.target, "features": list(data.features), "task": data.task}
        spec |= {"id_column": data.id_column, "order_column": data.order_column}
        return {"data_seed": str(seed), "data_file": json.dumps(spec), "data_sha256": data.digest}
    return {"data_seed": str(seed), "dataset": data.name}


def recorded_data(version, data_file: str | None = None) -> Dataset:
    """The data set `version` records it was tuned on, from `data_file` or the recorded file when one is recorded."""
    what, tags = f"{version.name} version {version.version}", version.tags
    seed = int(tags.get("data_seed", 0))
    if tags.get("dataset"):
        try:
            return load_dataset(tags["dataset"], seed=seed)
        except ValueError as error:
            raise DataNotAtHandError(f"{what}: {error}") from None
    if "data_file" not in tags:
        raise DataNotAtHandError(f"{what} records no data it was tuned on (registered before versions recorded it)")
    fields = json.loads(tags["data_file"])
    spec = TableSpec(**{**fields, "features": tuple(fields["features"])})
    try:
        spec = records.checked_file(spec, tags.get("data_sha256"), data_file, what)
    except (records.DataMismatchError, OSError) as error:
        raise DataNotAtHandError(str(error)) from None
    return tables.load_file_dataset(spec, seed=seed)


def retest(version, model: torch.nn.Module, data_file: str | None = None) -> dict[str, float]:
    """The version's test metrics computed again with `model` (its checkpoint); `MetricMismatchError` when one
    differs from the recorded `test_<metric>` beyond REL_TOL/ABS_TOL."""
    what = f"{version.name} version {version.version}"
    recorded = {k.removeprefix("test_"): float(v) for k, v in version.tags.items() if k.startswith("test_")}
    if not recorded:
        raise MetricMismatchError(f"{what} records no test metric to compare with: not signing it")
    data = recorded_data(version, data_file)
    found = evaluate(model, data.test, data.task)
    for metric, value in sorted(recorded.items()):
        again = found.get(metric, math.nan)
        if not agrees(again, value):
            raise MetricMismatchError(
                f"{what}: test {metric} computed again on {data.name} is {again:.6g}, the registry records {value:.6g} "
                f"(tolerance {REL_TOL:g} relative): its weights are not what was tested, so it is not signed"
            )
    return found


def agrees(again: float, value: float) -> bool:
    if math.isnan(again) or math.isnan(value):
        return math.isnan(again) and math.isnan(value)
    return math.isclose(again, value, rel_tol=REL_TOL, abs_tol=ABS_TOL)
