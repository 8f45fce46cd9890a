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

from .data import Dataset, Split
from .fit import FitResult, NonFiniteLossError

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
    built_in = not getattr(data, "source", "")  # a user's file (training/tables.py) has a source
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
    data: Dataset, metric: str, train_fold: Callable[[Dataset], FitResult], on_fold: Callable[[int, float, float], None]
) -> FitResult:
    """Train once per fold; after each, `on_fold(fold, its held-out metric, the running mean)` (the tuner
    reports and prunes there). The summary holds the mean held-out metrics and the folds' mean best epoch."""
    results = []
    for number, fold in enumerate(folds(data), 1):
        results.append(train_fold(fold))
        values = [r.val_metrics[metric] for r in results]
        if not math.isfinite(values[-1]):
            raise NonFiniteLossError(f"validation {metric} is {values[-1]} on fold {number}")
        on_fold(number, values[-1], sum(values) / len(values))
    return FitResult(
        history=[row | {"fold": i} for i, r in enumerate(results, 1) for row in r.history],
        best_epoch=round(sum(r.best_epoch for r in results) / len(results)),
        val_metrics={k: sum(r.val_metrics[k] for r in results) / len(results) for k in results[0].val_metrics},
        initial_val_metrics=results[0].initial_val_metrics,
        device=results[0].device,
        seconds=sum(r.seconds for r in results),
    )
