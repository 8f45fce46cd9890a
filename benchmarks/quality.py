"""Row 5: model quality against peers on the same splits.

Peers are grid-searched by 5-fold cross-validation on train+validation (fixed seeded folds, stratified for
classes), refit on train+validation and scored once on test; the validation-selected variant (chosen on the
validation split, refit on train) is reported beside it. Ours is tuned by the project's own protocol
(`training/fit/cross_validation.py`: cross-validated on small data sets, then refit on train+validation).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import optuna
import torch
from sklearn.compose import TransformedTargetRegressor
from sklearn.dummy import DummyRegressor
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.kernel_ridge import KernelRidge
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import accuracy_score, mean_squared_error, r2_score
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, SVR

from benchmarks.dates_baseline import RuleBasedDates, text_splits
from benchmarks.markdown import table
from training.data.datasets import Dataset, load_dataset, prepare_model
from training.fit import cross_validation
from training.fit.loop import PRIMARY_METRIC, evaluate, fit
from training.nn import build_model
from training.search.conclude import DATA_SEED, refit
from training.search.objective import Objective
from training.search.options import TuneOptions
from training.search.space import default_epochs, suggest
from training.search.study import study_pruner, study_sampler


@dataclass(frozen=True)
class Task:
    model: str
    dataset: str
    metric: str  # our metric key, and the peers' score below
    label: str
    score: Callable  # sklearn-style score(y_true, y_pred)
    maximize: bool
    peers: dict[str, tuple[Callable, dict]]  # name -> (estimator factory, grid searched by CV and on validation)
    budget: tuple[int, int | None]  # our (trials, epochs); None: the data set's default epochs
    quick_budget: tuple[int, int | None]
    quick_data: dict = field(default_factory=dict)  # load_dataset options that shrink the quick run
    splits: Callable = None  # dataset, **options -> [(x, y)] * 3 for the peers; None: standardized arrays
    ablations: dict[str, Callable] = field(default_factory=dict)  # name -> f(options, best params, data, epochs)


def centred_kernel_ridge(**params) -> TransformedTargetRegressor:
    """KernelRidge has no intercept: standardize the target around it."""
    return TransformedTargetRegressor(KernelRidge(kernel="rbf", **params), transformer=StandardScaler())


def logistic_regression(**params) -> LogisticRegression:
    """Enough iterations to converge on the standardized pixels."""
    return LogisticRegression(max_iter=5000, **params)


def seeded(make: Callable) -> Callable:
    """A randomized peer with a fixed seed, so its score does not change between runs."""
    return lambda **params: make(random_state=0, **params)


def without_attention(options: TuneOptions, params: dict, data: Dataset, epochs: int) -> dict[str, float]:
    """The tuned seq2seq configuration and training with the decoder's context fixed to the encoder's final state."""
    setup = suggest(
        options.model, optuna.trial.FixedTrial(params), data, epochs=epochs, seed=options.seed, device="auto"
    )
    setup.model_config.attention = False
    torch.manual_seed(options.seed)
    model = prepare_model(build_model(setup.model_kind, setup.model_config), data)
    fit(model, data, setup.fit_config)
    return evaluate(model.cpu(), data.test, data.task)


# Both digits rows (the sequence and the image view of one split) face the same peers.
DIGITS_PEERS = {
    "SVC (rbf)": (SVC, {"C": np.geomspace(0.1, 100, 7), "gamma": ["scale", 1e-3, 1e-2]}),
    "KNeighborsClassifier": (KNeighborsClassifier, {"n_neighbors": range(1, 16)}),
    "LogisticRegression": (logistic_regression, {"C": np.geomspace(1e-3, 100, 11)}),
}

TASKS = {
    "nw-diabetes": Task(
        model="nw",
        dataset="diabetes",
        metric="r2",
        label="test R² (higher is better)",
        score=r2_score,
        maximize=True,
        peers={
            "Ridge": (Ridge, {"alpha": np.geomspace(1e-3, 1e3, 13)}),
            "KernelRidge (rbf)": (
                centred_kernel_ridge,
                {"alpha": np.geomspace(1e-3, 10, 9), "gamma": np.geomspace(1e-4, 1, 9)},
            ),
            "SVR (rbf)": (
                SVR,
                {"C": np.geomspace(1, 1000, 7), "epsilon": [1, 5, 10, 20], "gamma": ["scale", 1e-3, 1e-2, 0.1]},
            ),
            "KNeighborsRegressor": (
                KNeighborsRegressor,
                {"n_neighbors": range(1, 51), "weights": ["uniform", "distance"]},
            ),
            "GradientBoostingRegressor": (
                seeded(GradientBoostingRegressor),
                {"n_estimators": [50, 100, 200], "max_depth": [1, 2, 3], "learning_rate": [0.03, 0.1]},
            ),
        },
        budget=(40, None),
        quick_budget=(2, 5),  # cross-validated: 5 fits a trial
    ),
    "mha-digits": Task(
        model="mha",
        dataset="digits",
        metric="accuracy",
        label="test accuracy (higher is better)",
        score=accuracy_score,
        maximize=True,
        peers=DIGITS_PEERS,
        budget=(8, 15),
        quick_budget=(1, 2),
    ),
    "pixel-digits": Task(
        model="pixel",
        dataset="digits",
        metric="accuracy",
        label="test accuracy (higher is better)",
        score=accuracy_score,
        maximize=True,
        peers=DIGITS_PEERS,
        budget=(8, 40),
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
        quick_data=dict(n_train=300, n_val=100, n_test=100),
    ),
    "s2s-dates": Task(
        model="s2s",
        dataset="dates",
        metric="exact_match",
        label="test exact match (higher is better)",
        score=accuracy_score,  # on strings: the fraction of exactly right dates
        maximize=True,
        peers={"rule-based parser (hand-written for these formats)": (RuleBasedDates, {})},
        budget=(5, 4),
        quick_budget=(1, 1),
        quick_data=dict(n_train=300, n_val=100, n_test=100),
        splits=text_splits,
        ablations={"seq2seq without attention (tuned configuration)": without_attention},
    ),
}


def ours(task: Task, trials: int, epochs: int | None, data: Dataset, seed: int = 0) -> tuple[dict, float, dict]:
    """A small in-memory study (no tracking), the best trial refit and tested once; then the task's ablations
    of the best configuration (each a peer)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    options = TuneOptions(
        model=task.model, dataset=task.dataset, trials=trials, epochs=epochs, seed=seed, progress=False
    )
    metric, direction = PRIMARY_METRIC[data.task]
    start = time.perf_counter()
    study = optuna.create_study(direction=direction, sampler=study_sampler(seed), pruner=study_pruner())
    study.optimize(Objective(options, data), n_trials=trials)
    epochs = epochs or default_epochs(task.model, task.dataset)
    refit_epochs = study.best_trial.user_attrs.get("refit_epochs")  # cross-validated: refit on train+validation
    model_, _ = refit(task.model, study.best_params, data, epochs, seed, options.device, refit_epochs)
    metrics, seconds = evaluate(model_, data.test, data.task), time.perf_counter() - start
    ablated = {
        name: run_ablation(options, study.best_params, data, epochs)[metric]
        for name, run_ablation in task.ablations.items()
    }
    return metrics, seconds, ablated


