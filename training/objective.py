"""One trial: its configuration from the search space, trained on a device of its own, every epoch (or, on
small data, every fold) reported to the pruner, and recorded as an MLflow child run when a log is given."""

from __future__ import annotations

import contextlib
import math
import os
import queue
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import optuna
import torch

from . import progress, run_notes, selection
from .data import Dataset, prepare_model
from .fit import PRIMARY_METRIC, FitResult, NonFiniteLossError, fit, resolve_device
from .nn import build_model
from .search_space import default_epochs, suggest
from .trial_log import MlflowTrialLog

if TYPE_CHECKING:
    from .tune import TuneOptions


class DevicePool:
    """Hands each running trial a device of its own when there are several (one trial per GPU);
    with a single device, every trial uses it."""

    def __init__(self, devices: list[str]):
        self.devices = devices
        self._free: queue.Queue[str] = queue.Queue()
        for device in devices:
            self._free.put(device)

    @classmethod
    def for_option(cls, option: str) -> DevicePool:
        device = resolve_device(option)
        if device.type == "cuda" and device.index is None and torch.cuda.device_count() > 1:
            return cls([f"cuda:{i}" for i in range(torch.cuda.device_count())])
        return cls([str(device)])

    @contextmanager
    def acquire(self) -> Iterator[str]:
        if len(self.devices) == 1:
            yield self.devices[0]
            return
        device = self._free.get()
        try:
            yield device
        finally:
            self._free.put(device)


class Objective:
    """Train one trial's configuration: report every epoch to the pruner, record it in `log` when given."""

    def __init__(self, options: TuneOptions, data: Dataset, log: MlflowTrialLog | None = None):
        self.options, self.data, self.log = options, data, log
        self.metric, self.direction = PRIMARY_METRIC[data.task]
        self.epochs = options.epochs or default_epochs(options.model, data.name)
        self.protocol = selection.protocol(data)  # "holdout", or "cv5" on small data
        self.devices = DevicePool.for_option(options.device)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.numbers: list[int] = []  # the trials this invocation ran (the study holds every worker's)
        self._lock = threading.Lock()

    def __call__(self, trial: optuna.Trial) -> float:
        with self._lock:
            self.numbers.append(trial.number)
        with self.devices.acquire() as device:
            return self.train(trial, device)

    def train(self, trial: optuna.Trial, device: str) -> float:
        setup = suggest(self.options.model, trial, self.data, epochs=self.epochs, seed=self.options.seed, device=device)
        params = {**trial.params, "device": device, "seed": self.options.seed, "max_epochs": setup.fit_config.epochs}
        # what a later conclusion needs to refit this trial exactly, and who ran it
        for key, value in [
            ("seed", self.options.seed),
            ("max_epochs", setup.fit_config.epochs),
            ("worker", self.worker),
            ("protocol", self.protocol),
        ]:
            trial.set_user_attr(key, value)
        run_id = self.log.start(trial, params) if self.log else None

        seen: list[float] = []

        def report(step: int, value: float, unit: str) -> None:
            seen.append(value)
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at {unit} {step}: val_{self.metric}={value:.6g} is behind the median")

        def on_epoch(epoch: int, row: dict[str, float]) -> None:
            progress.CTRL_C.check()  # a safe point to stop: no database write under way
            if self.log:
                self.log.metrics(run_id, {k: v for k, v in row.items() if k != "epoch"}, epoch)
            report(epoch, row[f"val_{self.metric}"], "epoch")

        def on_fold(fold: int, value: float, mean: float) -> None:
            # Small data: the pruner's step is the fold, its value the best of the folds' mean curve so far.
            progress.CTRL_C.check()
            if self.log:
                self.log.metrics(run_id, {f"fold_val_{self.metric}": value, f"cv_val_{self.metric}": mean}, fold)
            report(fold, mean, "fold")

        def train_on(data: Dataset, callback=None) -> FitResult:
            fold_setup = suggest(
                self.options.model, trial, data, epochs=self.epochs, seed=self.options.seed, device=device
            )
            torch.manual_seed(self.options.seed)
            model = prepare_model(build_model(fold_setup.model_kind, fold_setup.model_config), data)
            return fit(model, data, fold_setup.fit_config, callback)

        try:
            if self.protocol == "holdout":
                result = train_on(self.data, on_epoch)
            else:
                result = selection.cross_validate(self.data, self.metric, self.direction, train_on, on_fold)
                trial.set_user_attr("refit_epochs", result.best_epoch)  # the refit on train+validation trains this long
            value = result.val_metrics[self.metric]
            if not math.isfinite(value):
                raise NonFiniteLossError(f"validation {self.metric} is {value}")
        except optuna.TrialPruned as pruned:
            if self.log:
                # Optuna's value of a pruned trial is its last reported one; the run carries the same
                run_notes.mark_pruned(self.log.client, run_id, self.metric, seen[-1] if seen else None)
            self._finish(run_id, "PRUNED", "KILLED", reason=str(pruned))
            raise
        except KeyboardInterrupt:
            # Best effort, and nothing here may replace the interrupt: it can cut a database write short
            # (SQLite then reports "database is locked" for a while), and any other exception would fail
            # only this trial and let the study go on. `tune` closes the runs left open afterwards.
            with contextlib.suppress(Exception):
                trial.set_user_attr("fail_reason", progress.INTERRUPTED)
            with contextlib.suppress(Exception):
                self._finish(run_id, "FAIL", "KILLED", reason=progress.INTERRUPTED)
            raise
        except NonFiniteLossError as diverged:
            # Returning NaN makes Optuna fail this trial and go on with the study.
            trial.set_user_attr("fail_reason", str(diverged))
            self._finish(run_id, "FAIL", "FAILED", reason=str(diverged))
            return float("nan")
        except BaseException as error:
            self._finish(run_id, "FAIL", "FAILED", reason=f"{type(error).__name__}: {error}")
            raise
        if self.log:
            metrics = {f"best_val_{k}": v for k, v in result.val_metrics.items()}
            metrics |= {
                "epochs_run": len(result.history),
                "best_epoch": result.best_epoch,
                "fit_seconds": result.seconds,
            }
            self.log.metrics(run_id, metrics, 0)
        self._finish(run_id, "COMPLETE", "FINISHED")
        return value

    def _finish(self, run_id: str | None, state: str, status: str, reason: str | None = None) -> None:
        if self.log:
            self.log.finish(run_id, state, status, reason)
