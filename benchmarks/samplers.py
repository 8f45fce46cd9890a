"""Row 10: which sampler finds the better NW model, at 10, 20 and 30 trials.

Two NW tasks: `nw-diabetes` (cross-validated, as `make tune` scores it) and a 10,000-row `make_friedman1` file
(8 features; 5 epochs a trial to keep the row within its budget), each study started as `tune` starts a new
one (on the file, with the first trial it enqueues: M 1,024 prototypes). Samplers: TPE with independent parameters
(the default before this row), TPE multivariate with `group=True` (conditional parameters sampled jointly within
each group), and Optuna's GP sampler; each with 5 seeds. `default_name` says which of them
`training/search/study.py` `study_sampler` is. Reported: the median and standard error over seeds of the best
validation value after 10, 20 and 30 trials. The default should be the best, or within one standard error of
the best, on both tasks.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import optuna

from benchmarks.large_nw import write_file
from benchmarks.markdown import table, verdict
from training.data.datasets import load_dataset
from training.data.tables import TableSpec, load_file_dataset
from training.search.objective import Objective
from training.search.options import TuneOptions
from training.search.space import nw_first_trial
from training.search.study import study_pruner, study_sampler

CHECKPOINTS = (10, 20, 30)
SEEDS = (0, 1, 2, 3, 4)
SAMPLERS: dict[str, Callable[[int], optuna.samplers.BaseSampler]] = {
    "TPE": lambda seed: optuna.samplers.TPESampler(seed=seed, n_startup_trials=5, constant_liar=True),
    "TPE multivariate, group": lambda seed: optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=5, multivariate=True, group=True, constant_liar=True
    ),
    "GP": lambda seed: optuna.samplers.GPSampler(seed=seed, n_startup_trials=5),
}
SETTINGS = ("_n_startup_trials", "_multivariate", "_group", "_constant_liar")  # what tells the candidates apart


def default_name() -> str:
    """Which candidate the project's default (`training/search/study.py` `study_sampler`) is."""
    default = study_sampler(0)
    for name, make in SAMPLERS.items():
        candidate = make(0)
        if type(candidate) is type(default) and all(
            getattr(candidate, key, None) == getattr(default, key, None) for key in SETTINGS
        ):
            return name
    raise ValueError("study_sampler is none of the compared samplers: add it to benchmarks/samplers.py SAMPLERS")


def best_after(study: optuna.Study, checkpoints: tuple[int, ...]) -> list[float]:
    """The best value among the first n trials, for each n."""
    values, best, out = [t.value for t in study.trials], float("inf"), []
    for n in range(1, len(values) + 1):
        if values[n - 1] is not None:
            best = min(best, values[n - 1])
        if n in checkpoints:
            out.append(best)
    return out


def one_study(options: TuneOptions, data, sampler, checkpoints: tuple[int, ...]) -> list[float]:
    """A new study as `tune` starts one: on a large file, with the first trial it enqueues."""
    study = optuna.create_study(direction="minimize", sampler=sampler, pruner=study_pruner())
    first = nw_first_trial(len(data.train), data.in_features, not data.n_classes)
    if first:
        study.enqueue_trial(first)
    study.optimize(Objective(options, data), n_trials=checkpoints[-1])
    return best_after(study, checkpoints)


def tasks(folder: Path, quick: bool) -> dict[str, tuple[TuneOptions, object]]:
    diabetes = TuneOptions(model="nw", dataset="diabetes", progress=False, epochs=2 if quick else None)
    path = write_file(1_000 if quick else 10_000, folder)
    file_options = TuneOptions(model="nw", data=str(path), target="y", progress=False, epochs=1 if quick else 5)
    return {
        "nw-diabetes": (diabetes, load_dataset("diabetes")),
        "nw-friedman1-10k": (file_options, load_file_dataset(TableSpec(path=str(path), target="y"), seed=0)),
    }


def run(quick: bool = False) -> list[dict]:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    seeds, checkpoints = ((0,), (5,)) if quick else (SEEDS, CHECKPOINTS)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for task, (options, data) in tasks(Path(tmp), quick).items():
            for name, make in SAMPLERS.items():
                start = time.perf_counter()
                curves = [one_study(options, data, make(seed), checkpoints) for seed in seeds]
                for i, checkpoint in enumerate(checkpoints):
                    values = [curve[i] for curve in curves]
                    error = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0
                    rows.append(
                        {
                            "task": task,
                            "sampler": name,
                            "trials": checkpoint,
                            "median": statistics.median(values),
                            "standard_error": error,
                            "values": values,
                            "seconds": round(time.perf_counter() - start, 1),
                        }
                    )
    return rows


def default_holds(rows: list[dict], task: str, trials: int = CHECKPOINTS[-1]) -> bool:
    """Whether the default's median is the best, or within one standard error of the best, at `trials`."""
    cells = {r["sampler"]: r for r in rows if r["task"] == task and r["trials"] == trials}
    default = cells.get(default_name())
    if default is None:
        return False
    best = min(cells.values(), key=lambda r: r["median"])
    return default["median"] <= best["median"] + max(best["standard_error"], default["standard_error"])


def section(rows: list[dict]) -> str:
    out = [
        "## 10. Samplers: the best validation value after 10, 20 and 30 trials",
        "",
        "Median over seeds (± one standard error) of the best validation MSE so far; lower is better. The "
        f"project's default (`training/search/study.py` `study_sampler`) is **{default_name()}**; every candidate "
        "keeps parallel workers apart except GP (Optuna's GPSampler has no constant liar).",
        "",
        table(
            ["task", "sampler", "trials", "median best val MSE", "± s.e.", "seeds' values", "study s"],
            [
                [
                    r["task"],
                    r["sampler"],
                    r["trials"],
                    r["median"],
                    r["standard_error"],
                    " ".join(f"{v:.4g}" for v in r["values"]),
                    r["seconds"],
                ]
                for r in rows
            ],
        ),
        "",
    ]
    for task in dict.fromkeys(r["task"] for r in rows):
        out.append(
            f"`{task}`: the default is the best or within one standard error of it {verdict(default_holds(rows, task))}"
        )
    return "\n".join(out)
