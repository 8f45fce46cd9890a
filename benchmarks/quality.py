"""Row 5: model quality against peers on the same splits (peers grid-searched on validation)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import optuna
from sklearn.compose import TransformedTargetRegressor
from sklearn.dummy import DummyRegressor
from sklearn.kernel_ridge import KernelRidge
from sklearn.metrics import accuracy_score, mean_squared_error, r2_score
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from training.conclude import DATA_SEED, refit
from training.data import load_dataset
from training.fit import PRIMARY_METRIC, evaluate
from training.search_space import DEFAULT_EPOCHS
from training.tune import Objective, TuneOptions, study_pruner, study_sampler


@dataclass(frozen=True)
class Task:
    model: str
    dataset: str
    metric: str  # our metric key, and the peers' score below
    label: str
    score: Callable  # sklearn-style score(y_true, y_pred)
    maximize: bool
    peers: dict[str, tuple[Callable, dict]]  # name -> (estimator factory, grid searched on validation)
    budget: tuple[int, int | None]  # our (trials, epochs); None: the data set's default epochs
    quick_budget: tuple[int, int | None]


def centred_kernel_ridge(**params) -> TransformedTargetRegressor:
    """KernelRidge has no intercept: standardize the target around it."""
    return TransformedTargetRegressor(KernelRidge(kernel="rbf", **params), transformer=StandardScaler())


TASKS = {
    "nw-diabetes": Task(
        model="nw",
        dataset="diabetes",
        metric="r2",
        label="test R² (higher is better)",
        score=r2_score,
        maximize=True,
        peers={
            "KNeighborsRegressor": (
                KNeighborsRegressor,
                {"n_neighbors": range(1, 51), "weights": ["uniform", "distance"]},
            ),
            "KernelRidge (rbf)": (
                centred_kernel_ridge,
                {"alpha": np.geomspace(1e-3, 10, 9), "gamma": np.geomspace(1e-4, 1, 9)},
            ),
        },
        budget=(40, None),
        quick_budget=(4, None),
    ),
    "mha-digits": Task(
        model="mha",
        dataset="digits",
        metric="accuracy",
        label="test accuracy (higher is better)",
        score=accuracy_score,
        maximize=True,
        peers={
            "SVC (rbf)": (SVC, {"C": np.geomspace(0.1, 100, 7), "gamma": ["scale", 1e-3, 1e-2]}),
            "KNeighborsClassifier": (KNeighborsClassifier, {"n_neighbors": range(1, 16)}),
        },
        budget=(8, 15),
        quick_budget=(1, 2),
    ),
    "mha-adding": Task(
        model="mha",
        dataset="adding",
        metric="mse",
        label="test MSE (lower is better)",
        score=mean_squared_error,
        maximize=False,
        peers={"constant predictor (train mean)": (DummyRegressor, {})},
        budget=(4, 8),
        quick_budget=(1, 1),
    ),
}


def ours(model: str, dataset: str, trials: int, epochs: int | None, seed: int = 0) -> tuple[dict, float]:
    """A small in-memory study (no tracking), the best trial refit and tested once."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data = load_dataset(dataset, seed=DATA_SEED)
    options = TuneOptions(model=model, dataset=dataset, trials=trials, epochs=epochs, seed=seed, progress=False)
    metric, direction = PRIMARY_METRIC[data.task]
    start = time.perf_counter()
    study = optuna.create_study(direction=direction, sampler=study_sampler(seed), pruner=study_pruner())
    study.optimize(Objective(options, data), n_trials=trials)
    model_, _ = refit(model, study.best_params, data, epochs or DEFAULT_EPOCHS[dataset], seed, options.device)
    return evaluate(model_, data.test, data.task), time.perf_counter() - start


def arrays(dataset: str):
    data = load_dataset(dataset, seed=DATA_SEED)
    flat = [(s.x.reshape(len(s), -1).numpy(), s.y.numpy()) for s in (data.train, data.val, data.test)]
    scaler = StandardScaler().fit(flat[0][0])  # fitted on train only
    return [(scaler.transform(x), y) for x, y in flat]


def grid_search(make, grid: dict, splits, score, maximize: bool) -> tuple[float, dict]:
    """Select on validation, refit on train, score once on test."""
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = splits
    sign = 1 if maximize else -1
    best_params, best = None, -np.inf
    for values in itertools.product(*grid.values()):
        params = dict(zip(grid, values))
        value = sign * score(y_val, make(**params).fit(x_train, y_train).predict(x_val))
        if value > best:
            best_params, best = params, value
    return score(y_test, make(**best_params).fit(x_train, y_train).predict(x_test)), best_params


def run(quick: bool = False) -> list[dict]:
    rows = []
    for name, task in TASKS.items():
        trials, epochs = task.quick_budget if quick else task.budget
        metrics, seconds = ours(task.model, task.dataset, trials, epochs)
        splits = arrays(task.dataset)
        searched = {
            peer: grid_search(make, grid, splits, task.score, task.maximize)
            for peer, (make, grid) in task.peers.items()
        }
        budget = f"{trials} trials" + (f" x {epochs} epochs" if epochs else "") + f", {seconds:.0f} s"
        rows.append(
            {
                "task": name,
                "metric": task.label,
                "ours": metrics[task.metric],
                "peers": {peer: value for peer, (value, _) in searched.items()},
                "ours_budget": budget,
                "peer_params": {peer: params for peer, (_, params) in searched.items()},
            }
        )
    return rows
