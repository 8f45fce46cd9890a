"""How a trial is scored: one validation split, or k-fold cross-validation on train+validation for small data.

On a few hundred rows one validation split is noisy: which trial wins depends on which rows fell into it.
Below `SMALL_DATA_ROWS` rows of train+validation, each trial is trained k times, each fold's rows held out
once (seeded, deterministic folds), and scored by the mean of the held-out metrics; the conclusion then
refits the winner on all of train+validation (more keys for Nadaraya-Watson, more rows for the others) for
the folds' mean best epoch, before the single test evaluation. Larger data sets keep the single split.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch

from training.data.datasets import Dataset, Split
from training.fit.loop import FitResult, NonFiniteLossError

SMALL_DATA_ROWS = 1000  # train+validation rows below which trials are cross-validated
N_FOLDS = 5
FOLD_SEED = 0  # the folds never change between invocations, so trials compare like with like
# The reference experiment keeps its design (50 training keys, 50 validation points, test against the
# noiseless truth), so that its numbers stay those of the recipe it reproduces.
HOLDOUT_ALWAYS = frozenset({"sine"})


def protocol(data: Dataset) -> str:
    """`"cv5"` (k-fold on train+validation, refit on both) for small data, else `"holdout"` (the validation split)."""
    return f"cv{N_FOLDS}" if uses_cv(data) else "holdout"


def uses_cv(data: Dataset) -> bool:
    built_in = not getattr(data, "source", "")  # a user's file (training/data/tables.py) has a source
    exempt = built_in and data.name in HOLDOUT_ALWAYS
    return not exempt and len(data.train) + len(data.val) < SMALL_DATA_ROWS


def _concat(a: Split, b: Split) -> Split:
    lengths = None if a.lengths is None else torch.cat([a.lengths, b.lengths])
    return Split(torch.cat([a.x, b.x]), torch.cat([a.y, b.y]), lengths)


def _with_splits(data: Dataset, train_index: torch.Tensor, val_index: torch.Tensor, pooled: Split) -> Dataset:
    """`data` with train and validation drawn from the pooled rows; a file's rows follow (NW names keys by row)."""
    changes: dict = {"train": pooled.subset(train_index), "val": pooled.subset(val_index)}
    rows = getattr(data, "rows", None)
    if rows:
        pooled_rows = list(rows["train"]) + list(rows["val"])
        changes["rows"] = rows | {
            "train": [pooled_rows[i] for i in train_index.tolist()],
            "val": [pooled_rows[i] for i in val_index.tolist()],
        }
    return dataclasses.replace(data, **changes)


def folds(data: Dataset, k: int = N_FOLDS, seed: int = FOLD_SEED) -> list[Dataset]:
    """k data sets, each training on k-1 folds of train+validation and validating on the remaining one."""
    pooled = _concat(data.train, data.val)
    order = torch.randperm(len(pooled), generator=torch.Generator().manual_seed(seed))
    parts = order.tensor_split(k)
    return [
        _with_splits(data, torch.cat([p for j, p in enumerate(parts) if j != i]), parts[i], pooled) for i in range(k)
    ]


def merged(data: Dataset) -> Dataset:
    """Train on train+validation; the validation split stays (now in-sample: a learning curve, not a selection)."""
    pooled = _concat(data.train, data.val)
    n = len(pooled)
    return _with_splits(data, torch.arange(n), torch.arange(len(data.train), n), pooled)


def cross_validate(
    data: Dataset,
    metric: str,
    direction: str,
    train_fold: Callable[[Dataset], FitResult],
    on_fold: Callable[[int, float, float], None],
) -> FitResult:
    """Train once per fold for every epoch (no early stop), then choose the epoch by the folds' mean held-out
    curve: a fold's own best epoch would select on the rows it is scored on. After each fold,
    `on_fold(fold, its held-out metric at its best epoch, the best of the mean curve so far)` (the tuner
    reports and prunes there). The summary holds the mean held-out metrics at the chosen epoch (`best_epoch`,
    the refit's length)."""
    curves: list[list[dict[str, float]]] = []  # per fold, the held-out metrics at epochs 0, 1, ...
    seconds = 0.0
    for number, fold in enumerate(folds(data), 1):
        result = train_fold(fold)
        seconds += result.seconds
        curves.append([result.initial_val_metrics] + [strip(row) for row in result.history])
        if not math.isfinite(result.val_metrics[metric]):
            raise NonFiniteLossError(f"validation {metric} is {result.val_metrics[metric]} on fold {number}")
        epoch, mean = best_mean_epoch(curves, metric, direction)
        on_fold(number, result.val_metrics[metric], mean[metric])
    return FitResult(
        history=[mean_at(curves, e) | {"epoch": e} for e in range(1, max(map(len, curves)))],
        best_epoch=epoch,
        val_metrics=mean,
        initial_val_metrics=mean_at(curves, 0),
        device=result.device,
        seconds=seconds,
    )


def strip(row: dict[str, float]) -> dict[str, float]:
    """A fit history row's held-out metrics, without their `val_` prefix."""
    return {k.removeprefix("val_"): v for k, v in row.items() if k.startswith("val_")}


def mean_at(curves: list[list[dict[str, float]]], epoch: int) -> dict[str, float]:
    """The folds' mean metrics at `epoch`; a fold that stopped earlier counts with its last epoch."""
    rows = [curve[min(epoch, len(curve) - 1)] for curve in curves]
    return {k: sum(row[k] for row in rows) / len(rows) for k in rows[0]}


def best_mean_epoch(curves: list[list[dict[str, float]]], metric: str, direction: str) -> tuple[int, dict]:
    means = [mean_at(curves, e) for e in range(max(map(len, curves)))]
    pick = min if direction == "minimize" else max
    epoch = pick(range(len(means)), key=lambda e: means[e][metric])
    return epoch, means[epoch]