def arrays(dataset: str, **options):
    data = load_dataset(dataset, seed=DATA_SEED, **options)
    flat = [(s.x.reshape(len(s), -1).numpy(), s.y.numpy()) for s in (data.train, data.val, data.test)]
    scaler = StandardScaler().fit(flat[0][0])  # fitted on train only
    return [(scaler.transform(x), y) for x, y in flat]


def candidates(grid: dict) -> list[dict]:
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def select_on_validation(make, grid: dict, splits, score, maximize: bool) -> tuple[float, dict]:
    """The validation-selected variant: select on the validation split, refit on train, score once on test."""
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = splits
    sign = 1 if maximize else -1
    values = [sign * score(y_val, make(**p).fit(x_train, y_train).predict(x_val)) for p in candidates(grid)]
    best_params = candidates(grid)[int(np.argmax(values))]
    return score(y_test, make(**best_params).fit(x_train, y_train).predict(x_test)), best_params


def select_by_cv(make, grid: dict, splits, score, maximize: bool, k: int = 5, seed: int = 0) -> tuple[float, dict]:
    """The issue's protocol: select by k-fold CV on train+validation (seeded folds, stratified for classes),
    refit on train+validation, score once on test."""
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = splits
    x, y = pooled(x_train, x_val), pooled(y_train, y_val)
    options = candidates(grid)
    if len(options) > 1:
        stratified = not isinstance(y[0], str) and np.asarray(y).dtype.kind in "iu"
        folds = (StratifiedKFold if stratified else KFold)(k, shuffle=True, random_state=seed)
        sign = 1 if maximize else -1
        values = [
            np.mean(
                [
                    sign * score(subset(y, v), make(**p).fit(subset(x, t), subset(y, t)).predict(subset(x, v)))
                    for t, v in folds.split(x, y)
                ]
            )
            for p in options
        ]
        options = [options[int(np.argmax(values))]]
    return score(y_test, make(**options[0]).fit(x, y).predict(x_test)), options[0]


