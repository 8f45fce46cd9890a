"""One trial: its configuration from the search space, trained on a device of its own, every epoch (or, on
small data, every fold) reported to the pruner, and recorded as an MLflow child run when a log is given."""

from __future__ import annotations

import contextlib
import math
import os
import queue
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import optuna
import torch

from training.data.datasets import Dataset, prepare_model
from training.fit import cross_validation
from training.fit.loop import PRIMARY_METRIC, FitResult, NonFiniteLossError, fit, resolve_device
from training.nn import build_model
from training.search import progress, space
from training.search.options import TuneOptions
from training.search.space import default_epochs, suggest
from training.search.study_storage import flush_trial
from training.tracking import run_notes
from training.tracking.trial_log import MlflowTrialLog, NoTrialLog


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


@contextmanager
def one_intra_op_thread(wanted: bool) -> Iterator[None]:
    """torch's intra-op threads set to one for this thread while it trains, then set back. The setting is the
    calling thread's (OpenMP's), so each trial's thread sets its own when trials run in threads."""
    if not wanted:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Objective:
    """Train one trial's configuration: report every epoch to the pruner, record it in `log` when given."""

    def __init__(self, options: TuneOptions, data: Dataset, log: MlflowTrialLog | NoTrialLog | None = None):
        self.options, self.data, self.log = options, data, log or NoTrialLog()  # no log: nothing tracked
        self.metric, self.direction = PRIMARY_METRIC[data.task]
        self.epochs = options.epochs or default_epochs(options.model, data.name)
        self.protocol = cross_validation.protocol(data)  # "holdout", or "cv5" on small data
        self.devices = DevicePool.for_option(options.device)
        self.jobs = options.jobs or len(self.devices.devices)  # trials at once, each in a thread of this process
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.one_thread = len(data.train) < space.family(options.model).one_thread_rows
        self.numbers: list[int] = []  # the trials this invocation ran (the study holds every worker's)
        self._lock = threading.Lock()

    def __call__(self, trial: optuna.Trial) -> float:
        with self._lock:
            self.numbers.append(trial.number)
        with self.devices.acquire() as device, one_intra_op_thread(self.one_thread):
            return self.train(trial, device)

    def train(self, trial: optuna.Trial, device: str) -> float:
        run = TrialRun(self, trial, device)
        record = run.record
        try:
            result = run.fit()
            value = result.val_metrics[self.metric]
            if not math.isfinite(value):
                raise NonFiniteLossError(f"validation {self.metric} is {value}")
        except optuna.TrialPruned as pruned:
            # Optuna's value of a pruned trial is its last reported one; the run carries the same, so that sorting
            # the runs by the objective keeps them, and its name says it was pruned
            last = {f"best_val_{self.metric}": run.seen[-1]} if run.seen else {}
            timing = run.clock.metrics()
            record.close("PRUNED", "KILLED", str(pruned), timing | last, suffix=run_notes.PRUNED_SUFFIX)
            raise
        except KeyboardInterrupt:
            # Best effort, and nothing here may replace the interrupt: it can cut a database write short
            # (SQLite then reports "database is locked" for a while), and any other exception would fail
            # only this trial and let the study go on. The epochs trained so far are written with the close;
            # `tune` closes the runs left open afterwards.
            with contextlib.suppress(Exception):
                trial.set_user_attr("fail_reason", progress.INTERRUPTED)
            with contextlib.suppress(Exception):
                record.close("FAIL", "KILLED", progress.INTERRUPTED)
            raise
        except NonFiniteLossError as diverged:
            # Returning NaN makes Optuna fail this trial and go on with the study.
            trial.set_user_attr("fail_reason", str(diverged))
            record.close("FAIL", "FAILED", str(diverged))
            return float("nan")
        except BaseException as error:
            record.close("FAIL", "FAILED", f"{type(error).__name__}: {error}")
            raise
        record.close("COMPLETE", "FINISHED", metrics=summary_metrics(result) | run.clock.metrics())
        return value


class TrialClock:
    """A trial's wall and CPU seconds, so that a starved trial (wall much longer than CPU) shows in its run.

    Trials run in this process: one at a time, or in Optuna's threads when n_jobs > 1. Alone, the process's CPU
    time is the trial's, torch's intra-op threads included. Beside other trials it would count theirs too, so then
    the trial thread's own CPU time is taken: a lower bound, as torch's intra-op threads serve every trial and
    cannot be attributed to one. `kind` says which ("process" or "thread"). Read in the trial's thread."""

    def __init__(self, shared: bool):
        self.kind = "thread" if shared else "process"
        self._cpu = time.thread_time if shared else time.process_time
        self._wall_start, self._cpu_start = time.perf_counter(), self._cpu()

    def metrics(self) -> dict[str, float]:
        return {
            "trial_wall_seconds": time.perf_counter() - self._wall_start,
            "trial_cpu_seconds": self._cpu() - self._cpu_start,
        }


