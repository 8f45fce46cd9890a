"""Row 4: tuning efficiency on nw-sine, with and without pruning.

Anchor: the best single bandwidth's test MSE, found by a dense grid. For each study we record the
first trial (and seconds) at which the best trial so far — chosen on validation, as the tuner does —
has a test MSE within 10% of the anchor, and the epochs trained in all.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import optuna

from benchmarks.markdown import table
from training.data.datasets import load_dataset, prepare_model
from training.fit.loop import evaluate
from training.nn import NWConfig, build_model
from training.search.conclude import refit
from training.search.objective import Objective
from training.search.options import TuneOptions
from training.search.space import DEFAULT_EPOCHS
from training.search.study import study_pruner, study_sampler

TARGET = 1.10  # within 10% of the anchor


def grid_anchor(data) -> tuple[float, float]:
    """Best test MSE of a fixed bandwidth over a dense log grid; (bandwidth, mse)."""
    best = (float("nan"), float("inf"))
    for w in np.geomspace(0.05, 20, 400):
        model = prepare_model(build_model("nw", NWConfig(learn_bandwidth=False, bandwidth=float(w))), data)
        mse = evaluate(model, data.test, data.task)["mse"]
        best = min(best, (float(w), mse), key=lambda pair: pair[1])
    return best


def test_mse_of(params: dict, data, options: TuneOptions) -> float:
    model, _ = refit(options.model, params, data, DEFAULT_EPOCHS["sine"], options.seed, options.device)
    return evaluate(model, data.test, data.task)["mse"]


def one_study(data, anchor_mse: float, pruning: bool, seed: int, trials: int) -> dict:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    options = TuneOptions(model="nw", dataset="sine", seed=seed, progress=False)
    pruner = study_pruner() if pruning else optuna.pruners.NopPruner()
    study = optuna.create_study(direction="minimize", sampler=study_sampler(seed), pruner=pruner)
    reached = {"trials": None, "seconds": None}
    start, cache = time.perf_counter(), {}

    def check(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if reached["trials"] is not None or not any(t.state.name == "COMPLETE" for t in study.trials):
            return
        best = study.best_trial
        if best.number not in cache:
            pause = time.perf_counter()
            cache[best.number] = test_mse_of(best.params, data, options)  # evaluation only: not charged to tuning
            nonlocal start
            start += time.perf_counter() - pause
        if cache[best.number] <= TARGET * anchor_mse:
            reached.update(trials=trial.number + 1, seconds=time.perf_counter() - start)

    study.optimize(Objective(options, data), n_trials=trials, callbacks=[check])
    epochs = sum(len(t.intermediate_values) for t in study.trials)
    return {
        **reached,
        "epochs": epochs,
        "pruned": sum(t.state.name == "PRUNED" for t in study.trials),
        "total_seconds": time.perf_counter() - start,
    }


def run(quick: bool = False) -> list[dict]:
    data = load_dataset("sine")
    bandwidth, anchor = grid_anchor(data)
    seeds, trials = ([0], 5) if quick else ([0, 1, 2, 3, 4], 40)
    rows = []
    for pruning in (True, False):
        runs = [one_study(data, anchor, pruning, seed, trials) for seed in seeds]
        hit = [r for r in runs if r["trials"] is not None]
        rows.append(
            {
                "pruning": pruning,
                "studies": len(runs),
                "trials_per_study": trials,
                "anchor_bandwidth": bandwidth,
                "anchor_test_mse": anchor,
                "reached": f"{len(hit)}/{len(runs)}",
                "median_trials_to_target": statistics.median(r["trials"] for r in hit) if hit else None,
                "median_seconds_to_target": statistics.median(r["seconds"] for r in hit) if hit else None,
                "mean_epochs_trained": statistics.mean(r["epochs"] for r in runs),
                "mean_pruned": statistics.mean(r["pruned"] for r in runs),
                "mean_study_seconds": statistics.mean(r["total_seconds"] for r in runs),
            }
        )
    return rows


def section(rows: list[dict]) -> str:
    anchor = rows[0]
    out = [
        "## 4. Tuning efficiency on `nw-sine`",
        "",
        f"Anchor: best single bandwidth on a dense grid, w = {anchor['anchor_bandwidth']:.2f}, test MSE "
        f"{anchor['anchor_test_mse']:.4f}. Target: the tuner's best trial (chosen on validation) within 10% of it "
        "on test. Seeded studies of the project's search space, with the median pruner and without.",
        "",
    ]
    out.append(
        table(
            [
                "pruning",
                "studies reaching target",
                "median trials",
                "median seconds",
                "epochs trained (mean)",
                "pruned trials (mean)",
                "study seconds (mean)",
            ],
            [
                [
                    "on" if r["pruning"] else "off",
                    r["reached"],
                    r["median_trials_to_target"],
                    r["median_seconds_to_target"],
                    r["mean_epochs_trained"],
                    r["mean_pruned"],
                    r["mean_study_seconds"],
                ]
                for r in rows
            ],
        )
    )
    return "\n".join(out)