def thin(grid: dict) -> dict:
    """A quick run's grid (a smoke run of both selections): the first and last value of the first parameter, the
    first of every other."""
    return {k: [v[0], v[-1]] if i == 0 and len(v) > 1 else list(v)[:1] for i, (k, v) in enumerate(grid.items())}


def pooled(a, b):
    return a + b if isinstance(a, list) else np.concatenate([a, b])


def subset(a, index: np.ndarray):
    return [a[i] for i in index] if isinstance(a, list) else a[index]


def run(quick: bool = False, tasks: list[str] | None = None) -> list[dict]:
    rows = []
    for name, task in TASKS.items():
        if tasks is not None and name not in tasks:
            continue
        trials, epochs = task.quick_budget if quick else task.budget
        data_options = task.quick_data if quick else {}
        data = load_dataset(task.dataset, seed=DATA_SEED, **data_options)
        metrics, seconds, ablated = ours(task, trials, epochs, data)
        splits = (task.splits or arrays)(task.dataset, **data_options)
        searched, on_validation, peer_seconds = {}, {}, {}
        for peer, (make, grid) in task.peers.items():
            grid = thin(grid) if quick else grid
            start = time.perf_counter()
            searched[peer] = select_by_cv(make, grid, splits, task.score, task.maximize)
            if len(candidates(grid)) > 1:  # nothing to select otherwise: the same model either way
                on_validation[peer] = select_on_validation(make, grid, splits, task.score, task.maximize)[0]
            peer_seconds[peer] = round(time.perf_counter() - start, 1)
        searched |= {ablation: (value, {}) for ablation, value in ablated.items()}
        budget = f"{trials} trials" + (f" x {epochs} epochs" if epochs else "") + f", {seconds:.0f} s"
        rows.append(
            {
                "task": name,
                "metric": task.label,
                "ours": metrics[task.metric],
                "protocol": cross_validation.protocol(
                    data
                ),  # ours: "cv5" (cross-validated, refit on train+val) or "holdout"
                "peers": {peer: value for peer, (value, _) in searched.items()},
                "peers_validation_selected": on_validation,
                "peer_seconds": peer_seconds,  # both selections of each peer
                "ours_budget": budget,
                "peer_params": {peer: params for peer, (_, params) in searched.items()},
            }
        )
    return rows


def section(rows: list[dict]) -> str:
    out = [
        "## 5. Model quality against peers (same splits)",
        "",
        "Peers: grid-searched by 5-fold cross-validation on train+validation, refit on train+validation, scored "
        "once on test; in brackets the validation-selected variant (selected on the validation split, refit on "
        "train). Ours: tuned by its own protocol (`cv5`: trials scored by 5-fold cross-validation on "
        "train+validation, the best refit on train+validation; `holdout`: the validation split), tested once.",
        "",
    ]
    table_rows = []
    for r in rows:
        best_peer = max(r["peers"].values()) if "higher" in r["metric"] else min(r["peers"].values())
        on_validation = r.get("peers_validation_selected", {})
        peers = [
            f"{k} {v:.3f}" + (f" ({on_validation[k]:.3f})" if k in on_validation else "") for k, v in r["peers"].items()
        ]
        table_rows.append(
            [
                r["task"],
                r["metric"],
                r["ours"],
                r.get("protocol", "holdout"),
                ", ".join(peers),
                r["ours"] / best_peer,
                r["ours_budget"],
            ]
        )
    out.append(table(["task", "metric", "ours", "our protocol", "peers", "ours / best peer", "our budget"], table_rows))
    return "\n".join(out)