class TrialRun:
    """One trial being trained: its setup recorded on the trial and its MLflow run, every epoch (or fold)
    reported to the pruner and the log, the values seen so far kept for a pruned trial's record."""

    def __init__(self, objective: Objective, trial: optuna.Trial, device: str):
        self.objective, self.trial, self.device = objective, trial, device
        self.options, self.metric, self.log = objective.options, objective.metric, objective.log
        self.seen: list[float] = []
        self.clock = TrialClock(shared=objective.jobs > 1)
        self._setup = setup = suggest(
            self.options.model, trial, objective.data, epochs=objective.epochs, seed=self.options.seed, device=device
        )
        params = {**trial.params, "device": device, "seed": self.options.seed, "max_epochs": setup.fit_config.epochs}
        params["cpu_clock"] = self.clock.kind
        self.record = self.log.open(trial, params)  # its MLflow run, written by the run writer; its id comes later
        # what a later conclusion needs to refit this trial exactly, and who runs it
        attrs = {
            "seed": self.options.seed,
            "max_epochs": setup.fit_config.epochs,
            "worker": objective.worker,
            "protocol": objective.protocol,
        }
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        flush_trial(trial)  # its parameters and attributes to the study in one write: other workers see them

    def setup(self, data: Dataset):
        """The trial's setup for `data`: the whole data's is made once; a fold's reads the parameters already
        suggested instead of asking the storage for each again."""
        if data is self.objective.data:
            return self._setup
        return suggest(
            self.options.model,
            Suggested(self.trial),
            data,
            epochs=self.objective.epochs,
            seed=self.options.seed,
            device=self.device,
        )

    def fit(self) -> FitResult:
        """Holdout: train once, reporting every epoch. Small data: cross-validate, reporting every fold."""
        data, objective = self.objective.data, self.objective
        if objective.protocol == "holdout":
            return self.train_on(data, self.on_epoch)
        result = cross_validation.cross_validate(data, self.metric, objective.direction, self.train_on, self.on_fold)
        self.trial.set_user_attr("refit_epochs", result.best_epoch)  # the refit on train+validation trains this long
        return result

    def train_on(self, data: Dataset, callback=None) -> FitResult:
        setup = self.setup(data)
        torch.manual_seed(self.options.seed)
        model = prepare_model(build_model(setup.model_kind, setup.model_config), data)
        return fit(model, data, setup.fit_config, callback)

    def on_epoch(self, epoch: int, row: dict[str, float]) -> None:
        progress.CTRL_C.check()  # a safe point to stop: no database write under way
        self.record.epoch({k: v for k, v in row.items() if k != "epoch"}, epoch)
        self.report(epoch, row[f"val_{self.metric}"], "epoch")

    def on_fold(self, fold: int, value: float, mean: float) -> None:
        # Small data: the pruner's step is the fold, its value the best of the folds' mean curve so far.
        progress.CTRL_C.check()
        self.record.epoch({f"fold_val_{self.metric}": value, f"cv_val_{self.metric}": mean}, fold)
        self.report(fold, mean, "fold")

    def report(self, step: int, value: float, unit: str) -> None:
        self.seen.append(value)
        self.trial.report(value, step)  # kept on the trial, written behind (study_storage.py)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at {unit} {step}: val_{self.metric}={value:.6g} is behind the median")


class Suggested:
    """A trial whose `suggest_*` answer from the parameters it already has (no storage round trip), and ask
    the trial itself for any other."""

    def __init__(self, trial: optuna.Trial):
        self.trial, self.params = trial, trial.params

    def __getattr__(self, name: str):
        method = getattr(self.trial, name)
        if not name.startswith("suggest_"):
            return method

        def known_or_suggested(param: str, *args, **kwargs):
            return self.params[param] if param in self.params else method(param, *args, **kwargs)

        return known_or_suggested


def summary_metrics(result: FitResult) -> dict[str, float]:
    metrics = {f"best_val_{k}": v for k, v in result.val_metrics.items()}
    return metrics | {"epochs_run": len(result.history), "best_epoch": result.best_epoch, "fit_seconds": result.seconds}
