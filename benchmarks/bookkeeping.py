"""Row 9: bookkeeping — trials per minute of a tracked search (what `make tune` does: every trial an MLflow child
run in a SQLite store, the study in a SQLite Optuna storage) against the same `Objective` untracked (no trial
log, an in-memory study), with the same seeded sampler and pruner, so that both try the same trials.

Rates are taken over the search itself (first trial's start to last trial's end, from Optuna's own times): the
invocation's fixed costs (creating the stores, the parent run) are reported apart. Two data: nw-sine, whose trials
train in a fraction of a second (the case bookkeeping used to dominate), and a 10,000-row file made with
scikit-learn's make_friedman1.
"""

from __future__ import annotations

import contextlib
import io
import statistics
import tempfile
import time
from pathlib import Path

import optuna

from benchmarks.large_nw import write_file
from benchmarks.markdown import table, verdict
from training.data import tables
from training.data.datasets import load_dataset
from training.search.conclude import DATA_SEED
from training.search.objective import Objective
from training.search.options import TuneOptions
from training.search.space import nw_first_trial
from training.search.study import study_pruner, study_sampler, tune

TARGET_RATIO = 0.5  # tracked at least half as many trials per minute as untracked, on nw-sine
FILE_ROWS = 10_000  # a make_friedman1 file, as row 9 writes them
QUICK_FILE_ROWS = 2_000  # a smoke run


def search_rate(trials: list[optuna.trial.FrozenTrial]) -> tuple[float, float]:
    """(trials per minute, seconds) from the first trial's start to the last one's end."""
    done = [t for t in trials if t.datetime_complete is not None]
    seconds = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    return 60 * len(done) / seconds, seconds


def untracked(options: TuneOptions, data) -> dict:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=study_sampler(options.seed), pruner=study_pruner())
    first = nw_first_trial(len(data.train), data.in_features, not data.n_classes)
    if first:  # as `tune` starts a new study on a large file
        study.enqueue_trial(first)
    study.optimize(Objective(options, data), n_trials=options.trials)
    rate, seconds = search_rate(study.trials)
    return {"rate": rate, "seconds": seconds}


def tracked(options: TuneOptions) -> dict:
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # as `make tune` runs (its own line per trial)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # its per-trial lines
        tune(options)
    invocation = time.perf_counter() - start
    study = optuna.load_study(study_name=options.name, storage=options.storage)
    rate, seconds = search_rate(study.trials)
    return {"rate": rate, "seconds": seconds, "invocation_seconds": invocation}


def one_case(label: str, options: TuneOptions, data, root: Path, rounds: int) -> dict:
    """`rounds` alternations of untracked and tracked (fresh stores each), so that a drift in the machine's speed
    hits both, after two trials of each to warm the process up; the ratio is the median of the rounds' ratios."""
    plain, logged = [], []
    root.mkdir(parents=True, exist_ok=True)
    # a process's first trials pay one-time costs (torch's lazy imports; the MLflow writer's start and its first
    # look at a store's schema, which `make tune` overlaps with its own imports and set-up): paid here, first
    first = {"trials": 2, "storage": f"sqlite:///{root / 'warm.db'}", "tracking_uri": f"sqlite:///{root / 'warm-m.db'}"}
    untracked(TuneOptions(**{**vars(options), "trials": 2}), data)
    tracked(TuneOptions(**{**vars(options), **first, "conclude": False}))
    for round_ in range(rounds):
        stores = {
            "storage": f"sqlite:///{root / f'optuna-{round_}.db'}",
            "tracking_uri": f"sqlite:///{root / f'mlflow-{round_}.db'}",
        }
        plain.append(untracked(options, data))
        logged.append(tracked(TuneOptions(**{**vars(options), **stores, "conclude": False})))
    ratios = [t["rate"] / u["rate"] for u, t in zip(plain, logged, strict=True)]
    middle = ratios.index(statistics.median_low(ratios))
    return {
        "case": label,
        "trials": options.trials,
        "epochs": options.epochs,
        "rounds": rounds,
        "ratios": ratios,
        "untracked_per_min": plain[middle]["rate"],
        "tracked_per_min": logged[middle]["rate"],
        "ratio": ratios[middle],
        "untracked_seconds": plain[middle]["seconds"],
        "tracked_seconds": logged[middle]["seconds"],
        "tracked_invocation_seconds": logged[middle]["invocation_seconds"],
    }


def run(quick: bool = False) -> list[dict]:
    sine_trials, file_trials, file_epochs, rounds = (4, 2, 2, 1) if quick else (40, 6, 5, 3)
    file_rows = QUICK_FILE_ROWS if quick else FILE_ROWS
    with tempfile.TemporaryDirectory(prefix="bench-bookkeeping-") as folder:
        root = Path(folder)
        common = dict(model="nw", seed=0, device="cpu", progress=False)
        sine = TuneOptions(dataset="sine", trials=sine_trials, **common)
        rows = [one_case("nw-sine", sine, load_dataset("sine", seed=DATA_SEED), root / "sine", rounds)]
        path = write_file(file_rows, root)
        friedman = TuneOptions(data=str(path), target="y", trials=file_trials, epochs=file_epochs, **common)
        data = tables.load_file_dataset(friedman.table(), seed=DATA_SEED)
        rows.append(one_case(f"nw-friedman1 ({file_rows:,} rows)", friedman, data, root / "file", rounds))
    return rows


def section(rows: list[dict]) -> str:
    out = [
        "## 12. Bookkeeping: trials per minute tracked against untracked",
        "",
        "The same `Objective`, seeded sampler and pruner, so both try the same trials: tracked as `make tune` runs "
        "them (an MLflow child run per trial in a SQLite store, the study in a SQLite Optuna storage, per-epoch "
        "metrics buffered and written in one batch), untracked with no trial log and an in-memory study. Rates over "
        "the search (first trial's start to last trial's end), untracked and tracked alternating with fresh stores "
        "each round; the ratio is the median round's (every round's in the last column). The invocation's fixed "
        "costs (stores, parent run) are apart.",
        "",
        table(
            ["case", "trials", "untracked / min", "tracked / min", "ratio", "tracked invocation s", "rounds' ratios"],
            [
                [
                    r["case"],
                    r["trials"],
                    r["untracked_per_min"],
                    r["tracked_per_min"],
                    r["ratio"],
                    r["tracked_invocation_seconds"],
                    ", ".join(f"{x:.2f}" for x in r.get("ratios", [r["ratio"]])),
                ]
                for r in rows
            ],
        ),
    ]
    sine = next((r for r in rows if r["case"] == "nw-sine"), None)
    if sine:
        out += [
            "",
            f"Target: tracked ≥ {TARGET_RATIO}× untracked on nw-sine — {sine['ratio']:.2f}× "
            f"{verdict(sine['ratio'] >= TARGET_RATIO)}.",
        ]
    return "\n".join(out)
