"""One fit loop for every model: device selection, seeding, early stopping, an epoch callback.

The callback is how the tuner reports and prunes (it may raise); nothing here knows about Optuna
or MLflow.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.data.datasets import Dataset, Split
from training.fit import translation
from training.fit.families import fit_family_of

# The metric each task is judged by, and its direction.
PRIMARY_METRIC = {
    "regression": ("mse", "minimize"),
    "classification": ("accuracy", "maximize"),
    "translation": ("exact_match", "maximize"),
}


@dataclass
class FitConfig:
    epochs: int = 50
    lr: float = 1e-3
    optimizer: str = "adamw"  # "adamw" | "sgd"
    weight_decay: float = 0.0
    batch_size: int = 64
    patience: int = 10  # epochs without validation improvement before stopping; 0 never stops early
    loss_reduction: str = "mean"  # "mean" | "sum" (the NW reference recipe sums)
    grad_clip: float = 1.0  # max gradient norm; 0 disables
    keep_best: bool = True  # restore the best validation state; False keeps the last (in-sample validation)
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"


@dataclass
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch
    best_epoch: int = 0
    val_metrics: dict[str, float] = field(default_factory=dict)  # of the restored best state
    initial_val_metrics: dict[str, float] = field(default_factory=dict)  # before training (epoch 0)
    device: str = "cpu"
    seconds: float = 0.0


class NonFiniteLossError(RuntimeError):
    """Training diverged: the loss became NaN or infinite."""


EpochCallback = Callable[[int, dict[str, float]], None]


# helpers


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def is_better(value: float, best: float, direction: str) -> bool:
    return value < best if direction == "minimize" else value > best


def model_outputs(model: nn.Module, split: Split, exclude: Tensor | None = None) -> Tensor:
    """Raw predictions (N,), logits (N, C) or (N, T_out, V) for a split; `exclude` is NW's leave-one-out index."""
    return fit_family_of(model).outputs(model, split, exclude)


def loss_fn(model: nn.Module, out: Tensor, y: Tensor, task: str, reduction: str) -> Tensor:
    if task == "translation":
        return translation.loss(out, y, reduction)
    if task == "classification":
        return F.cross_entropy(out, y, reduction=reduction)
    scale = model.y_scaler.std  # regression loss in standardized target units
    return F.mse_loss(out / scale, y / scale, reduction=reduction)


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, task: str, batch_size: int = 1024) -> dict[str, float]:
    """MSE / RMSE / R^2 for regression, accuracy / NLL for classification, in raw units; exact match,
    token accuracy and loss for translation."""
    if task == "translation":
        return translation.evaluate(model, split, batch_size)
    model.eval()
    out = torch.cat(
        [model_outputs(model, split.subset(slice(i, i + batch_size))) for i in range(0, len(split), batch_size)]
    )
    y = split.y
    if task == "classification":
        return {
            "accuracy": (out.argmax(-1) == y).float().mean().item(),
            "nll": F.cross_entropy(out.float(), y).item(),
        }
    mse = F.mse_loss(out.float(), y.float()).item()
    var = y.float().var(unbiased=False).item()
    return {"mse": mse, "rmse": math.sqrt(mse), "r2": 1 - mse / var if var > 0 else float("nan")}


# the loop


def fit(model: nn.Module, data: Dataset, config: FitConfig, on_epoch: EpochCallback | None = None) -> FitResult:
    """Train `model` (already prepared with `prepare_model`) and restore its best validation state."""
    seed_everything(config.seed)
    device = resolve_device(config.device)
    model.to(device)
    train, val = data.train.to(device), data.val.to(device)
    metric, direction = PRIMARY_METRIC[data.task]
    params = [p for p in model.parameters() if p.requires_grad]
    result = FitResult(device=str(device))
    start = time.perf_counter()

    result.val_metrics = result.initial_val_metrics = evaluate(model, val, data.task)
    best_value, best_state = result.val_metrics[metric], copy.deepcopy(model.state_dict())
    if not params:  # non-parametric: nothing to train
        result.seconds = time.perf_counter() - start
        return result

    optimizer = make_optimizer(params, config)
    autocast = device.type == "cuda" and getattr(model, "supports_bf16", False)
    generator = torch.Generator().manual_seed(config.seed)
    stale = 0
    for epoch in range(1, config.epochs + 1):
        model.train()
        losses = []
        for index in shuffled_batches(train, config.batch_size, generator):
            index = index.to(device)
            batch = train.subset(index)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                out = model_outputs(model, batch, exclude=index)
                loss = loss_fn(model, out.float(), batch.y, data.task, config.loss_reduction)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(f"loss is {loss.item()} at epoch {epoch}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            losses.append(loss.item())

        val_metrics = evaluate(model, val, data.task)
        row = {"epoch": epoch, "train_loss": float(np.mean(losses)), **{f"val_{k}": v for k, v in val_metrics.items()}}
        result.history.append(row)
        if not math.isfinite(val_metrics[metric]):
            raise NonFiniteLossError(f"validation {metric} is {val_metrics[metric]} at epoch {epoch}")
        if is_better(val_metrics[metric], best_value, direction):
            best_value, best_state, stale = val_metrics[metric], copy.deepcopy(model.state_dict()), 0
            result.best_epoch, result.val_metrics = epoch, val_metrics
        else:
            stale += 1
        if on_epoch is not None:
            on_epoch(epoch, row)
        if config.patience and stale >= config.patience:
            break

    if config.keep_best:
        model.load_state_dict(best_state)
    else:
        result.val_metrics = evaluate(model, val, data.task)
    model.eval()
    result.seconds = time.perf_counter() - start
    return result


def shuffled_batches(split: Split, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    """Random batches; sequences are grouped by similar length (within pools of 32 batches) so that
    little compute goes to padding."""
    order = torch.randperm(len(split), generator=generator)
    if split.lengths is None:
        return list(order.split(batch_size))
    lengths = split.lengths.cpu()
    pools = order.split(32 * batch_size)
    batches = [b for pool in pools for b in pool[lengths[pool].argsort(stable=True)].split(batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator)]


def make_optimizer(params: list[nn.Parameter], config: FitConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, weight_decay=config.weight_decay)
    raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {config.optimizer!r}")
