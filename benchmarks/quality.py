"""Row 5: model quality against peers on the same splits (peers grid-searched on validation)."""

from __future__ import annotations

import itertools
import time

import numpy as np
import optuna
from sklearn.compose import TransformedTargetRegressor
from sklearn.kernel_ridge import KernelRidge
from sklearn.metrics import accuracy_score, r2_score
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from training.data import load_dataset
from training.fit import PRIMARY_METRIC, evaluate
from training.search_space import DEFAULT_EPOCHS
from training.tune import DATA_SEED, Objective, TuneOptions, refit

BUDGETS = {"nw-diabetes": (40, None), "mha-digits": (8, 15), "mha-adding": (4, 8)}  # (trials, epochs)
QUICK_BUDGETS = {"nw-diabetes": (4, None), "mha-digits": (1, 2), "mha-adding": (1, 1)}


def ours(model: str, dataset: str, trials: int, epochs: int | None, seed: int = 0) -> tuple[dict, float]:
    """A small in-memory study (no tracking), the best trial refit and tested once."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data = load_dataset(dataset, seed=DATA_SEED)
    options = TuneOptions(model=model, dataset=dataset, trials=trials, epochs=epochs, seed=seed, progress=False)
    metric, direction = PRIMARY_METRIC[data.task]
    start = time.perf_counter()
    study = optuna.create_study(
        direction=direction,
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=3),
    )
    study.optimize(Objective(options, data), n_trials=trials)
    model_, _ = refit(options, study.best_params, data, epochs or DEFAULT_EPOCHS[dataset])
    return evaluate(model_, data.test, data.task), time.perf_counter() - start


def arrays(dataset: str):
    data = load_dataset(dataset, seed=DATA_SEED)
    flat = [(s.x.reshape(len(s), -1).numpy(), s.y.numpy()) for s in (data.train, data.val, data.test)]
    scaler = StandardScaler().fit(flat[0][0])  # fitted on train only
    return [(scaler.transform(x), y) for x, y in flat]


def centred_kernel_ridge(**params) -> TransformedTargetRegressor:
    """KernelRidge has no intercept: standardize the target around it."""
    return TransformedTargetRegressor(KernelRidge(kernel="rbf", **params), transformer=StandardScaler())


def grid_search(make, grid: dict, splits, score) -> tuple[float, dict]:
    """Select on validation, refit on train, score once on test."""
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = splits
    best_params, best = None, -np.inf
    for values in itertools.product(*grid.values()):
        params = dict(zip(grid, values))
        value = score(y_val, make(**params).fit(x_train, y_train).predict(x_val))
        if value > best:
            best_params, best = params, value
    return score(y_test, make(**best_params).fit(x_train, y_train).predict(x_test)), best_params


def row(task: str, metric: str, ours: float, peers: dict, budget: str, peer_params: dict) -> dict:
    return {
        "task": task,
        "metric": metric,
        "ours": ours,
        "peers": peers,
        "ours_budget": budget,
        "peer_params": peer_params,
    }


def run(quick: bool = False) -> list[dict]:
    budgets = QUICK_BUDGETS if quick else BUDGETS
    rows = []

    trials, epochs = budgets["nw-diabetes"]
    metrics, seconds = ours("nw", "diabetes", trials, epochs)
    splits = arrays("diabetes")
    knn, knn_params = grid_search(
        KNeighborsRegressor, {"n_neighbors": range(1, 51), "weights": ["uniform", "distance"]}, splits, r2_score
    )
    ridge, ridge_params = grid_search(
        centred_kernel_ridge, {"alpha": np.geomspace(1e-3, 10, 9), "gamma": np.geomspace(1e-4, 1, 9)}, splits, r2_score
    )
    peers = {"KNeighborsRegressor": knn, "KernelRidge (rbf)": ridge}
    budget = f"{trials} trials, {seconds:.0f} s"
    rows.append(
        row(
            "nw-diabetes",
            "test R² (higher is better)",
            metrics["r2"],
            peers,
            budget,
            {"knn": knn_params, "kernel_ridge": ridge_params},
        )
    )

    trials, epochs = budgets["mha-digits"]
    metrics, seconds = ours("mha", "digits", trials, epochs)
    splits = arrays("digits")
    svc, svc_params = grid_search(
        SVC, {"C": np.geomspace(0.1, 100, 7), "gamma": ["scale", 1e-3, 1e-2]}, splits, accuracy_score
    )
    knn, knn_params = grid_search(KNeighborsClassifier, {"n_neighbors": range(1, 16)}, splits, accuracy_score)
    peers = {"SVC (rbf)": svc, "KNeighborsClassifier": knn}
    budget = f"{trials} trials x {epochs} epochs, {seconds:.0f} s"
    rows.append(
        row(
            "mha-digits",
            "test accuracy (higher is better)",
            metrics["accuracy"],
            peers,
            budget,
            {"svc": svc_params, "knn": knn_params},
        )
    )

    trials, epochs = budgets["mha-adding"]
    metrics, seconds = ours("mha", "adding", trials, epochs)
    data = load_dataset("adding", seed=DATA_SEED)
    constant = float(((data.train.y.mean() - data.test.y) ** 2).mean())
    budget = f"{trials} trials x {epochs} epochs, {seconds:.0f} s"
    rows.append(
        row(
            "mha-adding",
            "test MSE (lower is better)",
            metrics["mse"],
            {"constant predictor (train mean)": constant},
            budget,
            {},
        )
    )
    return rows
